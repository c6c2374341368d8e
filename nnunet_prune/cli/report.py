"""``nnunet-prune report``: parameters, MACs, latency, memory and Dice of model folders, side by side."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from nnunet_prune import NnUNetPruneError

if TYPE_CHECKING:
    import torch

    from nnunet_prune.nnunet.modelfolder import ModelFolder


def add_parser(sub) -> None:
    """Register the ``nnunet-prune report`` subcommand on ``sub`` (an argparse subparsers object)."""
    p = sub.add_parser(
        "report", help="compare model folders: parameters, MACs, checkpoint size, latency, GPU memory, Dice",
        description="Measure every fold of one or more trained nnU-Net model folders (e.g. the dense baseline first, "
                    "then pruned models) and write report.csv, report.md and dice_vs_macs.png. MACs are exact for one "
                    "patch; latency is the median per patch (batch 1), eager and torch.compile'd; Dice is read from "
                    "fold_k/validation/summary.json. Columns 'vs first' compare with the first folder given.")
    p.add_argument("model_folders", nargs="+", metavar="MODEL_FOLDER",
                   help="nnUNet_results/DatasetXXX_Name/<trainer>__<plans>__<configuration> (or an exported folder)")
    p.add_argument("-f", "--folds", nargs="+", default=None, metavar="FOLD",
                   help="folds to measure in every folder (default: all folds with checkpoint_final.pth)")
    p.add_argument("-o", "--out", default="nnunet_prune_report", metavar="OUT_DIR",
                   help="output folder (default: ./nnunet_prune_report)")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto",
                   help="where to time: cpu, or cuda (GPU and CPU); auto = cuda when available (default)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU threads for the CPU timings (default: PyTorch's default)")
    p.add_argument("--repeats", type=int, default=10, metavar="N",
                   help="timed passes per measurement at least; more until the median is known (default: 10)")
    p.add_argument("--warmup", type=int, default=2, metavar="N", help="untimed passes first (default: 2)")
    p.add_argument("--no-compile", action="store_true",
                   help="skip the torch.compile timings (compiling takes tens of seconds per fold)")
    p.add_argument("--no-cpu", action="store_true", help="with a GPU, skip the CPU timings")
    p.add_argument("--runtimes", nargs="+", default=None, metavar="NAME",
                   help="deployment runtimes to time on the CPU next to PyTorch: onnxruntime, openvino (default: "
                        "every installed one; 'none' for none; install them with pip install "
                        "\"nnunet-prune[deploy]\")")
    p.add_argument("--predict", default=None, metavar="IMAGES_DIR",
                   help="also time stock nnUNetv2_predict_from_modelfolder end to end on these images (named as for "
                        "nnUNetv2_predict), once with PyTorch and once per runtime of --runtimes (on a GPU also "
                        "torch-compile unless --no-compile), the chosen folds as one ensemble; segmentations "
                        "compared with PyTorch's")
    p.add_argument("--step-size", type=float, default=0.5, help="with --predict: sliding-window step size (0.5)")
    p.add_argument("--disable-tta", action="store_true", help="with --predict: no test-time mirroring")
    p.add_argument("--stages", action="store_true",
                   help="with --predict: also run each prediction stage by stage (start-up, read, preprocess, network "
                        "forward, sliding window, resample logits, write, exit) to show where a case's time goes")
    p.add_argument("--settings", nargs="+", default=None, metavar="SETTING",
                   help="also predict each chosen fold's validation cases with stock nnUNetv2_predict_from_modelfolder "
                        "once per setting and score them with nnU-Net's evaluation: tta:STEP (test-time mirroring) "
                        "or notta:STEP (none) with a sliding-window step size, e.g. tta:0.5 (nnU-Net's default) "
                        "notta:0.5 notta:0.75; needs the dataset through nnU-Net's variables")
    p.set_defaults(func=run)


def model_labels(paths: list[Path]) -> list[str]:
    """Short unique labels: the folder name, with its parent's name where two folders share a name."""
    names = [p.name for p in paths]
    labels = [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name for p in paths]
    return [f"{lab} ({i + 1})" if labels.count(lab) > 1 else lab for i, lab in enumerate(labels)]


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def _summary(row) -> str:
    from nnunet_prune.core.timing import NOT_COMPARABLE
    from nnunet_prune.tools.report.efficiency import _latency, _num

    def timed(prefix: str) -> tuple:
        return getattr(row, prefix), getattr(row, prefix + "_iqr"), row.not_comparable(prefix)

    parts = [f"{_num(row.parameters / 1e6)} M params", f"{_num(row.gmacs)} GMAC"]
    for dev, eager, compiled in (("CPU", timed("cpu_ms_eager"), timed("cpu_ms_compiled")),
                                 ("GPU", timed("gpu_ms_eager"), timed("gpu_ms_compiled"))):
        if eager[0] is not None:
            parts.append(f"{dev} {_latency(*eager)} ms"
                         + (f" (compiled {_latency(*compiled)} ms)" if compiled[0] is not None else ""))
    for name, ms in row.cpu_ms_runtimes.items():
        parts.append(f"{name} {_latency(ms, row.cpu_ms_runtimes_iqr.get(name), row.not_comparable(name))} ms")
    if len(row.cpu_latencies()) > 1:  # no "fastest" from timings that do not count
        parts.append(f"fastest {NOT_COMPARABLE if row.cpu_not_comparable() else row.fastest_cpu}")
    if row.gpu_peak_mb is not None:
        parts.append(f"GPU peak {_num(row.gpu_peak_mb)} MB")
    parts.append("Dice " + ("-" if row.dice is None else f"{row.dice:.4f}"))
    return ", ".join(parts)


