"""The proxy-Dice sweep of post-training magnitude pruning: the tau axis of the sweep engine.

The engine (:mod:`nnunet_prune.tools.sweep.engine`) preprocesses the images once, predicts them with the unpruned
ensemble of the chosen folds (the reference, cached on disk) and keeps a resumable state. Along the tau axis
(:class:`TauAxis`):

1. for each tau every fold is pruned (:func:`nnunet_prune.tools.export.transforms.magnitude_prune`), the pruned
   ensemble predicts the same images and the proxy Dice against the reference is computed per case and class and
   averaged like nnU-Net's ``foreground_mean`` (plus the real Dice when labels are given);
2. after the grid (the default one extended while the proxy Dice has not fallen yet), tau is refined around the
   critical point (:mod:`nnunet_prune.methods.magnitude`).

Every finished tau is written to ``sweep_state.json`` at once: an interrupted sweep run again with the same
settings reuses finished tau values and the cached reference predictions. The cost approaches
(number of tau + 1) x one ensemble inference.
"""

from __future__ import annotations

import json
import math
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from nnunet_prune.core.outputs import record_files
from nnunet_prune.methods.magnitude import (
    NORMALISED_GRID,
    PAPER_GRID,
    SweepPoint,
    critical_point,
    extension_tau,
    first_failure,
    refinement_taus,
    taus_for_sparsities,
)
from nnunet_prune.nnunet.modelfolder import label_names
from nnunet_prune.tools.dice import class_counts
from nnunet_prune.tools.export.transforms import magnitude_prune
from nnunet_prune.tools.sweep.engine import (  # noqa: F401 (re-exported: the inputs' checks, the proxy Dice)
    STATE_FILE,
    TOOL,
    Axis,
    ProxySummary,
    SweepEngine,
    SweepSettings,
    check_labels,
    list_cases,
)

#: at most this many tau values beyond the default grid (x1.5 each: 0.02 -> ~2.6)
MAX_EXTENSION = 12


@dataclass
class TauSettings:
    """The tau axis's options (what ``nnunet-prune sweep`` passes on for magnitude pruning).

    ``taus`` or ``target_sparsities`` (fractions in [0, 1); tau = quantile of |w|) replace the default grid (the
    paper's, or the normalised grid with ``per_layer_normalised``); ``refine_steps`` extra tau values between the last
    good and the first bad tau (0: off); ``prune_bias``: small biases zeroed too; ``per_layer_normalised``: the
    threshold is tau x RMS(weights) per tensor.
    """

    taus: list[float] | None = None
    target_sparsities: list[float] | None = None
    refine_steps: int = 4
    prune_bias: bool = False
    per_layer_normalised: bool = False

    def fingerprint(self) -> dict:
        """The settings that change the numbers (not the grid: more tau values can always be added)."""
        return {"prune_bias": self.prune_bias, "per_layer_normalised": self.per_layer_normalised}


@dataclass
class TauResult:
    """The result of one tau: sparsities (fractions, mean over folds), proxy Dice against the unpruned ensemble (and
    real Dice against labels, if given), zero counts per stage, and ``seconds`` (s) to prune and predict."""

    tau: float
    sparsity_of_nonzero: float  # mean over folds
    sparsity_of_all_parameters: float  # mean over folds
    proxy_dice: float  # the chosen summary (SweepSettings.proxy_summary)
    proxy_dice_per_class: dict  # per class, pooled over cases
    proxy_dice_per_case: dict
    real_dice: float | None = None
    real_dice_per_class: dict | None = None
    stages: dict = field(default_factory=dict)  # stage -> {weights, zero_before, zero_after} summed over folds
    per_fold_sparsity: list = field(default_factory=list)
    seconds: float = 0.0
    proxy_dice_pooled: float | None = None  # mean of pooled per-class Dice over the classes large enough to judge
    proxy_dice_paper_mean: float | None = None  # the paper's foreground mean of per-case Dice
    proxy_dice_paper_per_class: dict | None = None
    reference_voxels: dict | None = None  # per class, summed over cases (the unpruned ensemble's prediction)
    small_classes: list | None = None  # classes too small to judge (left out of the pooled summary)


