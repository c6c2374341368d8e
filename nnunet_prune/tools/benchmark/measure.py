"""Measuring trained methods in this process: the benchmark's per-method measurement
(:func:`measure_method`: :func:`nnunet_prune.tools.report.efficiency.measure_model_folder` over the folds, the
folds' validation Dice without a test set, the training's warnings, the pruning map) and the demo's
(:func:`measure_interleaved`: every model's size, and CPU latencies timed interleaved). The Dice of predictions
is not measured here: it is nnU-Net's ``summary.json`` (:meth:`Pipeline.predict
<nnunet_prune.tools.benchmark.pipeline.Pipeline.predict>`)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from nnunet_prune.tools.benchmark.rows import MethodResult
from nnunet_prune.tools.benchmark.settings import BenchmarkSettings

#: the pictures of what a method pruned, in a fold folder (the first found is the method's map)
MAP_PICTURES = ("pruning_widths.png", "branch_map.png")


def _mean(values: Sequence[float | None]) -> float | None:
    return (sum(values) / len(values)) if values and None not in values else None


def measure_method(row: MethodResult, trained: Path, measured: Path, s: BenchmarkSettings, *, maps: Path | None,
                   name: str) -> None:
    """Parameters, MACs, checkpoint size, latencies (CPU in PyTorch and ``s.runtimes``; GPU on CUDA) of the folds of
    model folder ``measured``, averaged over the folds, into ``row``; without a Dice from the test set, the mean of
    the folds' validation Dice of the ``trained`` folder; the notes (timing warnings, the training logs'
    warnings), the parameters before pruning (the first fold's records:
    :class:`~nnunet_prune.nnunet.trainers.records.FoldRecords`), and the method's map picture copied to
    ``maps/<name>.png`` (``maps`` None: not copied)."""
    from nnunet_prune.tools.report.efficiency import measure_model_folder

    notes: list[str] = []
    fold_rows = measure_model_folder(measured, s.folds, device=s.device, repeats=s.repeats, warmup=2,
                                     compile=s.device == "cuda", cpu=True, runtimes=s.runtimes, warn=notes.append)
    row.parameters = _mean([r.parameters for r in fold_rows])
    row.nonzero_parameters = _mean([r.nonzero_parameters for r in fold_rows])
    row.macs = _mean([r.macs for r in fold_rows])
    row.checkpoint_mb = _mean([r.checkpoint_bytes / 1e6 for r in fold_rows])
    row.cpu_ms = _mean([r.cpu_ms_eager for r in fold_rows])
    row.threads = fold_rows[0].threads
    runtimes = {k for r in fold_rows for k in r.cpu_latencies()}
    per_runtime = {k: _mean([r.cpu_latencies().get(k) for r in fold_rows]) for k in runtimes}
    per_runtime = {k: v for k, v in per_runtime.items() if v is not None}
    if per_runtime:
        row.fastest_runtime = min(per_runtime, key=per_runtime.get)
        row.fastest_ms = per_runtime[row.fastest_runtime]
    row.latency_not_comparable = next((r.not_comparable() for r in fold_rows if r.not_comparable()), None)
    row.gpu_ms = _mean([r.gpu_ms_eager for r in fold_rows])
    row.gpu_ms_compiled = _mean([r.gpu_ms_compiled for r in fold_rows])  # CUDA graphs + bf16
    row.gpu_peak_mb = _mean([r.gpu_peak_mb for r in fold_rows])
    if row.dice_source is None:  # no test set: the validation of the trained folds
        validation_dice(row, trained, s.folds)
    row.notes = sorted(set(notes) | set(training_warnings(trained, s.folds)))
    from nnunet_prune.nnunet.trainers.records import FoldRecords

    config = FoldRecords(trained / f"fold_{s.folds[0]}").stored_config()
    if config is not None:
        initial = config.get("initial_parameters")
        row.initial_parameters = float(initial) if initial else None
    if maps is not None:
        copy_map(row, trained / f"fold_{s.folds[0]}", maps, name)


def measure_int8(row: MethodResult, int8: Path, s: BenchmarkSettings) -> None:
    """The CPU latency of the INT8 folder ``int8`` (its stored OpenVINO INT8 model, ms per patch, mean over the
    folds) into ``row.int8_ms``; the fastest runtime becomes ``openvino int8`` where it is faster. Nothing without
    the folder (refused: ``row.int8_error`` says why)."""
    from nnunet_prune.tools.report.efficiency import measure_model_folder

    if not (int8 / "plans.json").is_file():
        return
    notes: list[str] = []
    rows = measure_model_folder(int8, s.folds, device="cpu", repeats=s.repeats, warmup=2, compile=False, cpu=True,
                                runtimes=[], warn=notes.append)
    row.int8_ms = _mean([r.cpu_latencies().get("openvino int8") for r in rows])
    if row.int8_ms is not None and (row.fastest_ms is None or row.int8_ms < row.fastest_ms):
        row.fastest_runtime, row.fastest_ms = "openvino int8", row.int8_ms
    row.notes += [f"INT8: {n}" for n in notes]


def measurement_key(s: BenchmarkSettings, measured: Path) -> dict:
    """What a stored measurement of model folder ``measured`` depends on: folds, device, repeats, runtimes, INT8 or
    not, and each fold's checkpoint (size in bytes and modification time: a retrained fold is measured again)."""
    checkpoints = {}
    for fold in s.folds:
        file = Path(measured) / f"fold_{fold}" / "checkpoint_final.pth"
        stat = file.stat() if file.is_file() else None
        checkpoints[str(fold)] = [stat.st_size, stat.st_mtime_ns] if stat else None
    return {"folds": [str(f) for f in s.folds], "device": s.device, "repeats": s.repeats,
            "runtimes": sorted(s.runtimes) if s.runtimes is not None else None, "checkpoints": checkpoints,
            "int8": s.int8}


