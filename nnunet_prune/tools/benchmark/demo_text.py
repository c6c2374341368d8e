"""What ``nnunet-prune demo`` prints and writes: each step's heading with where the demo is and the time left
(:class:`DemoNarrator`, the demo's :class:`~nnunet_prune.tools.benchmark.pipeline.Narrator`), and the results
(:class:`DemoReport`: the table of parameters, MACs, CPU latency, Dice per class and wall times, in Markdown or as
aligned text, its notes, the sweep's critical point)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from nnunet_prune.tools.benchmark.methods import MethodSpec
from nnunet_prune.tools.benchmark.pipeline import Narrator
from nnunet_prune.tools.benchmark.progress import ProgressEstimate
from nnunet_prune.tools.benchmark.settings import BenchmarkSettings
from nnunet_prune.tools.class_dice import class_notes, format_dice


def _print(line: str) -> None:
    print(line, flush=True)


class DemoNarrator(Narrator):
    """The demo's headings, ``==> [step 4 of 12 (model 1 of 3), about 4 min left] Training LUnet: ...``: the
    pipeline's events said for a newcomer, with the place in :attr:`progress` (None: no place) and the advice to
    shorten the run after a slow training. ``methods``: the demo's (their labels name the planning steps)."""

    def __init__(self, settings: BenchmarkSettings, methods: Sequence[MethodSpec],
                 out: Callable[[str], None] = _print):
        super().__init__(out, settings)
        self.methods = list(methods)
        self.progress: ProgressEstimate | None = None

    def heading(self, title: str, key: str | None = None) -> float:
        """Print a step's heading, with where the demo is and the time left when :attr:`progress` plans step ``key``
        (e.g. ``[step 4 of 12 (model 1 of 3), about 4 min left]``), and return its start time
        (``time.perf_counter()``, seconds)."""
        now = time.perf_counter()
        where = ""
        if self.progress is not None and key is not None and self.progress.has(key):
            where = f"[{self.progress.begin(key, now)}] "
        self.say(f"\n==> {where}{title}")
        return now

    def planning(self, planner: str | None, plans: str, preprocess_only: bool = False) -> None:
        """The heading of planning with nnU-Net's default planner, or with ``planner`` (named after the model whose
        plans it makes)."""
        if planner is None:
            self.heading(f"Planning and preprocessing: nnU-Net default planner ({self.s.configuration})",
                         "plan default")
            return
        label = next((m.label for m in self.methods if m.planner == planner), plans)
        self.heading(f"Planning: {planner} (the {label} plans, {plans}; reuses the preprocessed data)",
                     f"plan {label}")

    def training(self, m: MethodSpec, fold, how: str) -> None:
        """The heading of a training, with its command's arguments, budget, device and seed."""
        self.heading(f"Training {m.label}: nnUNetv2_train {self.s.dataset_id} {self.s.configuration} {fold} -tr "
                     f"{m.trainer} -p {m.plans} ({self.s.epochs} epochs x {self.s.iterations} iterations, "
                     f"{self.s.device.upper()}, seed {self.s.seed})", f"train {m.label}")

    def trained(self, m: MethodSpec, fold, seconds: float) -> None:
        """After a training: on a slow machine (:meth:`ProgressEstimate.slow_step`), the advice, once."""
        key = f"train {m.label}"
        if self.progress is None or not self.progress.has(key):
            return
        self.progress.finish(time.perf_counter())
        slow = self.progress.slow_step(key)
        if slow:
            self.say(self.progress.advice(slow, self.s.epochs, self.s.iterations))

    def exporting(self, m: MethodSpec) -> None:
        """The heading of an export."""
        self.heading(f"Exporting {m.label} as a slim model folder", f"export {m.label}")

    def predicting(self, m: MethodSpec, script: str) -> None:
        """The heading of a prediction (and its evaluation)."""
        self.heading(f"Predicting the held-out images with {m.label} (stock {script}, scored by "
                     f"nnUNetv2_evaluate_folder)", f"predict {m.label}")

    def sweeping(self, m: MethodSpec) -> None:
        """The heading of the magnitude-pruning sweep."""
        self.heading(f"Magnitude-pruning sweep of {m.label} (proxy Dice on the held-out images)", "sweep")


