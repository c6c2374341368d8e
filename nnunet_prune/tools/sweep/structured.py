"""The post-training sweep for structured pruning: how far a filter criterion goes before fine-tuning is needed.

``nnunet-prune sweep MODEL -i IMAGES --criterion l2 --fractions 0.25 0.5 0.75 0.9``: the fraction axis of the sweep
engine (:mod:`nnunet_prune.tools.sweep.engine`: inputs, reference predictions, proxy Dice and resumable state). For
each fraction every fold is pruned once with the criterion (:class:`~nnunet_prune.methods.structured.StructuredMethod`,
one-shot, the same distribution and caps as the ``nnUNetTrainerStructured*`` trainers), its filters removed
physically, no fine-tuning; the pruned ensemble predicts the images through nnU-Net's inference, and each fraction
reports proxy and real Dice, filters / parameters / MACs removed and the measured latency of one patch against the
unpruned network.

Latency: fold 0's pruned network and a copy of the unpruned one are timed interleaved (:mod:`nnunet_prune.core.timing`:
one pass of each per round, the order alternating, rounds until both medians are known), so drift of the machine
hits both alike; the speed-up is the median of the per-round ratios. On a busy machine, or when the runs do not
agree, the speed-up is not comparable: the table says 'n/c' and why, the CSV leaves ``speed_up`` empty and the
plot draws no point.
"""

from __future__ import annotations

import copy
import math
import shlex
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from nnunet_prune import NnUNetPruneError
from nnunet_prune.core.latency import measure_latencies
from nnunet_prune.core.outputs import record_files
from nnunet_prune.core.timing import NOT_COMPARABLE
from nnunet_prune.methods.base import TrainingProgress
from nnunet_prune.methods.structured import StructuredMethod, StructuredSettings
from nnunet_prune.surgery import build_channel_graph
from nnunet_prune.surgery.removal import apply_removal
from nnunet_prune.tools.dice import class_counts
from nnunet_prune.tools.sweep.engine import TOOL, Axis, ProxySummary, SweepEngine

#: the default fractions of the filters removed
DEFAULT_FRACTIONS = (0.25, 0.5, 0.75, 0.9)


@dataclass
class FractionSettings:
    """The fraction axis's options (what ``nnunet-prune sweep --criterion`` passes on).

    ``criterion``: "l1", "l2" or "slimming"; ``fractions`` in (0, 1) to remove (None: :data:`DEFAULT_FRACTIONS`,
    less those the caps make unreachable), counted in ``ratio_of`` ("filters", "params", "macs"); ``distribution``:
    one normalised ranking of all filters ("global") or the same fraction of every coupling group ("uniform");
    ``max_ratio`` / ``max_ratio_coupled``: the most a coupling group (a skip or residual group) may lose.
    """

    criterion: str = "l2"
    fractions: list[float] | None = None
    ratio_of: str = "filters"
    distribution: str = "global"
    max_ratio: float = 0.95
    max_ratio_coupled: float = 0.8

    def fingerprint(self) -> dict:
        """The settings that change the numbers (not the fractions: more can always be added). ``prune_bias`` and
        ``per_layer_normalised`` (magnitude options, always off here) are part of it as in the state of earlier
        versions, so their sweeps resume."""
        return {"prune_bias": False, "per_layer_normalised": False, "criterion": self.criterion,
                "ratio_of": self.ratio_of, "distribution": self.distribution, "max_ratio": self.max_ratio,
                "max_ratio_coupled": self.max_ratio_coupled}