def check_inputs(args) -> None:
    """What the user can get wrong, checked without importing torch, nnU-Net or a runtime: the numbers, the runtimes
    of ``--runtimes`` (:func:`~nnunet_prune.core.runtime_specs.check_timed_runtimes`), every model folder and its folds
    on the file system (:func:`~nnunet_prune.nnunet.prechecks.model_folder_folds`), ``--predict`` and ``--step-size``.

    Raises:
        NnUNetPruneError: naming the option and what to give.
    """
    from nnunet_prune.core.runtime_specs import check_timed_runtimes
    from nnunet_prune.nnunet.prechecks import check_image_folder, model_folder_folds

    if args.repeats < 1 or args.warmup < 0:
        raise NnUNetPruneError(f"--repeats must be at least 1 and --warmup at least 0 (got {args.repeats}, "
                               f"{args.warmup}).")
    if args.threads is not None and args.threads < 1:
        raise NnUNetPruneError(f"--threads must be at least 1 (got {args.threads}).")
    check_timed_runtimes([] if args.runtimes == ["none"] else args.runtimes)
    for folder in args.model_folders:
        model_folder_folds(folder, args.folds)
    if args.predict is not None:
        if not 0 < args.step_size <= 1:
            raise NnUNetPruneError(f"--step-size must be in (0, 1] (nnU-Net's default 0.5); got {args.step_size}.")
        check_image_folder(args.predict, "--predict")
    elif getattr(args, "stages", False):
        raise NnUNetPruneError("--stages splits a prediction into its stages: give the images with --predict.")
    if getattr(args, "settings", None):
        from nnunet_prune.tools.report.settings import parse_settings

        parse_settings(args.settings)