def _summed_stages(stats: list) -> dict:
    """Stage -> {weights, zero_before, zero_after} summed over the folds' sparsity statistics, in network order."""
    stages = OrderedDict((s, {"weights": 0, "zero_before": 0, "zero_after": 0})
                         for s in (stats[0].stages if stats else ()))  # every stage, in network order
    for s in stats:
        for name, st in s.stages.items():
            row = stages.setdefault(name, {"weights": 0, "zero_before": 0, "zero_after": 0})
            row["weights"] += st.weights
            row["zero_before"] += st.zero_before
            row["zero_after"] += st.zero_after
    return dict(stages)


class TauAxis(Axis):
    """Magnitude pruning at a magnitude threshold tau (module docstring): every weight |w| <= tau zeroed in every
    fold, the ensemble's proxy Dice measured, the critical point found and refined."""

    noun = "tau values"
    unit = "tau"

    def __init__(self, settings: TauSettings | None = None):
        self.settings = settings or TauSettings()

    def fingerprint(self) -> dict:
        """:meth:`TauSettings.fingerprint`."""
        return self.settings.fingerprint()

    def recorded(self) -> dict:
        """The tau settings and the criterion, ``magnitude``."""
        return {**asdict(self.settings), "criterion": "magnitude"}

    def grid(self, engine: SweepEngine) -> list[float]:
        """The tau values evaluated first: ``taus`` (sorted, unique), 0 plus the tau of each target sparsity
        (quantiles of |w| over the prunable conv weights of all folds), or the default grid (the paper's, or the
        per-layer normalised one)."""
        s = self.settings
        if s.target_sparsities:
            from nnunet_prune.surgery.masks import prunable_convs

            weights = []
            for dense in engine.dense_states:
                engine.network.load_state_dict(dense)
                weights += [m.weight.detach().clone() for _, m in prunable_convs(engine.network)]
            return [0.0] + taus_for_sparsities(weights, s.target_sparsities)
        if s.taus:
            return sorted(set(float(t) for t in s.taus))
        return list(NORMALISED_GRID if s.per_layer_normalised else PAPER_GRID)

    def run(self, engine: SweepEngine, reference: dict, real: dict | None, progress: bool) -> None:
        """The grid; the default grid extended while the proxy Dice has not fallen below the threshold (at most
        :data:`MAX_EXTENSION` values); then ``refine_steps`` values between the last good and the first bad tau."""
        threshold = engine.settings.threshold
        grid = self.grid(engine)
        engine.note_reused(grid, progress)
        engine.evaluate_all(grid, reference, real, progress, "tau grid")
        if not (self.settings.taus or self.settings.target_sparsities):
            for _ in range(MAX_EXTENSION):  # the default grid ends before the proxy Dice falls: go on
                tau = extension_tau(self.points(engine), threshold)
                if tau is None:
                    break
                engine.evaluate_all([tau], reference, real, progress, "extending")
        if self.settings.refine_steps > 0:
            engine.evaluate_all(refinement_taus(self.points(engine), threshold, self.settings.refine_steps),
                                reference, real, progress, "refining")

    def evaluate(self, engine: SweepEngine, tau: float, reference: dict, real: dict | None) -> TauResult:
        """Prune every fold at ``tau``, predict all images with the pruned ensemble and compare with ``reference``
        (proxy Dice) and ``real`` (label maps for the real Dice; None to skip)."""
        start = time.perf_counter()
        params, stats = [], []
        for dense in engine.dense_states:
            engine.network.load_state_dict(dense)
            stats.append(magnitude_prune(engine.network, tau, self.settings.prune_bias,
                                         self.settings.per_layer_normalised))
            params.append(engine.network_parameters())
        pred = engine.predict(params)
        proxy = ProxySummary.of(class_counts(reference, pred, engine.label_list, engine.ignore_label))
        result = TauResult(tau=tau,
                           sparsity_of_nonzero=float(np.mean([s.sparsity_of_nonzero for s in stats])),
                           sparsity_of_all_parameters=float(np.mean([s.sparsity_all_parameters for s in stats])),
                           proxy_dice=proxy.value(engine.settings.proxy_summary), proxy_dice_per_class=proxy.pooled,
                           proxy_dice_per_case={c: float(np.nanmean(list(v.values()))) if any(
                               not math.isnan(x) for x in v.values()) else math.nan
                               for c, v in proxy.per_case.items()},
                           per_fold_sparsity=[s.sparsity_of_nonzero for s in stats],
                           proxy_dice_pooled=proxy.pooled_mean, proxy_dice_paper_mean=proxy.paper_mean,
                           proxy_dice_paper_per_class=proxy.paper_per_class,
                           reference_voxels=proxy.reference_voxels, small_classes=proxy.small_classes)
        if real is not None:
            result.real_dice, result.real_dice_per_class = engine.real_dice(real, pred)
        result.stages = _summed_stages(stats)
        if engine.settings.save_predictions:
            engine.save_predictions(f"tau_{tau:.6f}", pred)
        result.seconds = round(time.perf_counter() - start, 3)
        return result

    def progress_line(self, result: TauResult) -> str:
        """tau, sparsity, proxy (and real) Dice and the time it took."""
        r = result
        return (f"  tau={r.tau:<10.6g} sparsity={r.sparsity_of_nonzero:6.1%}  proxy Dice={r.proxy_dice:.4f}"
                + (f"  real Dice={r.real_dice:.4f}" if r.real_dice is not None else "") + f"  ({r.seconds:.1f} s)")

    def points(self, engine: SweepEngine) -> list[SweepPoint]:
        """Every finished tau as (tau, sparsity, proxy Dice)."""
        return [SweepPoint(r["tau"], r["sparsity_of_nonzero"], r["proxy_dice"])
                for r in engine.state["results"].values()]

    def report(self, engine: SweepEngine) -> dict:
        """The report of every finished tau (what sweep.json holds): model, settings, critical point, first failure,
        timings (s) and the per-tau results sorted by tau."""
        rows = sorted(engine.state["results"].values(), key=lambda r: r["tau"])
        points = self.points(engine)
        threshold = engine.settings.threshold
        crit = critical_point(points, threshold)
        fail = first_failure(points, threshold)
        total_eval_seconds = sum(r["seconds"] for r in rows)
        reference_seconds = engine.state.get("reference_seconds")
        return {
            **engine.report_header(),
            "label_names": label_names(engine.model.dataset_json),
            "settings": engine.recorded_settings(),
            "threshold": threshold,
            "critical_point": asdict(crit) if crit else None,
            "first_failure": asdict(fail) if fail else None,
            "reference_seconds": reference_seconds,
            "tau_evaluations": len(rows),
            "tau_seconds_total": round(total_eval_seconds, 3),
            "cost_in_ensemble_inferences": round((total_eval_seconds + (reference_seconds or 0))
                                                 / engine.state["reference_seconds"], 2)
            if reference_seconds else None,
            "results": rows,
        }

    def write_outputs(self, report: dict, output: Path) -> dict[str, Path]:
        """:func:`write_outputs`."""
        return write_outputs(report, output)