@dataclass
class FractionResult:
    """One fraction of a structured sweep: what was removed (fractions, mean over folds), the network left (mean
    parameters, MACs per patch), the median latency of one patch (ms, fold 0's pruned network, the sweep's device)
    and of the unpruned network timed interleaved with it (``dense_latency_ms``), the speed-up (median of the
    per-round ratios; None when ``latency_not_comparable`` says why it does not count), proxy Dice against the
    unpruned ensemble and real Dice against labels, and ``seconds`` (s) to prune and predict."""

    fraction: float
    filters_removed: float
    parameters_removed: float
    macs_removed: float
    parameters: float
    macs: float
    latency_ms: float | None
    proxy_dice: float
    proxy_dice_per_class: dict
    real_dice: float | None = None
    real_dice_per_class: dict | None = None
    proxy_dice_pooled: float | None = None
    proxy_dice_paper_mean: float | None = None
    reference_voxels: dict | None = None
    small_classes: list | None = None
    per_fold_filters: list | None = None
    seconds: float = 0.0
    dense_latency_ms: float | None = None
    speed_up: float | None = None
    latency_not_comparable: str | None = None


class FractionAxis(Axis):
    """Fractions of filters removed with a structured criterion (module docstring); the engine's network is the
    width-adaptive one, so the pruned folds load into it and it returns to the unpruned widths."""

    noun = "fractions"
    unit = "fraction"
    adaptive = True

    def __init__(self, settings: FractionSettings | None = None):
        self.settings = settings or FractionSettings()
        self._reachable: list[float] | None = None

    def fingerprint(self) -> dict:
        """:meth:`FractionSettings.fingerprint`."""
        return self.settings.fingerprint()

    def recorded(self) -> dict:
        """The fraction settings."""
        return asdict(self.settings)

    def method_settings(self, fraction: float) -> StructuredSettings:
        """The one-shot settings of one fraction."""
        s = self.settings
        return StructuredSettings.resolve(fixed={"criterion": s.criterion, "schedule": "oneshot",
                                                 "pruning_ratio": fraction, "ratio_of": s.ratio_of,
                                                 "distribution": s.distribution, "max_ratio": s.max_ratio,
                                                 "max_ratio_coupled": s.max_ratio_coupled})

    def check(self, engine: SweepEngine) -> None:
        """Every fraction must be reachable under the caps on every fold (checked before any inference). Of the
        default fractions the unreachable ones are left out with a note; a fraction the user asked for stops the
        sweep.

        Raises:
            NnUNetPruneError: naming the fraction and what limits it.
        """
        self._reachable = None
        reachable = []
        for fraction in self.grid(engine):
            problems = []
            for dense in engine.dense_states:
                engine.network.load_state_dict(dense)
                method = StructuredMethod(self.method_settings(fraction))
                problems = method.network_problems(engine.network, build_channel_graph(engine.network),
                                                   engine.patch_size)
                if problems:
                    break
            if not problems:
                reachable.append(fraction)
            elif self.settings.fractions:
                raise NnUNetPruneError(f"--fractions {fraction:g}: {_for_the_sweep(problems)}. Nothing was predicted.")
            else:
                print(f"Left out {fraction:g} (a default fraction): {_for_the_sweep(problems)}")
        if not reachable:
            raise NnUNetPruneError("No default fraction is reachable under the caps: give --fractions.")
        self._reachable = reachable

    def grid(self, engine: SweepEngine) -> list[float]:
        """The fractions, sorted (default :data:`DEFAULT_FRACTIONS`, less those the caps make unreachable)."""
        if self._reachable:
            return list(self._reachable)
        return sorted(set(self.settings.fractions or DEFAULT_FRACTIONS))

    def start(self, engine: SweepEngine) -> None:
        """The unpruned network's latency, once per sweep (kept in the state)."""
        if engine.state.get("dense_latency_ms") is None:
            engine.network.load_state_dict(engine.dense_states[0])
            ms, _, _, why = self.latency(engine)
            engine.state["dense_latency_ms"], engine.state["dense_latency_not_comparable"] = ms, why

    def after_reference(self, engine: SweepEngine, reference: dict, real: dict | None) -> None:
        """The unpruned ensemble's own real Dice (with labels, once per sweep)."""
        if real is not None and engine.state.get("dense_real_dice") is None:
            engine.state["dense_real_dice"] = engine.real_dice(real, reference)[0]

    def latency(self, engine: SweepEngine, dense: torch.nn.Module | None = None
                ) -> tuple[float, float | None, float | None, str | None]:
        """(ms of the engine's network, ms of ``dense``, speed-up, why not comparable): the two timed interleaved
        (:mod:`nnunet_prune.core.timing`); without ``dense`` the engine's network alone."""
        nets = {"pruned": engine.network, **({"dense": dense} if dense is not None else {})}
        timings = measure_latencies(nets, engine.patch_size, engine.predictor.device, repeats=10, warmup=2,
                                    threads=torch.get_num_threads())
        pruned = timings.stats["pruned"]
        if dense is None:
            return round(pruned.median_ms, 3), None, None, pruned.not_comparable
        speed_up, why = timings.ratio("dense", "pruned")
        return (round(pruned.median_ms, 3), round(timings.stats["dense"].median_ms, 3),
                None if why else speed_up, why)

    def _prune(self, engine: SweepEngine, fraction: float) -> list[float]:
        """Prune the engine's network (a fold's unpruned weights loaded) one-shot at ``fraction``; returns the
        fractions of filters, parameters and MACs removed and the filters, parameters and MACs left."""
        graph = build_channel_graph(engine.network)
        method = StructuredMethod(self.method_settings(fraction))
        removal = method.start(engine.network, graph,
                               TrainingProgress(0, 0, [], [], patch_size=engine.patch_size))
        apply_removal(engine.network, removal, graph=graph)
        # the unpruned sizes are what start() recorded; the pruned ones come from its exact size model
        sch, widths = method.schedule, graph.widths()
        before = (sum(sch.initial_widths.values()), sch.initial_parameters, sch.initial_macs)
        after = (sum(widths.values()), method.size.parameters(widths), method.size.macs(widths))
        return [1 - a / b for a, b in zip(after, before)] + list(after)

    def evaluate(self, engine: SweepEngine, fraction: float, reference: dict, real: dict | None) -> FractionResult:
        """Prune every fold one-shot at ``fraction``, measure fold 0's pruned network, predict with the pruned
        ensemble, compare with ``reference`` and ``real``."""
        start = time.perf_counter()
        params, stats, latency = [], [], None
        for i, dense in enumerate(engine.dense_states):
            engine.network.load_state_dict(dense)  # back to the unpruned widths
            unpruned = copy.deepcopy(engine.network) if i == 0 else None  # timed next to the pruned one
            stats.append(self._prune(engine, fraction))
            if i == 0:
                latency = self.latency(engine, unpruned)
                del unpruned
            params.append(engine.network_parameters())
        pred = engine.predict(params)
        proxy = ProxySummary.of(class_counts(reference, pred, engine.label_list, engine.ignore_label))
        mean = np.mean(stats, axis=0)
        result = FractionResult(fraction, float(mean[0]), float(mean[1]), float(mean[2]), float(mean[4]),
                                float(mean[5]), latency[0], proxy.value(engine.settings.proxy_summary),
                                proxy.pooled, proxy_dice_pooled=proxy.pooled_mean,
                                proxy_dice_paper_mean=proxy.paper_mean, reference_voxels=proxy.reference_voxels,
                                small_classes=proxy.small_classes, per_fold_filters=[int(s[3]) for s in stats],
                                dense_latency_ms=latency[1], speed_up=latency[2], latency_not_comparable=latency[3])
        if real is not None:
            result.real_dice, result.real_dice_per_class = engine.real_dice(real, pred)
        result.seconds = round(time.perf_counter() - start, 3)
        return result

    def progress_line(self, result: FractionResult) -> str:
        """What was removed, the latency and speed-up, proxy (and real) Dice and the time it took."""
        r = result
        speed = f"{NOT_COMPARABLE} ({r.latency_not_comparable})" if r.latency_not_comparable \
            else f"{r.speed_up:.2f}x"
        return (f"  {r.fraction:.0%} of the {self.settings.ratio_of}: filters -{r.filters_removed:.1%}, "
                f"parameters -{r.parameters_removed:.1%}, MACs -{r.macs_removed:.1%}, "
                f"{r.latency_ms:.1f} ms/patch (speed-up {speed}), proxy Dice {r.proxy_dice:.4f}"
                + (f", real Dice {r.real_dice:.4f}" if r.real_dice is not None else "") + f" ({r.seconds:.1f} s)")

    def report(self, engine: SweepEngine) -> dict:
        """Model, settings, the unpruned latency, the largest fraction whose proxy Dice stays at the threshold, and
        every fraction's result."""
        rows = sorted(engine.state["results"].values(), key=lambda r: r["fraction"])
        threshold = engine.settings.threshold
        ok = [r for r in rows if r["proxy_dice"] >= threshold]
        return {**engine.report_header(), "settings": engine.recorded_settings(), "threshold": threshold,
                "dense_latency_ms": engine.state.get("dense_latency_ms"),
                "dense_latency_not_comparable": engine.state.get("dense_latency_not_comparable"),
                "dense_real_dice": engine.state.get("dense_real_dice"),
                "reference_seconds": engine.state.get("reference_seconds"),
                "largest_fraction_at_threshold": ok[-1]["fraction"] if ok else None, "results": rows}

    def write_outputs(self, report: dict, output: Path) -> dict[str, Path]:
        """:func:`write_outputs`."""
        return write_outputs(report, output)