def run(args) -> int:
    """Measure every chosen fold of the given model folders, one progress line per fold, then print the table and
    write report.csv, report.md and dice_vs_macs.png into ``--out``.

    Arguments, the output folder and every model folder are checked before the first measurement. After Ctrl-C the
    folds measured so far are written before the interrupt propagates.

    Returns:
        the exit code (0 ok; errors raise instead).

    Raises:
        NnUNetPruneError: ``--repeats`` < 1, ``--warmup`` < 0, ``--threads`` < 1, an unknown or missing runtime in
            ``--runtimes``, an unknown ``--device`` or
            ``cuda`` without a GPU, an ``--out`` that is a file or holds report files this command did not write, or a
            model folder that is not valid or has an unsupported architecture.
    """
    check_inputs(args)  # before torch, nnU-Net and the runtimes are imported
    from nnunet_prune.tools.report.efficiency import class_notes, format_table, write_report

    plan = _plan(args)
    _announce(args, plan)
    rows = _measure(args, plan)
    end_to_end = _end_to_end(args, plan) if args.predict is not None else []
    settings = _settings(args, plan) if getattr(args, "settings", None) else []
    print()
    print(format_table(rows))
    for note in class_notes(rows):
        print(f"Note: {note}")
    if settings:
        from nnunet_prune.tools.report.settings import format_settings

        print("\nSettings against Dice (validation cases):\n" + "\n".join(format_settings(settings)[:-2]))
    written = write_report(rows, plan.out, end_to_end, settings)
    print()
    print("Wrote " + ", ".join(str(p) for p in written.values()) + ".")
    if "plot" not in written:
        print("No Dice-vs-MACs plot: no fold has fold_k/validation/summary.json (run nnUNetv2_train ... --val).")
    return 0


@dataclass
class _Plan:
    """What a report measures, checked before the first measurement: the device, the runtimes, the output folder
    and the model folders (opened) with their labels."""

    device: torch.device
    runtimes: list[str]
    out: Path
    folders: list[ModelFolder]
    labels: list[str]


def _plan(args) -> _Plan:
    """Everything the user can get wrong, checked before the first (possibly long) measurement: the device, the
    runtimes, an output that would overwrite a user's file, every model folder, the images of ``--predict``.

    Raises:
        NnUNetPruneError: naming what is wrong.
    """
    from nnunet_prune.core.outputs import check_writable_files
    from nnunet_prune.tools.report.efficiency import (
        OUTPUT_FILES,
        TOOL,
        check_runtimes,
        open_model_folders,
        resolve_device,
    )

    device = resolve_device(args.device)
    runtimes = check_runtimes([] if args.runtimes == ["none"] else args.runtimes)
    out = Path(args.out).expanduser()
    check_writable_files(out, OUTPUT_FILES, TOOL)  # before any measurement: never overwrite a user's file
    folders = open_model_folders(args.model_folders, args.folds)
    if args.predict is not None:
        from nnunet_prune.tools.report.end_to_end import image_cases

        for mf in folders:
            image_cases(args.predict, mf.dataset_json.get("file_ending", ".nii.gz"))
    if getattr(args, "settings", None):
        from nnunet_prune.nnunet.calibration import dataset_folders
        from nnunet_prune.tools.report.settings import PURPOSE

        for mf in folders:  # the dataset of every folder, before the first measurement
            dataset_folders(mf, PURPOSE)
    return _Plan(device, runtimes, out, folders, model_labels([mf.path for mf in folders]))


def _announce(args, plan: _Plan) -> None:
    """One line saying what is measured, how and on what machine; a warning when the machine is busy."""
    import torch

    from nnunet_prune.tools.report.efficiency import busy_machine_warning, load_average

    total = sum(len(mf.folds) for mf in plan.folders)
    threads = args.threads or torch.get_num_threads()
    load = load_average()
    device = plan.device
    print(f"Measuring {total} fold(s) of {len(plan.folders)} model folder(s) on {device.type}"
          f"{'' if args.no_compile else ', eager and compiled'}"
          + (f", {', '.join(plan.runtimes)}" if plan.runtimes and (device.type == "cpu" or not args.no_cpu) else "")
          + f" ({args.repeats} repeats, batch 1, one patch; CPU "
          f"with {threads} thread(s) on {os.cpu_count()} cores"
          + (f", load average {load:.2f}" if load is not None else "") + ").", flush=True)
    busy = busy_machine_warning(threads, load)
    if busy:
        print(f"WARNING: {busy}", file=sys.stderr, flush=True)


