"""The post-training sweep for structured pruning: how far a filter criterion goes before fine-tuning is needed.

``nnunet-prune sweep MODEL -i IMAGES --criterion l2 --fractions 0.25 0.5 0.75 0.9``: for each fraction every fold is
pruned once with the criterion (:class:`~nnunet_prune.methods.structured.StructuredMethod`, one-shot, the same
distribution and caps as the ``nnUNetTrainerStructured*`` trainers), its filters removed physically, no fine-tuning;
the pruned ensemble predicts the images through nnU-Net's inference (as :mod:`nnunet_prune.tools.sweep.magnitude`,
whose inputs,
reference predictions, proxy Dice and resumable state it reuses), and each fraction reports proxy and real Dice,
filters / parameters / MACs removed and the measured latency of one patch against the unpruned network.

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
from nnunet_prune.tools.dice import class_counts, dice_per_case, foreground_mean
from nnunet_prune.tools.sweep.magnitude import STATE_FILE, TOOL, MagnitudeSweep, ProxySummary

#: the default fractions of the filters removed
DEFAULT_FRACTIONS = (0.25, 0.5, 0.75, 0.9)


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


class StructuredSweep(MagnitudeSweep):
    """A sweep over fractions of filters removed with a structured criterion (module docstring). ``settings`` is a
    :class:`~nnunet_prune.tools.sweep.magnitude.SweepSettings` with ``criterion`` set ('l1', 'l2', 'slimming')."""

    def _build_network(self) -> torch.nn.Module:
        """The width-adaptive network, whatever trainer made the folder: the pruned folds load into it."""
        from nnunet_prune.nnunet.trainers.base import nnUNetTrainerPruning

        m = self.model
        return nnUNetTrainerPruning.build_network_architecture(
            m.plans_manager, m.configuration_manager, m.num_input_channels, m.label_manager.num_segmentation_heads,
            enable_deep_supervision=False)

    def _prepare(self):
        super()._prepare()
        self.patch_size = tuple(self.model.configuration_manager.patch_size)

    def method_settings(self, fraction: float) -> StructuredSettings:
        """The one-shot settings of one fraction."""
        s = self.settings
        return StructuredSettings.resolve(fixed={"criterion": s.criterion, "schedule": "oneshot",
                                                 "pruning_ratio": fraction, "ratio_of": s.ratio_of,
                                                 "distribution": s.distribution, "max_ratio": s.max_ratio,
                                                 "max_ratio_coupled": s.max_ratio_coupled})

    def check_reachable(self) -> None:
        """Every fraction must be reachable under the caps on every fold (checked before any inference). Of the
        default fractions the unreachable ones are left out with a note; a fraction the user asked for stops the
        sweep.

        Raises:
            NnUNetPruneError: naming the fraction and what limits it.
        """
        self._fractions = None
        reachable = []
        for fraction in self.grid():
            problems = []
            for dense in self.dense_states:
                self.network.load_state_dict(dense)
                method = StructuredMethod(self.method_settings(fraction))
                problems = method.network_problems(self.network, build_channel_graph(self.network), self.patch_size)
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
        self._fractions = reachable

    def grid(self) -> list[float]:
        """The fractions, sorted (default :data:`DEFAULT_FRACTIONS`, less those the caps make unreachable)."""
        if getattr(self, "_fractions", None):
            return list(self._fractions)
        return sorted(set(self.settings.fractions or DEFAULT_FRACTIONS))

    def _latency(self, dense: torch.nn.Module | None = None) -> tuple[float, float | None, float | None, str | None]:
        """(ms of the current network, ms of ``dense``, speed-up, why not comparable): the two timed interleaved
        (:mod:`nnunet_prune.core.timing`); without ``dense`` the current network alone."""
        nets = {"pruned": self.network, **({"dense": dense} if dense is not None else {})}
        timings = measure_latencies(nets, self.patch_size, self.predictor.device, repeats=10, warmup=2,
                                    threads=torch.get_num_threads())
        pruned = timings.stats["pruned"]
        if dense is None:
            return round(pruned.median_ms, 3), None, None, pruned.not_comparable
        speed_up, why = timings.ratio("dense", "pruned")
        return (round(pruned.median_ms, 3), round(timings.stats["dense"].median_ms, 3),
                None if why else speed_up, why)

    def evaluate(self, fraction: float, reference, real) -> FractionResult:
        """Prune every fold one-shot at ``fraction``, measure fold 0's pruned network, predict with the pruned
        ensemble, compare with ``reference`` and ``real``."""
        start = time.perf_counter()
        params, stats, latency = [], [], None
        for i, dense in enumerate(self.dense_states):
            self.network.load_state_dict(dense)  # back to the unpruned widths
            unpruned = copy.deepcopy(self.network) if i == 0 else None  # timed next to the pruned one
            graph = build_channel_graph(self.network)
            method = StructuredMethod(self.method_settings(fraction))
            removal = method.start(self.network, graph, TrainingProgress(0, 0, [], [], patch_size=self.patch_size))
            apply_removal(self.network, removal, graph=graph)
            # the unpruned sizes are what start() recorded; the pruned ones come from its exact size model
            sch, widths = method.schedule, graph.widths()
            before = (sum(sch.initial_widths.values()), sch.initial_parameters, sch.initial_macs)
            after = (sum(widths.values()), method.size.parameters(widths), method.size.macs(widths))
            stats.append([1 - a / b for a, b in zip(after, before)] + list(after))
            if i == 0:
                latency = self._latency(unpruned)
                del unpruned
            params.append({k: v.detach().clone() for k, v in self.network.state_dict().items()})
        pred = self._predict(params)
        proxy = ProxySummary.of(class_counts(reference, pred, self.label_list, self.ignore_label))
        mean = np.mean(stats, axis=0)
        result = FractionResult(fraction, float(mean[0]), float(mean[1]), float(mean[2]), float(mean[4]),
                                float(mean[5]), latency[0], proxy.value(self.settings.proxy_summary), proxy.pooled,
                                proxy_dice_pooled=proxy.pooled_mean, proxy_dice_paper_mean=proxy.paper_mean,
                                reference_voxels=proxy.reference_voxels, small_classes=proxy.small_classes,
                                per_fold_filters=[int(s[3]) for s in stats], dense_latency_ms=latency[1],
                                speed_up=latency[2], latency_not_comparable=latency[3])
        if real is not None:
            result.real_dice, result.real_dice_per_class = foreground_mean(
                dice_per_case(real, pred, self.label_list, self.ignore_label))
        result.seconds = round(time.perf_counter() - start, 3)
        return result

    def run(self, progress: bool = True) -> dict:
        """Run (or finish) the sweep; returns the report (also written to the output folder)."""
        start = time.perf_counter()
        self._prepare()
        self.check_reachable()  # before anything is written
        self.output.mkdir(parents=True, exist_ok=True)
        self._apply_summary()
        if self.state.get("dense_latency_ms") is None:
            self.network.load_state_dict(self.dense_states[0])
            ms, _, _, why = self._latency()
            self.state["dense_latency_ms"], self.state["dense_latency_not_comparable"] = ms, why
        reference = self._reference(progress)
        real = self._real_labels()
        if real is not None and self.state.get("dense_real_dice") is None:  # the unpruned ensemble's own real Dice
            self.state["dense_real_dice"] = foreground_mean(dice_per_case(real, reference, self.label_list,
                                                                          self.ignore_label))[0]
        results = self.state["results"]
        done = [f for f in self.grid() if f"{f:.9g}" in results]
        if done and progress:
            print(f"Reusing {len(done)} finished fractions from {self.output / STATE_FILE}.")
        for fraction in self.grid():
            if f"{fraction:.9g}" in results:
                continue
            r = self.evaluate(fraction, reference, real)
            results[f"{fraction:.9g}"] = asdict(r)
            self._save_state()
            if progress:
                speed = f"{NOT_COMPARABLE} ({r.latency_not_comparable})" if r.latency_not_comparable \
                    else f"{r.speed_up:.2f}x"
                print(f"  {fraction:.0%} of the {self.settings.ratio_of}: filters -{r.filters_removed:.1%}, "
                      f"parameters -{r.parameters_removed:.1%}, MACs -{r.macs_removed:.1%}, "
                      f"{r.latency_ms:.1f} ms/patch (speed-up {speed}), proxy Dice {r.proxy_dice:.4f}"
                      + (f", real Dice {r.real_dice:.4f}" if r.real_dice is not None else "")
                      + f" ({r.seconds:.1f} s)", flush=True)
        self.state["last_run_seconds"] = round(time.perf_counter() - start, 3)
        self._save_state()
        report = self.report()
        write_outputs(report, self.output)
        return report

    def report(self) -> dict:
        """Model, settings, the unpruned latency, the largest fraction whose proxy Dice stays at the threshold, and
        every fraction's result."""
        rows = sorted(self.state["results"].values(), key=lambda r: r["fraction"])
        ok = [r for r in rows if r["proxy_dice"] >= self.settings.threshold]
        return {"model": str(self.model.path), "trainer": self.model.trainer_name,
                "configuration": self.model.configuration_name, "folds": [str(f) for f in self.model.folds],
                "cases": list(self.cases), "settings": self.settings.used(), "threshold": self.settings.threshold,
                "dense_latency_ms": self.state.get("dense_latency_ms"),
                "dense_latency_not_comparable": self.state.get("dense_latency_not_comparable"),
                "dense_real_dice": self.state.get("dense_real_dice"),
                "reference_seconds": self.state.get("reference_seconds"),
                "largest_fraction_at_threshold": ok[-1]["fraction"] if ok else None, "results": rows}


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
    """The closing hint of a structured sweep (``report``: :meth:`StructuredSweep.report`): the stock command that
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