def _for_the_sweep(problems: list[str]) -> str:
    """The method's advice in the sweep's own terms (its options, not the trainer's settings)."""
    return "; ".join(problems).replace("Lower pruning_ratio or raise max_ratio / max_ratio_coupled",
                                       "Lower the fraction or raise --max-ratio / --max-ratio-coupled")


def write_outputs(report: dict, output: Path) -> dict[str, Path]:
    """sweep.csv, sweep.json, summary.md and dice_vs_fraction.png."""
    import json

    import pandas as pd

    table = [{"fraction": r["fraction"], "filters_removed": r["filters_removed"],
              "parameters_removed": r["parameters_removed"], "macs_removed": r["macs_removed"],
              "parameters": r["parameters"], "macs": r["macs"], "latency_ms": r["latency_ms"],
              "speed_up": _speed_up(r, report.get("dense_latency_ms")),
              "proxy_dice": r["proxy_dice"], "real_dice": r["real_dice"], "seconds": r["seconds"],
              "dense_latency_ms": r.get("dense_latency_ms"),
              "latency_comparable": not r.get("latency_not_comparable"),
              "latency_not_comparable": r.get("latency_not_comparable") or ""}
             for r in report["results"]]
    paths = {"csv": output / "sweep.csv", "json": output / "sweep.json", "markdown": output / "summary.md"}
    pd.DataFrame(table).to_csv(paths["csv"], index=False)
    paths["json"].write_text(json.dumps(report, indent=1, default=str))
    paths["markdown"].write_text(summary_markdown(report, table))
    try:
        paths["plot"] = plot(report, table, output / "dice_vs_fraction.png")
    except Exception as e:  # a convenience; the numbers are in the CSV/JSON
        print(f"could not plot the sweep ({type(e).__name__}: {e})")
    record_files(output, TOOL, paths.values())
    return paths


