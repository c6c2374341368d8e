"""End-to-end prediction time: stock ``nnUNetv2_predict_from_modelfolder`` on a folder of images, per runtime.

Per-patch latency says how fast the network is; users wait for the whole prediction: preprocessing, the sliding
window (patches overlapping by the step size, each one mirrored up to 8 times with test-time augmentation), every
fold of the ensemble, resampling and writing the segmentations. :func:`measure_end_to_end` runs exactly that, as a
user would, once per runtime: the model folder itself for PyTorch, and for each runtime of
:mod:`nnunet_prune.networks.runtime` the folder exported with ``--runtime`` into a temporary folder. Each run is a
subprocess timed from start to end (Python start-up and imports included, as for a user), with the peak resident
memory of its largest process, and its segmentations are compared with PyTorch's voxel by voxel. Each run is one
run (minutes; not repeated): the load check of :mod:`nnunet_prune.core.timing` (the cores other processes used while it
ran) is its guard, and a run on a busy machine is not comparable ('n/c' in place of its "x faster").
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from nnunet_prune import NnUNetPruneError
from nnunet_prune.core.timing import NOT_COMPARABLE, SystemLoad, busy_reason
from nnunet_prune.nnunet.modelfolder import ModelFolder

#: the stock command that is timed
COMMAND = "nnUNetv2_predict_from_modelfolder"
_RSS = "nnunet-prune peak RSS kB: "
#: runs the command and prints the peak RSS (kB) of its largest process on stderr (Linux/macOS getrusage)
_WRAPPER = ("import resource, subprocess, sys\n"
            "rc = subprocess.call(sys.argv[1:])\n"
            "print('" + _RSS + "%d' % resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n"
            "sys.exit(rc)\n")


@dataclass
class EndToEnd:
    """One timed ``nnUNetv2_predict_from_modelfolder`` run of a model folder's folds (an ensemble when several)
    through one runtime: wall seconds for all ``images`` and per image, the peak resident memory (MB) of its largest
    process, and how many voxels of its segmentations differ from PyTorch's (None for PyTorch itself).
    ``not_comparable``: why its time is not comparable (a busy machine), None when it is."""

    model: str
    runtime: str
    images: int
    folds: list
    tta: bool
    step_size: float
    device: str
    seconds: float
    peak_rss_mb: float | None = None
    voxels_differing: int | None = None
    voxels: int | None = None
    error: str | None = None
    not_comparable: str | None = None
    #: with ``stages``: the same prediction stage by stage (:class:`nnunet_prune.tools.report.stages.StageTiming`)
    stages: object = None

    @property
    def seconds_per_image(self) -> float:
        """Wall seconds per image."""
        return self.seconds / max(self.images, 1)


def image_cases(folder: str | os.PathLike, file_ending: str) -> list[str]:
    """The case identifiers of nnU-Net's input files (``CASE_0000<ending>``) in ``folder``.

    Raises:
        NnUNetPruneError: the folder is missing or holds no such file.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise NnUNetPruneError(f"--predict {folder}: no such folder (give the folder of images to segment, named "
                               f"as for nnUNetv2_predict: CASE_0000{file_ending}).")
    cases = sorted({p.name[: -len(file_ending) - 5] for p in folder.glob(f"*_0000{file_ending}")})
    if not cases:
        raise NnUNetPruneError(f"--predict {folder}: no image named CASE_0000{file_ending} (the dataset's file "
                               f"ending) in it.")
    return cases


def _segmentations(folder: Path, file_ending: str) -> dict:
    import SimpleITK as sitk

    return {p.name: sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in sorted(folder.glob(f"*{file_ending}"))}


def _run(model: Path, images: Path, output: Path, folds: Sequence, device: str, step_size: float, tta: bool,
         env: dict, checkpoint: str) -> tuple[float, float | None, str | None, str | None]:
    beside = Path(sys.executable).parent / COMMAND  # (a virtual environment that is not activated)
    command = shutil.which(COMMAND) or (str(beside) if beside.is_file() else COMMAND)
    cmd = [sys.executable, "-c", _WRAPPER, command, "-i", str(images), "-o", str(output), "-m", str(model),
           "-f", *map(str, folds), "-chk", checkpoint, "-device", device, "-step_size", str(step_size),
           "-npp", "1", "-nps", "1",
           "--disable_progress_bar", *([] if tta else ["--disable_tta"])]
    load = SystemLoad(min_window=0.0)
    token, start = load.begin(), time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    busy = busy_reason(load.end(token), load.cores, load.cores)  # stock prediction uses every core
    rss = [line for line in proc.stderr.splitlines() if line.startswith(_RSS)]
    kilobytes = int(rss[-1][len(_RSS):]) / (1024 if sys.platform == "darwin" else 1) if rss else None  # macOS: bytes
    peak = None if kilobytes is None else kilobytes / 1024
    error = None
    if proc.returncode != 0:
        lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip() and _RSS not in line]
        error = lines[-1][:300] if lines else f"exit code {proc.returncode}"
    return seconds, peak, error, busy