# ------------------------------------------------------------------------------------------------ outputs
def write_outputs(report: dict, output: Path) -> dict[str, Path]:
    """sweep.csv, sweep.json, summary.md and the plots."""
    import pandas as pd

    rows = report["results"]
    table = []
    for r in rows:
        row = {"tau": r["tau"], "sparsity_of_nonzero": r["sparsity_of_nonzero"],
               "sparsity_of_all_parameters": r["sparsity_of_all_parameters"], "proxy_dice": r["proxy_dice"],
               "real_dice": r["real_dice"], "seconds": r["seconds"]}
        row.update({f"proxy_dice_class_{k}": v for k, v in r["proxy_dice_per_class"].items()})
        if r["real_dice_per_class"]:
            row.update({f"real_dice_class_{k}": v for k, v in r["real_dice_per_class"].items()})
        row.update({f"sparsity_{s}": (v["zero_after"] - v["zero_before"]) / (v["weights"] - v["zero_before"])
                    if v["weights"] > v["zero_before"] else 0.0 for s, v in r["stages"].items()})
        table.append(row)
    paths = {"csv": output / "sweep.csv", "json": output / "sweep.json", "markdown": output / "summary.md"}
    pd.DataFrame(table).to_csv(paths["csv"], index=False)
    paths["json"].write_text(json.dumps(report, indent=1, default=str))
    paths["markdown"].write_text(summary_markdown(report))
    try:
        paths.update(plot_sweep(report, output))
    except Exception as e:  # plots are a convenience; the numbers are in the CSV/JSON
        print(f"could not plot the sweep ({type(e).__name__}: {e})")
    record_files(output, TOOL, paths.values())
    return paths