def _speed_up(result: dict, dense_ms: float | None) -> float | None:
    """The speed-up of one fraction (unpruned / pruned ms per patch): the interleaved measurement's, None where it
    is not comparable; a sweep state written before interleaving: the unpruned timing of the sweep's start."""
    if "speed_up" in result:
        return None if result.get("latency_not_comparable") else result["speed_up"]
    return dense_ms / result["latency_ms"] if dense_ms and result.get("latency_ms") else None


def summary_markdown(report: dict, table: list[dict]) -> str:
    """The report as summary.md: setup, the largest fraction at the threshold, one row per fraction."""
    s = report["settings"]
    best = report["largest_fraction_at_threshold"]
    lines = [f"# Structured-pruning sweep ({s['criterion']}): {Path(report['model']).name}", "",
             f"- fold(s) {', '.join(report['folds'])}; {len(report['cases'])} images; one-shot {s['criterion']} "
             f"pruning of {s['ratio_of']}, {s['distribution']} distribution, no fine-tuning",
             f"- proxy Dice: the pruned vs the unpruned ensemble (nnU-Net inference); latency: one patch, batch 1, "
             f"{s['device']}, fold 0's pruned network timed interleaved with the unpruned one (their ms in the "
             f"table; the speed-up is the median of the per-round ratios; '{NOT_COMPARABLE}': not comparable, see "
             f"below)", "",
             (f"**Largest fraction with proxy Dice >= {report['threshold']}: {best:g}.**" if best is not None else
              f"No fraction keeps proxy Dice >= {report['threshold']}: fine-tune (nnUNetTrainerStructured*)."), "",
             "| fraction | filters removed | parameters removed | MACs removed | ms/patch | speed-up | proxy Dice | "
             "real Dice |", "|---:|---:|---:|---:|---:|---:|---:|---:|",
             f"| 0 (unpruned) | 0 | 0 | 0 | "
             f"{_ms(report['dense_latency_ms'], report.get('dense_latency_not_comparable'))} | 1.00x | 1.0000 | "
             + ("-" if report.get("dense_real_dice") is None else f"{report['dense_real_dice']:.4f}") + " |"]
    for r in table:
        real = "-" if r["real_dice"] is None else f"{r['real_dice']:.4f}"
        nc = r["latency_not_comparable"]
        speed = NOT_COMPARABLE if nc else "-" if r["speed_up"] is None else f"{r['speed_up']:.2f}x"
        dense = "" if r["dense_latency_ms"] is None else f" (unpruned {_ms(r['dense_latency_ms'])})"
        ms = _ms(r["latency_ms"]) + dense + (f" ({NOT_COMPARABLE})" if nc else "")
        lines.append(f"| {r['fraction']:g} | {r['filters_removed']:.1%} | {r['parameters_removed']:.1%} | "
                     f"{r['macs_removed']:.1%} | {ms} | {speed} | {r['proxy_dice']:.4f} | {real} |")
    reasons = [f"- {r['fraction']:g}: {r['latency_not_comparable']}" for r in table if r["latency_not_comparable"]]
    if report.get("dense_latency_not_comparable"):
        reasons.insert(0, f"- unpruned: {report['dense_latency_not_comparable']}")
    if reasons:
        lines += ["", f"Latencies marked '{NOT_COMPARABLE}' are not comparable (no speed-up is given for them); "
                      "measure again on a quiet machine:", "", *reasons]
    return "\n".join(lines) + "\n"