def _measure(args, plan: _Plan) -> list:
    """Every chosen fold measured, one progress line each (its summary, then its warnings). After Ctrl-C the folds
    measured so far are written before the interrupt propagates."""
    from nnunet_prune.tools.report.efficiency import measure_model_folder, write_report

    total = sum(len(mf.folds) for mf in plan.folders)
    rows, i = [], 0
    start = time.perf_counter()
    try:
        for mf, label in zip(plan.folders, plan.labels, strict=True):
            for fold in mf.folds:
                i += 1
                elapsed = time.perf_counter() - start
                eta = f"; about {_duration(elapsed / (i - 1) * (total - i + 1))} left" if i > 1 else ""
                print(f"[{i}/{total}] {label} fold {fold}: (patch {'x'.join(map(str, mf.patch_size))}{eta}) ",
                      end="", flush=True)
                pending: list[str] = []
                row, = measure_model_folder(mf, [fold], device=plan.device.type, repeats=args.repeats,
                                            warmup=args.warmup, threads=args.threads, compile=not args.no_compile,
                                            cpu=not args.no_cpu or plan.device.type == "cpu", label=label,
                                            warn=pending.append, runtimes=plan.runtimes)
                print(_summary(row), flush=True)
                for message in pending:
                    print(f"WARNING: {message}", file=sys.stderr, flush=True)
                rows.append(row)
    except KeyboardInterrupt:
        if rows:  # keep what was measured: a long run should not be lost to Ctrl-C
            written = write_report(rows, plan.out)
            print(f"\nInterrupted: wrote the {len(rows)} fold(s) measured so far to {written['markdown'].parent}.",
                  file=sys.stderr)
        raise
    return rows


def _end_to_end(args, plan: _Plan) -> list:
    """``--predict``: stock prediction timed end to end per model folder and runtime, one line per run."""
    from nnunet_prune.tools.report.end_to_end import measure_end_to_end

    e2e_device = "cuda" if plan.device.type == "cuda" else "cpu"
    # on a GPU, compiled PyTorch (CUDA graphs + bf16) is the runtime that matters
    e2e_runtimes = [*plan.runtimes, *(["torch-compile"] if e2e_device == "cuda" and not args.no_compile else [])]
    out = []
    for mf, label in zip(plan.folders, plan.labels, strict=True):
        runs = measure_end_to_end(mf, args.predict, e2e_runtimes, device=e2e_device, step_size=args.step_size,
                                  tta=not args.disable_tta, label=label, threads=args.threads,
                                  progress=lambda m: print(m, flush=True), stages=getattr(args, "stages", False))
        for r in runs:
            print(f"  {r.runtime}: " + (f"failed ({r.error})" if r.error else
                  f"{r.seconds:.1f} s ({r.seconds_per_image:.2f} s per image)"
                  + ("" if r.peak_rss_mb is None else f", peak RSS {r.peak_rss_mb:.0f} MB")
                  + ("" if r.voxels_differing is None else f", {r.voxels_differing} voxels differ from PyTorch")
                  + ("" if r.not_comparable is None else f"; not comparable: {r.not_comparable}")),
                  flush=True)
        out += runs
    return out


def _settings(args, plan: _Plan) -> list:
    """``--settings``: each model folder's validation cases predicted and scored once per setting, one line each."""
    from nnunet_prune.tools.report.settings import measure_settings, parse_settings

    device = "cuda" if plan.device.type == "cuda" else "cpu"
    out = []
    for mf, label in zip(plan.folders, plan.labels, strict=True):
        runs = measure_settings(mf, parse_settings(args.settings), device=device, label=label,
                                progress=lambda m: print(m, flush=True))
        for r in runs:
            print(f"  {r.seconds:.1f} s ({r.seconds_per_case:.2f} s per case), Dice {r.dice:.4f}", flush=True)
        out += runs
    return out