def _stage_sparsities(result: dict) -> dict[str, float]:
    return {s: (v["zero_after"] - v["zero_before"]) / (v["weights"] - v["zero_before"])
            if v["weights"] > v["zero_before"] else 0.0 for s, v in result["stages"].items()}


def _class_table(report: dict) -> list[str]:
    """Per-class proxy Dice at the critical point (or the last tau) with each class's reference volume."""
    crit = report["critical_point"]
    rows = report["results"]
    at = next((r for r in rows if crit and r["tau"] == crit["tau"]), rows[-1] if rows else None)
    if not at or not at.get("reference_voxels"):
        return []
    names = report.get("label_names", {})
    small = set(at.get("small_classes") or [])
    out = ["", f"Per class at tau = {at['tau']:.6g}" + (" (the critical point)" if crit else "") + ":", "",
           "| class | reference voxels | proxy Dice (pooled) | paper: mean of per-case Dice | judged |",
           "|---|---:|---:|---:|---|"]
    paper = at.get("proxy_dice_paper_per_class") or {}
    for lab, value in at["proxy_dice_per_class"].items():
        p = paper.get(lab)
        out.append(f"| {names.get(lab, lab)} | {at['reference_voxels'].get(lab, 0):,} | "
                   f"{'-' if value is None or math.isnan(value) else f'{value:.4f}'} | "
                   f"{'-' if p is None or math.isnan(p) else f'{p:.4f}'} | "
                   f"{'no: too small to judge' if lab in small else 'yes'} |")
    return out


def summary_markdown(report: dict) -> str:
    """The report as summary.md: setup, critical point, timing, proxy Dice per class, a table of every tau, and the
    sparsity per stage at the critical point."""
    crit = report["critical_point"]
    lines = [f"# Magnitude-pruning sweep: {Path(report['model']).name}", "",
             f"- model: `{report['model']}` (trainer {report['trainer']}, configuration {report['configuration']}, "
             f"folds {', '.join(report['folds'])})",
             f"- images: {len(report['cases'])} cases; proxy Dice = Dice of the pruned vs the unpruned ensemble "
             f"(nnU-Net inference{' with' if report['settings']['use_mirroring'] else ' without'} mirroring TTA)",
             f"- threshold {'|w| <= tau x RMS(layer)' if report['settings']['per_layer_normalised'] else '|w| <= tau'}"
             f"{', biases pruned too' if report['settings']['prune_bias'] else ''}; sparsity counts only weights "
             f"that were non-zero before pruning", ""]
    if crit:
        lines.append(f"**Critical point** (largest sparsity with proxy Dice >= {report['threshold']}): "
                     f"tau = {crit['tau']:.6g}, sparsity {crit['sparsity']:.1%}, proxy Dice {crit['proxy_dice']:.4f}.")
    else:
        lines.append(f"No evaluated tau keeps proxy Dice >= {report['threshold']}.")
    fail = report.get("first_failure")
    if crit and fail and fail["tau"] < crit["tau"]:
        lines.append(f"The curve is not monotonic: proxy Dice first falls below the threshold at tau = "
                     f"{fail['tau']:.6g} (sparsity {fail['sparsity']:.1%}, proxy Dice {fail['proxy_dice']:.4f}) and "
                     f"recovers later; the conservative choice is the last tau before that.")
    if report.get("reference_seconds"):
        n = report["tau_evaluations"]
        per_tau = report["tau_seconds_total"] / n / report["reference_seconds"] if n else 0.0
        lines.append(f"\nTiming: one ensemble inference (the reference) took {report['reference_seconds']:.1f} s; "
                     f"the {n} tau values took {report['tau_seconds_total']:.1f} s, i.e. each tau cost "
                     f"{per_tau:.2f} ensemble inferences (pruning every fold included) and the whole sweep "
                     f"{report['cost_in_ensemble_inferences']}. Running nnUNetv2_predict once per tau would cost "
                     f"the same {n + 1} inferences plus its start-up and preprocessing every time; here the images "
                     f"are preprocessed once and kept in memory.")
    summary = report["settings"].get("proxy_summary", "pooled")
    lines.append("\nProxy Dice: " + (
        "per class, Dice of the voxels of all cases together; the summary is the mean over the classes whose "
        "reference volume is large enough to judge (a class with a few voxels flips between 0 and 1 when a few "
        "stray voxels appear or vanish). `--proxy-summary mean` gives the paper's plain foreground mean."
        if summary == "pooled" else "the paper's foreground mean of per-case Dice (`--proxy-summary mean`); "
        "classes with few reference voxels can dominate it."))
    lines += _class_table(report)
    lines += ["", "| tau | sparsity (non-zero weights) | sparsity (all params) | proxy Dice | real Dice |",
              "|---:|---:|---:|---:|---:|"]
    for r in report["results"]:
        real = f"{r['real_dice']:.4f}" if r["real_dice"] is not None else "-"
        lines.append(f"| {r['tau']:.6g} | {r['sparsity_of_nonzero']:.1%} | {r['sparsity_of_all_parameters']:.1%} | "
                     f"{r['proxy_dice']:.4f} | {real} |")
    if crit:
        at = next(r for r in report["results"] if r["tau"] == crit["tau"])
        lines += ["", f"Per-stage sparsity at the critical point (tau = {crit['tau']:.6g}):", "",
                  "| stage | weights | sparsity |", "|---|---:|---:|"]
        for s, v in _stage_sparsities(at).items():
            lines.append(f"| {s} | {at['stages'][s]['weights']:,} | {v:.1%} |")
    return "\n".join(lines) + "\n"