def _ms(value: float | None, not_comparable: str | None = None) -> str:
    """'12.3', or '12.3 (n/c)' for a timing that is not comparable; '-' if not measured."""
    if value is None:
        return "-"
    return f"{value:.1f}" + (f" ({NOT_COMPARABLE})" if not_comparable else "")


def plot(report: dict, table: list[dict], file: Path) -> Path:
    """Proxy and real Dice, and the speed-up, against the fraction of filters removed."""
    from matplotlib.ticker import PercentFormatter

    from nnunet_prune.core.plotting import new_figure, plot_style, save

    x = [r["filters_removed"] * 100 for r in table]
    with plot_style():
        fig = new_figure(figsize=(8.5, 4.5), layout="constrained")
        ax = fig.add_subplot()
        ax.plot(x, [r["proxy_dice"] for r in table], "o-", label="proxy Dice (pruned vs unpruned)")
        real = [r["real_dice"] for r in table]
        if any(v is not None for v in real):
            ax.plot(x, [math.nan if v is None else v for v in real], "s--", label="real Dice (vs labels)")
        ax.axhline(report["threshold"], color="0.4", ls=":", label=f"threshold {report['threshold']:g}")
        ax.set_xlabel("filters removed (no fine-tuning)")
        ax.xaxis.set_major_formatter(PercentFormatter(100))
        ax.set_ylabel("Dice")
        ax.set_ylim(0, 1.02)
        twin = ax.twinx()
        twin.plot(x, [r["speed_up"] or math.nan for r in table], "^:", color="tab:green", label="speed-up")
        twin.set_ylabel("speed-up of one patch (x)")
        twin.set_ylim(0, max([r["speed_up"] or 1 for r in table] + [1]) * 1.1)
        twin.grid(False)
        for xi, r in zip(x, table):  # no point for a speed-up that does not count: a mark that says so
            if r["latency_not_comparable"]:
                twin.annotate(f"speed-up\n{NOT_COMPARABLE}", (xi, 0), xytext=(0, 4), textcoords="offset points",
                              ha="center", va="bottom", fontsize=7, color="tab:green")
        handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
        ax.legend(handles=handles, loc="lower left", frameon=False)
        fig.suptitle(f"Structured-pruning sweep ({report['settings']['criterion']}): {Path(report['model']).name}")
        save(fig, file)
    return file


