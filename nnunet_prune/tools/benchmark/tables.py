"""The benchmark's tables: ``benchmark.csv`` (every number unrounded) and ``benchmark.md`` (the table, the budget,
the notes, the papers' claims and the wall time per step)."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path

from nnunet_prune.nnunet.names import DISTILL_TRAINER
from nnunet_prune.tools.benchmark.methods import DENSE, TEACHER_VAR, MethodSpec
from nnunet_prune.tools.benchmark.rows import MethodResult
from nnunet_prune.tools.benchmark.settings import BenchmarkSettings
from nnunet_prune.tools.class_dice import class_notes, format_dice

CSV_HEAD = ("method", "label", "trainer", "plans", "status", "parameters", "initial_parameters", "nonzero_parameters",
            "macs_per_patch", "checkpoint_mb", "cpu_ms_pytorch", "fastest_runtime", "fastest_ms", "gpu_ms",
            "gpu_ms_compiled_bf16", "gpu_peak_mb", "dice", "dice_spread")
CSV_TAIL = ("dice_source", "tau", "train_s", "predict_s", "seeds", "dice_per_seed", "error", "notes",
            "latency_comparable", "latency_not_comparable", "distilled", "student_of", "int8_ms", "int8_dice",
            "int8_error")


def _fmt(value, pattern: str, missing: str = "") -> str:
    return missing if value is None else pattern.format(value)


def classes_of(rows: Sequence[MethodResult]) -> list[str]:
    """The label names of the rows' per-class Dice, in the dataset's label order (first appearance)."""
    return list(dict.fromkeys(c for r in rows for c in r.dice_per_class))


def write_csv(rows: Sequence[MethodResult], classes: Sequence[str], file: Path) -> None:
    """``benchmark.csv``: one line per row, every number unrounded; Dice per class and its spread per class;
    ``distilled`` (true / false) and ``student_of`` (a distilled row's undistilled method, else empty)."""
    with open(file, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*CSV_HEAD, *[f"dice_{c}" for c in classes], *[f"dice_{c}_spread" for c in classes], *CSV_TAIL])
        for r in rows:
            w.writerow([r.name, r.label, r.trainer, r.plans, r.status, _fmt(r.parameters, "{:.0f}"),
                        _fmt(r.initial_parameters, "{:.0f}"), _fmt(r.nonzero_parameters, "{:.0f}"),
                        _fmt(r.macs, "{:.0f}"), _fmt(r.checkpoint_mb, "{}"), _fmt(r.cpu_ms, "{}"),
                        *_fastest_csv(r), _fmt(r.gpu_ms, "{}"),
                        _fmt(r.gpu_ms_compiled, "{}"), _fmt(r.gpu_peak_mb, "{}"), _fmt(r.dice, "{}"),
                        _fmt(r.dice_spread, "{}"), *[_fmt(r.dice_per_class.get(c), "{}") for c in classes],
                        *[_fmt(r.dice_per_class_spread.get(c), "{}") for c in classes], r.dice_source or "",
                        _fmt(r.tau, "{}"), f"{r.train_seconds:.1f}", f"{r.predict_seconds:.1f}",
                        " ".join(map(str, r.seeds)), " ".join(f"{k}:{v}" for k, v in r.dice_per_seed.items()),
                        r.error or "", " | ".join(r.notes), r.latency_not_comparable is None,
                        r.latency_not_comparable or "", "true" if r.distilled else "false", r.student_of or "",
                        _fmt(r.int8_ms, "{}"), _fmt(r.int8_dice, "{}"), r.int8_error or ""])