def _plot_titles(report: dict) -> tuple[str, str]:
    """(title, subtitle) of the sweep's plots: the model folder, and its folds, cases and tau values."""
    model = Path(report["model"])
    title = f"{model.parent.name}/{model.name}" if model.parent.name else model.name
    folds = report.get("folds") or []
    subtitle = (f"fold{'s' if len(folds) > 1 else ''} {', '.join(map(str, folds))}; " if folds else "") + \
        f"{len(report.get('cases') or [])} cases, {len(report['results'])} tau values"
    return title, subtitle


def _tau_scale(ax, report: dict) -> None:
    """The x axis of the Dice-vs-tau plot: its label, and a symlog scale where an extended grid would squeeze the
    small tau values together (0 and plain decimals as ticks, never 1e-05)."""
    from nnunet_prune.core.plotting import plain_number, readable_log_axis

    ax.set_xlabel("tau (magnitude threshold"
                  + (", in units of each layer's RMS" if report["settings"].get("per_layer_normalised") else "")
                  + ")")
    positive = [r["tau"] for r in report["results"] if r["tau"] > 0]
    if positive and max(positive) > 20 * min(positive):  # an extended grid: small tau values stay apart
        linear = min(positive) * 2
        ax.set_xscale("symlog", linthresh=linear, linscale=0.5)
        ax.set_xlim(-0.25 * linear, max(positive) * 1.3)
        readable_log_axis(ax, "x", linthresh=linear)
        ax.set_xlabel(ax.get_xlabel() + f"; log scale above {plain_number(linear)}")


def _plot_dice(report: dict, by_sparsity: bool, title: str, subtitle: str, file: Path) -> Path:
    """Proxy (and real) Dice against the sparsity (``by_sparsity``) or tau, with the threshold, the critical point
    and, on a curve that is not monotonic, where it first fell below the threshold."""
    from matplotlib.ticker import PercentFormatter

    from nnunet_prune.core.plotting import new_figure, save

    rows = report["results"]
    x = [r["sparsity_of_nonzero"] * 100 for r in rows] if by_sparsity else [r["tau"] for r in rows]
    real = [r["real_dice"] if r.get("real_dice") is not None else math.nan for r in rows]
    crit, fail = report["critical_point"], report.get("first_failure")
    fig = new_figure(figsize=(8.5, 4.5), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(x, [r["proxy_dice"] for r in rows], "o-", ms=4, label="proxy Dice (pruned vs unpruned ensemble)")
    if any(not math.isnan(v) for v in real):
        ax.plot(x, real, "s--", ms=4, label="real Dice (vs labels)")
    ax.axhline(report["threshold"], color="0.4", ls=":", label=f"threshold {report['threshold']:g}")
    if crit:
        ax.axvline(crit["sparsity"] * 100 if by_sparsity else crit["tau"], color="tab:red", ls=":",
                   label=f"critical point: tau {crit['tau']:.4g},\n{crit['sparsity']:.1%} sparsity, "
                         f"proxy Dice {crit['proxy_dice']:.3f}")
    if crit and fail and fail["tau"] < crit["tau"]:  # not monotonic: where it first fell below
        ax.plot([fail["sparsity"] * 100 if by_sparsity else fail["tau"]], [fail["proxy_dice"]], "x",
                color="tab:red", ms=9, mew=2, label=f"first below threshold: tau {fail['tau']:.4g}")
    if by_sparsity:
        ax.set_xlabel("sparsity of the weights that were non-zero before pruning")
        ax.xaxis.set_major_formatter(PercentFormatter(100))
        ax.set_xlim(-2, 102)
    else:
        _tau_scale(ax, report)
    ax.set_ylabel("Dice (pooled over cases, mean of the judged classes)"
                  if report["settings"].get("proxy_summary", "pooled") == "pooled"
                  else "Dice (foreground mean of per-case Dice)")
    ax.set_ylim(0, 1.02)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0, frameon=False)
    fig.suptitle(f"Magnitude-pruning sweep: {title}")
    ax.set_title(subtitle, fontsize=8, color="0.3")
    save(fig, file)
    return file