#: trainer name part of each structured criterion (nnUNetTrainerStructured<name>_oneshot / _iterative)
TRAINER_NAMES = {"l1": "L1", "l2": "L2", "slimming": "Slimming"}


def finetune_hint(report: dict) -> str:
    """The closing hint of a structured sweep (``report``: :meth:`FractionAxis.report`): the stock command that
    prunes the swept model one-shot at the largest fraction found (without one: the smallest fraction tried, which
    needs fine-tuning like all others) with the sweep's criterion, distribution and caps, and fine-tunes it.

    One-shot, not iterative: docs/structured.md measured one-shot as good as or better than iterative at short
    fine-tuning budgets (equal at 50-75 % of the filters, ahead at 90 %); the iterative trainer is named for long
    budgets, the paper's setting."""
    s = report["settings"]
    best = report.get("largest_fraction_at_threshold")
    tried = [r["fraction"] for r in report.get("results", [])] or list(s.get("fractions") or DEFAULT_FRACTIONS)
    fraction = best if best is not None else min(tried)
    model = Path(report["model"])
    parts = model.name.split("__")
    plans = parts[1] if len(parts) == 3 else "nnUNetPlans"
    folds = [str(f) for f in report.get("folds", [])]
    trainer = f"nnUNetTrainerStructured{TRAINER_NAMES[s['criterion']]}"
    settings = (f"pruning_ratio={fraction:g},ratio_of={s['ratio_of']},distribution={s['distribution']},"
                f"max_ratio={s['max_ratio']:g},max_ratio_coupled={s['max_ratio_coupled']:g}")
    command = (f"NNUNET_PRUNE_DENSE_MODEL={shlex.quote(str(model))} NNUNET_PRUNE_STRUCTURED='{settings}' "
               f"nnUNetv2_train {model.parent.name} {report['configuration']} "
               f"{folds[0] if len(folds) == 1 else 'FOLD'} -tr {trainer}_oneshot"
               + ("" if plans == "nnUNetPlans" else f" -p {plans}"))
    lead = (f"To fine-tune at {fraction:g} (one-shot: as good as or better than iterative at short budgets, "
            f"docs/structured.md)" if best is not None else
            f"Every fraction needs fine-tuning; to start at the smallest, {fraction:g}")
    each = f" (FOLD: each of {', '.join(folds)})" if len(folds) > 1 else ""
    return (f"{lead}:\n  {command}{each}\nFor a long fine-tuning budget the paper's schedule is {trainer}_iterative "
            f"(same settings).")