@dataclass
class DemoReport:
    """The demo's results as text: ``rows`` (:class:`~nnunet_prune.tools.benchmark.demo.ModelRow`, the first one
    the reference), the ``dataset`` ("synthetic", "lits117"), the budget (``epochs`` x ``iterations``), ``seed``,
    the working folder, and the latency's CPU ``threads`` and ``patch_size``."""

    rows: list
    dataset: str
    epochs: int
    iterations: int
    seed: int
    workdir: Path
    threads: int | str = "?"
    patch_size: list[int] = field(default_factory=list)

    def columns(self) -> tuple[list[str], list[list[str]]]:
        """The table's headers and cells, ratios against the first row."""
        from nnunet_prune.tools.report.efficiency import _latency, _ratio

        base = self.rows[0]
        classes = list(dict.fromkeys(c for r in self.rows for c in r.dice_per_class))
        patch = "x".join(map(str, self.patch_size))
        headers = ["model", "parameters", "GMAC/patch", "MACs vs default", "checkpoint",
                   f"CPU ms/patch ({patch}, {self.threads} thr.)", "Dice", *[f"Dice {c}" for c in classes], "train",
                   "predict"]
        cells = []
        for r in self.rows:
            cells.append([r.name, f"{r.parameters / 1e6:.3f} M", f"{r.macs / 1e9:.3f}",
                          "-" if r is base else _ratio(r.macs, base.macs), f"{r.checkpoint_mb:.1f} MB",
                          _latency(r.cpu_ms_per_patch, r.cpu_ms_iqr, r.cpu_ms_not_comparable), format_dice(r.dice),
                          *[format_dice(r.dice_per_class.get(c), digits=2) for c in classes],
                          f"{r.train_seconds:.0f} s", f"{r.predict_seconds:.0f} s"])
        return headers, cells

    def table(self) -> str:
        """The results as a Markdown table (demo_results.md)."""
        headers, cells = self.columns()
        lines = ["| " + " | ".join(headers) + " |", "|---|" + "---:|" * (len(headers) - 1)]
        lines += ["| " + " | ".join(c) + " |" for c in cells]
        return "\n".join(lines)

    def text_table(self) -> str:
        """The results as an aligned plain-text table for the terminal (two blocks, each under 110 characters)."""
        headers, cells = self.columns()
        split = 6  # size and speed | accuracy and wall time

        def block(cols: list[int]) -> list[str]:
            widths = [max(len(headers[i]), *(len(c[i]) for c in cells)) for i in cols]
            fmt = lambda vals: "  ".join(v.ljust(w) if i == 0 else v.rjust(w)  # noqa: E731
                                         for i, (v, w) in enumerate(zip(vals, widths, strict=True)))
            return [fmt([headers[i] for i in cols]), "  ".join("-" * w for w in widths),
                    *(fmt([c[i] for i in cols]) for c in cells)]

        return "\n".join(block(list(range(split))) + [""] + block([0, *range(split, len(headers))]))

    def notes(self, sweep: dict | None) -> list[str]:
        """Plain words for what the numbers cannot show on their own: classes a model did not learn or lost against
        the default network (:func:`~nnunet_prune.tools.class_dice.class_notes`), what the sweep's zeros do, CPU
        timings that are not comparable."""
        out = class_notes({r.name: r.dice_per_class for r in self.rows}, reference=self.rows[0].name,
                          advice="train longer (--epochs)")
        if sweep and sweep.get("critical_point"):
            out.append("The sweep's zeroed weights shrink the checkpoint (export --magnitude-tau) but give no "
                       "speed-up: dense convolutions do the same work on zeros.")
        unfit = [r for r in self.rows if r.cpu_ms_not_comparable]
        if unfit:
            out.append(f"CPU ms marked (n/c) are not comparable between the models ({unfit[0].cpu_ms_not_comparable}"
                       f"): do not read a speed-up from them; rerun `nnunet-prune report` on a quiet machine.")
        return out

    def summary(self, sweep: dict | None, total: float, markdown: bool = True) -> str:
        """The results as text: budget, table (Markdown, or aligned plain text with ``markdown=False``), notes, the
        sweep's critical point (``sweep``: its report, or None) and the total wall time ``total`` (seconds)."""
        lines = [f"# nnunet-prune demo ({self.dataset} data, 2d, fold 0)", "",
                 f"Training budget: {self.epochs} epochs x {self.iterations} iterations on the CPU "
                 f"(nnU-Net's default is 1000 x 250): the numbers show mechanics and trade-offs, not final accuracy. "
                 f"Seed {self.seed} (--seed): a rerun with it gives the same Dice; another seed shows how much of a "
                 f"difference between models is chance.",
                 "", self.table() if markdown else self.text_table(), "",
                 "CPU ms/patch: one patch, batch 1, the models timed interleaved, median of at least 10 runs (± "
                 "half the interquartile range). Dice: held-out test cases, foreground mean and per class, from "
                 "nnUNetv2_evaluate_folder (summary.json in predictions/<model>).", ""]
        notes = self.notes(sweep)
        if notes:
            lines += [("- " if markdown else "* ") + n for n in notes] + [""]
        if sweep:
            lines += self._sweep_lines(sweep)
        lines.append(f"Total wall time: {total / 60:.1f} min. Working folder: {self.workdir}")
        return "\n".join(lines) + "\n"

    @staticmethod
    def _sweep_lines(sweep: dict) -> list[str]:
        crit = sweep["critical_point"]
        lines = ["Magnitude-pruning sweep of the default model (proxy Dice = pruned vs unpruned predictions):"]
        if crit:
            lines.append(f"critical point tau = {crit['tau']:.4g}: {crit['sparsity']:.1%} of the weights zeroed at "
                         f"proxy Dice {crit['proxy_dice']:.3f} (threshold {sweep['threshold']}); no speed-up from "
                         f"zeros alone; details in magnitude_sweep/summary.md.")
        else:
            lines.append(f"no tau kept the proxy Dice >= {sweep['threshold']}; see magnitude_sweep/summary.md.")
        return lines + [""]