def stored_measurement(row: MethodResult, file: Path, s: BenchmarkSettings, measured: Path) -> bool:
    """Apply the measurement stored in ``file`` (by :func:`store_measurement`, with the same
    :func:`measurement_key` of model folder ``measured``) to ``row``; False when there is none to reuse."""
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError):
        return False
    if data.get("key") != measurement_key(s, measured):
        return False
    for name, value in data["fields"].items():
        setattr(row, name, value)
    return True


def store_measurement(row: MethodResult, before: dict, file: Path, s: BenchmarkSettings, measured: Path) -> None:
    """Store what a measurement of model folder ``measured`` changed in ``row`` (``before``: ``asdict(row)`` before
    it) in ``file``, with the host it ran on, so that a rerun, or the benchmark collecting its cluster jobs, reuses
    it (a temporary file, then a rename)."""
    import socket

    changed = {k: v for k, v in asdict(row).items() if before.get(k) != v}
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(file.name + ".tmp")
    tmp.write_text(json.dumps({"key": measurement_key(s, measured), "host": socket.gethostname(), "fields": changed},
                              indent=2, default=str))
    tmp.replace(file)


def validation_dice(row: MethodResult, trained: Path, folds: Sequence) -> None:
    """The mean over ``folds`` of the folds' validation Dice (nnU-Net's ``validation/summary.json``; foreground
    mean and per class) into ``row`` (``dice_source`` "validation")."""
    from nnunet_prune.nnunet.modelfolder import ModelFolder
    from nnunet_prune.tools.report.efficiency import read_dice

    folder = ModelFolder.open(trained, folds)
    dices = [read_dice(folder, f) for f in folds]
    row.dice = _mean([d for d, _ in dices])
    classes = dices[0][1] or {}
    row.dice_per_class = {c: _mean([(pc or {}).get(c) for _, pc in dices]) for c in classes}
    row.dice_source = "validation"


def training_warnings(folder: Path, folds: Sequence) -> list[str]:
    """Every ``WARNING:`` line of the folds' training logs, as ``fold F: <warning>`` (at most 300 characters)."""
    out = []
    for fold in folds:
        for log in sorted((folder / f"fold_{fold}").glob("training_log_*.txt")):
            for line in log.read_text(errors="replace").splitlines():
                if "WARNING: " in line:
                    out.append(f"fold {fold}: " + line.split("WARNING: ", 1)[1].strip()[:300])
    return out


def copy_map(row: MethodResult, fold: Path, maps: Path, name: str) -> None:
    """Copy the fold's map of what was pruned (:data:`MAP_PICTURES`) to ``maps/<name>.png``; ``row.map_png`` is
    its path relative to the output folder (``maps``' parent)."""
    for picture in (fold / p for p in MAP_PICTURES):
        if picture.is_file():
            target = maps / f"{name}.png"
            target.parent.mkdir(exist_ok=True)
            shutil.copyfile(picture, target)
            row.map_png = str(target.relative_to(maps.parent))


def measure_interleaved(folders: dict[str, Path], fold=0, repeats: int = 10) -> tuple[dict[str, dict], dict]:
    """The demo's measurement of fold ``fold`` of each model folder (label -> folder): parameters, MACs per patch
    (batch 1), the checkpoint's MB (1e6 bytes), and the CPU latency per patch (ms, batch 1: median, interquartile
    range, why it is not comparable or None) with the models of one patch size timed interleaved (one pass of each
    per round, so that drift hits all alike; at least ``repeats`` rounds, :func:`nnunet_prune.core.latency.
    measure_latencies`). Returns (label -> those numbers, {"threads": CPU threads, "patch_size": the last
    model's patch size})."""
    import torch

    from nnunet_prune.core.latency import measure_latencies
    from nnunet_prune.core.stats import count_macs, count_parameters
    from nnunet_prune.nnunet.modelfolder import ModelFolder

    threads = torch.get_num_threads()
    nets: dict[tuple, dict] = {}  # patch size -> {model: network}: timed together, interleaved
    out: dict[str, dict] = {}
    patch: list[int] = []
    for label, path in folders.items():
        mf = ModelFolder.open(path, [fold])
        net = mf.load_network(fold)
        nets.setdefault(tuple(mf.patch_size), {})[label] = net
        patch = list(mf.patch_size)
        out[label] = {"parameters": count_parameters(net), "macs": count_macs(net, mf.patch_size),
                      "checkpoint_mb": mf.checkpoint_bytes(fold) / 1e6}
    for size, group in nets.items():
        timings = measure_latencies(group, size, "cpu", repeats=repeats, warmup=2, threads=threads)
        for label in group:
            stats = timings.stats.get(label)
            if stats is not None:
                out[label].update(cpu_ms_per_patch=stats.median_ms, cpu_ms_iqr=stats.iqr_ms,
                                  cpu_ms_not_comparable=stats.not_comparable)
    return out, {"threads": threads, "patch_size": patch}