def markdown(s: BenchmarkSettings, rows: Sequence[MethodResult], classes: Sequence[str],
             dense: MethodResult | None, methods: Sequence[MethodSpec], state: Mapping) -> str:
    """``benchmark.md``: the budget, the table (``rows`` in their order; ``dense``: the row of the MACs ratio's
    reference), the notes, the papers' claims of ``methods``, and the wall time per step of ``state`` (the run's
    state: ``steps``, ``total_seconds``)."""
    lines = [f"# nnunet-prune benchmark: {s.dataset} {s.configuration}", "", _budget(s, rows), "",
             *_table(s, rows, classes, dense if dense is not None and dense.macs else None),
             "", "![Dice against MACs, latency and parameters](pareto.png)", ""]
    notes = _notes(rows) + _teacher_notes(s, rows)
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    claims = [f"- {m.label}: {m.claim}" for m in methods if m.claim and m.name != DENSE]
    if claims:
        lines += ["## The papers' claims, to read the table against", ""] + claims + [""]
    steps = state.get("steps", {})
    lines += ["## Wall time per step", "", "| step | seconds |", "|---|---:|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in steps.items()]
    lines += ["", f"Sum of the steps: {sum(steps.values()) / 60:.1f} min (this run, reusing what was done: "
                  f"{state.get('total_seconds', 0) / 60:.1f} min, measurements included). Every command with its "
                  f"environment: commands.sh; each step's output: seed_<S>/logs/ (planning: logs/).", ""]
    return "\n".join(lines)


def _budget(s: BenchmarkSettings, rows: Sequence[MethodResult]) -> str:
    """The paragraph under the title: the budget, where the Dice comes from, the seeds, how latency is timed."""
    source = "test set (nnUNetv2_predict + nnUNetv2_evaluate_folder, folds ensembled)" if s.test_images \
        else "validation of each fold (nnU-Net's summary.json), mean over folds"
    threads = next((r.threads for r in rows if r.threads), None)
    int8 = (f" and the INT8 model (`nnunet-prune export --runtime openvino --int8`, kept only within "
            f"{s.max_dice_drop} of the float Dice on the validation cases; its Dice measured on its own predictions "
            f"like the float one's)") if s.int8 else ""
    seeds = s.seed_list()
    if len(seeds) > 1:
        source += (f". Dice cells: mean ± sample standard deviation over {len(seeds)} seeds ({seeds[0]}-"
                   f"{seeds[-1]}; every other number: the mean); a difference within about two standard "
                   f"deviations is noise")
    else:
        source += f"; seed {seeds[0]} (--seeds N repeats every method with N seeds and gives mean ± spread)"
    return (f"Budget: {s.epochs} epochs x {s.iterations} iterations ({s.val_iterations} validation iterations per "
            f"epoch) for every method, folds {', '.join(map(str, s.folds))}, device {s.device}. Dice: {source}. "
            f"Latency: one patch, batch 1, median of at least {s.repeats} runs (more until the median is known) on "
            f"{threads} CPU thread(s); 'fastest runtime' is the fastest of PyTorch and the installed deployment "
            f"runtimes{int8}; '(n/c)': timed on a busy machine or runs that did not agree, not comparable (why: "
            f"notes). Sorted by MACs.")


def _table(s: BenchmarkSettings, rows: Sequence[MethodResult], classes: Sequence[str],
           base: MethodResult | None) -> list[str]:
    """The Markdown table: a row per method (a failed one says why), GPU columns on CUDA."""
    head = ["method", "parameters", "GMAC/patch", "MACs vs dense", "checkpoint", "CPU ms (PyTorch)",
            "fastest runtime", "Dice", *[f"Dice {c}" for c in classes], "train"]
    if s.int8:
        head[7:7] = ["INT8 ms (OpenVINO)", "INT8 Dice"]
    if s.device == "cuda":
        head[7:7] = ["GPU ms (eager / compiled bf16)", "GPU peak MB"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for r in rows:
        if r.status != "ok":
            lines.append(f"| {r.label} | {r.status}: {(r.error or '').replace('|', '/')[:300]} |"
                         + " |" * (len(head) - 2))
            continue
        params = f"{r.parameters / 1e6:.3f} M" if r.parameters is not None else "-"
        if r.nonzero_parameters is not None and r.parameters and r.nonzero_parameters < 0.99 * r.parameters:
            params += f" ({1 - r.nonzero_parameters / r.parameters:.0%} zero)"
        cells = [r.label, params, _fmt(r.macs and r.macs / 1e9, "{:.3f}", "-"),
                 "-" if base is None or r is base else f"{r.macs / base.macs:.2f}x",
                 _fmt(r.checkpoint_mb, "{:.1f} MB", "-"), *_latency_cells(r), format_dice(r.dice, r.dice_spread),
                 *[format_dice(r.dice_per_class.get(c), r.dice_per_class_spread.get(c)) for c in classes],
                 f"{r.train_seconds:.0f} s"]
        if s.int8:
            cells[7:7] = [_fmt(r.int8_ms, "{:.1f}", "-"), format_dice(r.int8_dice, None) if r.int8_dice is not None
                          else "refused" if r.int8_error else "-"]
        if s.device == "cuda":
            cells[7:7] = [f"{_fmt(r.gpu_ms, '{:.2f}', '-')} / {_fmt(r.gpu_ms_compiled, '{:.2f}', '-')}",
                          _fmt(r.gpu_peak_mb, "{:.0f}", "-")]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _notes(rows: Sequence[MethodResult]) -> list[str]:
    """Per-class Dice in words, rows where nothing was removed, the magnitude tau, each row's notes and map."""
    notes = class_notes({r.label: r.dice_per_class for r in rows if r.status == "ok"},
                        advice="train longer (--epochs)")
    for r in rows:
        prunes = r.name != "magnitude" and r.trainer != DISTILL_TRAINER  # the dense student prunes nothing
        if r.status == "ok" and r.initial_parameters and r.parameters and prunes \
                and r.parameters >= r.initial_parameters:
            notes.append(f"{r.label}: nothing was removed within this budget (its schedule did not reach a pruning "
                         f"step); its row is the unpruned network.")
        if r.tau is not None:
            notes.append(f"{r.label}: tau = {r.tau:.4g} from the sweep (magnitude_sweep/summary.md); zeros shrink a "
                         f"compressed checkpoint, not MACs or latency.")
        if r.int8_error:
            notes.append(f"{r.label}: no INT8 model: {r.int8_error}")
        notes += [f"{r.label}: {n}" for n in r.notes]
        if r.map_png:
            notes.append(f"{r.label}: map of what was pruned: [{r.map_png}]({r.map_png})")
    return notes


def _teacher_notes(s: BenchmarkSettings, rows: Sequence[MethodResult]) -> list[str]:
    """Where the distilled rows' teacher came from; with several folds and no test set, that their validation Dice
    is optimistic (the teacher averages every trained dense fold, so it saw each student fold's validation cases)."""
    if not any(r.distilled for r in rows):
        return []
    notes = ["'+ distillation' rows: their method (CSV: student_of) trained with the same budget and seed, learning "
             f"from the dense model of the same seed ({TEACHER_VAR} = its folder; by default its trained folds' logits "
             "averaged)."]
    if not s.test_images and len(s.folds) > 1:
        notes.append("'+ distillation' rows are scored on the folds' validation cases, which the teacher's other "
                     "folds trained on (when it averages them): their Dice may be optimistic; give --test-images / "
                     "--test-labels to compare them fairly.")
    return notes


def _latency_cells(r: MethodResult) -> list[str]:
    """The 'CPU ms (PyTorch)' and 'fastest runtime' cells: '46.1' and 'openvino 26.6 ms', or, where the timings
    are not comparable, '46.1 (n/c)' and 'n/c' (no "fastest" from timings that do not count)."""
    from nnunet_prune.core.timing import NOT_COMPARABLE

    if r.latency_not_comparable:
        return [_fmt(r.cpu_ms, "{:.1f} (" + NOT_COMPARABLE + ")", "-"), NOT_COMPARABLE]
    return [_fmt(r.cpu_ms, "{:.1f}", "-"),
            f"{r.fastest_runtime} {r.fastest_ms:.1f} ms" if r.fastest_runtime else "-"]


def _fastest_csv(r: MethodResult) -> list[str]:
    """The CSV's fastest_runtime and fastest_ms, empty where the timings are not comparable."""
    if r.latency_not_comparable:
        return ["", ""]
    return [r.fastest_runtime or "", _fmt(r.fastest_ms, "{}")]