def format_end_to_end(rows: Sequence[EndToEnd]) -> list[str]:
    """Markdown lines: one table row per run, the fastest run of each model marked, and the set-up."""
    if not rows:
        return []
    lines = ["| Model | Runtime | Images | Folds | s total | s / image | vs PyTorch | Peak RSS (MB) "
             "| Voxels differing |",
             "|:---|:---|---:|:---|---:|---:|---:|---:|---:|"]
    for model in dict.fromkeys(r.model for r in rows):
        mine = [r for r in rows if r.model == model]
        ok = [r for r in mine if r.error is None]
        nc = any(r.not_comparable for r in ok)  # no "fastest" and no ratio from a run on a busy machine
        fastest = min(ok, key=lambda r: r.seconds) if ok and not nc else None
        base = next((r.seconds for r in ok if r.runtime == "pytorch"), None)
        for r in mine:
            if r.error is not None:
                lines.append(f"| {r.model} | {r.runtime} | {r.images} | {','.join(map(str, r.folds))} | failed: "
                             f"{r.error.replace('|', '/')} | | | | |")
                continue
            name = f"**{r.runtime}** (fastest)" if r is fastest and len(ok) > 1 else r.runtime
            speed = "-" if base is None or r.runtime == "pytorch" else NOT_COMPARABLE if nc \
                else f"{base / r.seconds:.2f}x faster" if r.seconds < base else f"{r.seconds / base:.2f}x slower"
            diff = "-" if r.voxels_differing is None else f"{r.voxels_differing:,} of {r.voxels:,}"
            rss = "-" if r.peak_rss_mb is None else f"{r.peak_rss_mb:.0f}"
            seconds = f"{r.seconds:.1f}" + (f" ({NOT_COMPARABLE})" if r.not_comparable else "")
            lines.append(f"| {r.model} | {name} | {r.images} | {','.join(map(str, r.folds))} | {seconds} | "
                         f"{r.seconds_per_image:.2f} | {speed} | {rss} | {diff} |")
    r = rows[0]
    lines += ["", f"Stock `{COMMAND}` from start to end (Python start-up, preprocessing, sliding window with step "
                  f"size {r.step_size}, test-time mirroring {'on' if r.tta else 'off'}, every fold listed as one "
                  f"ensemble, resampling, writing) on {r.device}, one subprocess per run, `-npp 1 -nps 1`; peak RSS: "
                  f"the largest process of the run. Voxels differing: the segmentations against PyTorch's. One run "
                  f"each; a run while other processes used the cores is marked '({NOT_COMPARABLE})' and no ratio or "
                  f"fastest run of its model is given."]
    lines += [f"- {r.model}, {r.runtime}: not comparable: {r.not_comparable}" for r in rows if r.not_comparable]
    return lines


def measure_end_to_end(model: ModelFolder, images: str | os.PathLike, runtimes: Sequence[str], *,
                       device: str = "cpu", step_size: float = 0.5, tta: bool = True, label: str | None = None,
                       threads: int | None = None, progress: Callable[[str], None] | None = None,
                       stages: bool = False) -> list[EndToEnd]:
    """Time stock ``nnUNetv2_predict_from_modelfolder`` on every image of ``images`` with the chosen folds of
    ``model``: PyTorch first, then each of ``runtimes`` (exported to a temporary folder with ``nnunet-prune export
    --runtime``, deleted afterwards). ``threads``: the runtimes' thread count (default: theirs). A failed run is
    recorded with its error and does not stop the others.

    Raises:
        NnUNetPruneError: no images, or a step size outside (0, 1].
    """
    from nnunet_prune.networks.runtime import RUNTIMES
    from nnunet_prune.tools.export.folder import ExportOptions, export_model_folder

    if not 0 < step_size <= 1:
        raise NnUNetPruneError(f"--step-size must be in (0, 1] (nnU-Net's default 0.5); got {step_size}.")
    file_ending = model.dataset_json.get("file_ending", ".nii.gz")
    cases = image_cases(images, file_ending)
    label = label or model.path.name
    env = {**os.environ, "nnUNet_compile": "f"}
    rows = []
    with tempfile.TemporaryDirectory(prefix="nnunet_prune_e2e_") as tmp:
        tmp = Path(tmp)
        reference = None
        # an INT8 folder (export --int8) is also timed as it is (a float runtime folder's runtime is an exported row)
        own = f"{model.runtime[0]} int8" if model.int8 else None
        for runtime in ["pytorch", *runtimes, *([own] if own else [])]:
            folder = model.path
            if progress:
                progress(f"{label}: {COMMAND} through {runtime} on {len(cases)} image(s)")
            row = EndToEnd(label, runtime, len(cases), list(model.folds), tta, step_size, device, 0.0)
            try:
                if runtime != own and (runtime != "pytorch" or model.runtime is not None):  # (a runtime folder's
                    # PyTorch baseline is exported too)
                    folder = tmp / f"model_{runtime}"
                    takes_threads = runtime != "pytorch" and "threads" in RUNTIMES[runtime].options
                    export_model_folder(model.path, folder, ExportOptions(
                        folds=model.folds, runtime=runtime, checkpoints=[model.checkpoint_name],
                        runtime_options={"threads": threads} if threads and takes_threads else None))
            except Exception as e:  # e.g. an operator the ONNX exporter lacks: a row, not the end of the report
                row.error = f"export failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                rows.append(row)
                continue
            out = tmp / f"pred_{runtime}"
            row.seconds, row.peak_rss_mb, row.error, row.not_comparable = _run(
                folder, Path(images).expanduser(), out, model.folds, device, step_size, tta, env,
                model.checkpoint_name)
            if stages:
                from nnunet_prune.tools.report.stages import run_stages

                row.stages = run_stages(folder, Path(images).expanduser(), tmp / f"stages_{runtime}", model.folds,
                                        step_size=step_size, tta=tta, device=device, checkpoint=model.checkpoint_name,
                                        label=label, runtime=runtime)
            if row.error is None:
                segs = _segmentations(out, file_ending)
                if runtime == "pytorch":
                    reference = segs
                elif reference is not None and segs.keys() == reference.keys():
                    row.voxels_differing = int(sum((segs[k] != reference[k]).sum() for k in segs))
                    row.voxels = int(sum(v.size for v in segs.values()))
            rows.append(row)
    return rows