def _stage_part(stage: str) -> str:
    """The network part of a stage name: encoder, bottleneck, decoder or heads."""
    return "decoder" if stage.startswith("dec") else stage if stage in ("bottleneck", "heads") else "encoder"


def _plot_stage_sparsity(report: dict, title: str, file: Path) -> Path:
    """Bars of the sparsity per stage at the critical point and at the largest tau, the stages coloured by part
    of the network and the parts separated."""
    from matplotlib.ticker import PercentFormatter

    from nnunet_prune.core.plotting import PART_COLORS, new_figure, save

    rows, crit = report["results"], report["critical_point"]
    chosen = list({r["tau"]: r for r in ([r for r in rows if crit and r["tau"] == crit["tau"]]
                                        + [rows[-1]])}.values())
    stages = list(rows[-1]["stages"])
    fig = new_figure(figsize=(max(7.0, 0.55 * len(stages) + 2), 4.5), layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / len(chosen)
    xs = np.arange(len(stages))
    for i, r in enumerate(chosen):
        v = _stage_sparsities(r)
        what = "critical point" if crit and r["tau"] == crit["tau"] else "largest tau"
        ax.bar(xs + (i - (len(chosen) - 1) / 2) * width, [v.get(s, 0) * 100 for s in stages], width,
               color=("tab:blue", "tab:red")[i % 2],
               label=f"{what}: tau {r['tau']:.4g} ({r['sparsity_of_nonzero']:.0%} overall)")
    parts = [_stage_part(s) for s in stages]
    for i in range(1, len(stages)):
        if parts[i] != parts[i - 1]:
            ax.axvline(i - 0.5, color="0.6", lw=0.8, ls="--")
    ax.set_xticks(xs)
    ax.set_xticklabels(stages, rotation=45, ha="right", rotation_mode="anchor")
    for label, p in zip(ax.get_xticklabels(), parts):
        label.set_color(PART_COLORS.get(p, "0.2"))
    ax.grid(False, axis="x")
    ax.set_xlabel("stage (network order: encoder, bottleneck, decoder, segmentation heads)")
    ax.set_ylabel("sparsity of non-zero weights")
    ax.yaxis.set_major_formatter(PercentFormatter(100))
    ax.set_ylim(0, 100)
    ax.legend(loc="lower left", bbox_to_anchor=(0, 1.01), ncol=len(chosen), borderaxespad=0, frameon=False)
    fig.suptitle(f"Per-stage sparsity: {title}")
    save(fig, file)
    return file


def plot_sweep(report: dict, output: Path) -> dict[str, Path]:
    """dice_vs_sparsity.png, dice_vs_tau.png and stage_sparsity.png, each drawn in its own style on a figure without
    pyplot (the caller's backend and rcParams, e.g. a global seaborn font scale, neither leak in nor change)."""
    from nnunet_prune.core.plotting import plot_style

    title, subtitle = _plot_titles(report)
    paths = {}
    with plot_style():
        for name in ("dice_vs_sparsity.png", "dice_vs_tau.png"):
            paths[name] = _plot_dice(report, name == "dice_vs_sparsity.png", title, subtitle, output / name)
        paths["stage_sparsity.png"] = _plot_stage_sparsity(report, title, output / "stage_sparsity.png")
    return paths
