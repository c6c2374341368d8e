"""The benchmark's rows: one :class:`MethodResult` per method and seed, and the table's row of several seeds
(:func:`aggregate_rows`: mean and sample standard deviation)."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace


@dataclass
class MethodResult:
    """One row of the table. Sizes are per patch (MACs, batch 1) and averaged over the folds; latencies are median
    ms per patch (batch 1); ``dice`` is the foreground mean on the test set (``dice_source`` "test") or the mean of
    the folds' validation Dice ("validation"); seconds are wall times of this method's steps (training summed over
    folds). A row of one seed has ``seed``; the table's row of several seeds (:func:`aggregate_rows`) has the mean
    over ``seeds`` of every number, ``dice_spread`` / ``dice_per_class_spread`` the sample standard deviation of
    the Dice over them (None with one seed) and ``dice_per_seed`` each seed's Dice. ``status``: "pending", "ok",
    "failed" (``error`` says why) or "interrupted" (Ctrl-C; a rerun continues it). ``distilled``: the method
    learnt from the benchmark's dense model (a ``<method>_distill`` row), ``student_of`` its undistilled method."""

    name: str
    label: str
    trainer: str
    plans: str
    status: str = "pending"
    error: str | None = None
    parameters: float | None = None
    initial_parameters: float | None = None
    nonzero_parameters: float | None = None
    macs: float | None = None
    checkpoint_mb: float | None = None
    cpu_ms: float | None = None
    fastest_runtime: str | None = None
    fastest_ms: float | None = None
    #: why the latencies are not comparable (a busy machine, runs that do not agree: :mod:`nnunet_prune.core.timing`),
    #: None when they are; the table then prints 'n/c' for the fastest runtime and marks the latency
    latency_not_comparable: str | None = None
    threads: int | None = None
    gpu_ms: float | None = None
    gpu_ms_compiled: float | None = None
    gpu_peak_mb: float | None = None
    dice: float | None = None
    dice_per_class: dict = field(default_factory=dict)
    dice_source: str | None = None
    tau: float | None = None
    train_seconds: float = 0.0
    predict_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    map_png: str | None = None
    seed: int | None = None
    seeds: list[int] = field(default_factory=list)
    dice_spread: float | None = None
    dice_per_class_spread: dict = field(default_factory=dict)
    dice_per_seed: dict = field(default_factory=dict)
    distilled: bool = False
    student_of: str | None = None
    #: with ``--int8``: the INT8 folder's CPU latency (ms per patch, OpenVINO) and its Dice (same source as ``dice``:
    #: its own predictions, never assumed), or why there is none (the Dice bound refused every INT8 model)
    int8_ms: float | None = None
    int8_dice: float | None = None
    int8_error: str | None = None


#: fields of a row that are per-run numbers: the mean over the seeds in the table
MEAN_FIELDS = ("parameters", "initial_parameters", "nonzero_parameters", "macs", "checkpoint_mb", "cpu_ms",
               "fastest_ms", "gpu_ms", "gpu_ms_compiled", "gpu_peak_mb", "tau", "train_seconds", "predict_seconds",
               "int8_ms", "int8_dice")


def _mean(values: Sequence[float | None]) -> float | None:
    return statistics.fmean(values) if values and None not in values else None


def _sd(values: Sequence[float | None]) -> float | None:
    return statistics.stdev(values) if len(values) > 1 and None not in values else None


def aggregate_rows(runs: Mapping[int, MethodResult]) -> MethodResult:
    """One method's table row from its runs (seed -> row of that seed): over the runs that worked, the mean of every
    number (:data:`MEAN_FIELDS`, Dice and Dice per class) and the sample standard deviation of the Dice
    (``dice_spread``, ``dice_per_class_spread``; None with one run), each seed's Dice, the notes of every run;
    other fields from the first of them. A seed that failed is named in the notes; none worked: the first failure
    (or interruption) as it is."""
    seeds = sorted(runs)
    ok = [s for s in seeds if runs[s].status == "ok"]
    if not ok:
        first = runs[seeds[0]]
        return replace(first, seeds=[], notes=list(first.notes))
    rows = [runs[s] for s in ok]
    out = replace(rows[0], seed=None, seeds=ok, notes=[], dice_per_class=dict(rows[0].dice_per_class))
    for name in MEAN_FIELDS:
        setattr(out, name, _mean([getattr(r, name) for r in rows]))
    out.train_seconds, out.predict_seconds = out.train_seconds or 0.0, out.predict_seconds or 0.0
    out.dice, out.dice_spread = _mean([r.dice for r in rows]), _sd([r.dice for r in rows])
    classes = list(dict.fromkeys(c for r in rows for c in r.dice_per_class))
    per_class = {c: [r.dice_per_class.get(c) for r in rows] for c in classes}
    out.dice_per_class = {c: _mean(v) for c, v in per_class.items()}
    out.dice_per_class_spread = {c: _sd(v) for c, v in per_class.items()} if len(rows) > 1 else {}
    out.dice_per_seed = {s: runs[s].dice for s in ok}
    out.latency_not_comparable = next((r.latency_not_comparable for r in rows if r.latency_not_comparable), None)
    prefix = len(seeds) > 1
    notes = [f"seed {s}: {n}" if prefix else n for s in ok for n in runs[s].notes]
    notes += [f"seed {s} {runs[s].status}" + (f": {runs[s].error}" if runs[s].error else "")
              for s in seeds if s not in ok]
    out.notes = list(dict.fromkeys(notes))
    return out
