"""Where a full-size CT case's prediction time goes, per model, runtime and stock setting (issue 26).

A CT-sized case (default 512 x 512 x 200 voxels at 0.8 x 0.8 x 2.5 mm) and a model planned for that spacing, made
here from synthetic content (timing does not depend on it), with nnU-Net's own commands in ``--work``:

1. ``data``: two training cases of the full size and one small validation case at the same spacing (so nnU-Net's
   validation at the end of each training stays cheap; the median shape the planner sees is the full size), and
   one full-size test image; ``splits_final.json`` puts the small case in fold 0's validation.
2. ``plan``: stock ``nnUNetv2_plan_and_preprocess -c 3d_fullres`` with nnU-Net's default planner and the
   ``LUnetPlanner``.
3. ``train``: 1 epoch x 2 iterations each (a timing model, its Dice means nothing): the dense default
   (``nnUNetTrainerBudget``), a structured L2 fold at 25 % of the filters (``nnUNetTrainerStructuredL2_oneshot``,
   ``pruning_ratio=0.75``) and LUnet (``nnUNetLUnetPlans``).
4. ``export``: ``nnunet-prune export --runtime openvino`` and ``--runtime openvino --int8`` of each (20 calibration
   patches; ``--max-dice-drop 0.5``, since a 2-iteration model's Dice on one small case bounds nothing: the export's
   log in ``log.txt`` still says the drop it measured).
5. ``measure``: per patch, every folder in its runtime (``nnunet-prune report``'s timing, 2 threads); stage by stage
   on the full-size test image (:func:`nnunet_prune.tools.report.stages.run_stages`) for the ``--staged`` runs; stock
   ``nnUNetv2_predict_from_modelfolder`` for the ``--stock`` runs. Then a table of every model x runtime x setting:
   measured where it was run, else **composed** from measured parts (the same case's read, preprocess, resample,
   write and exit; the runtime's start-up; sliding-window overhead per forward call; forward calls = tiles x mirrors
   from nnU-Net's own ``compute_steps_for_sliding_window`` times the per-patch latency). Rows that were measured
   whole also carry their composed estimate, which checks the composition.

A dense 3d_fullres eager run with mirroring needs hours for such a case on a 2-core CPU: that is why it is composed.

Usage (2-core CPU: about 45 minutes for all steps, 20 of them in ``measure``)::

    python benchmarks/full_size_case.py --work /tmp/fullsize --out full_size.md
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np

try:
    from benchmarks import common
except ImportError:  # run as a script: benchmarks/ is on sys.path
    import common

DATASET = 950
NAME = f"Dataset{DATASET}_FullSizeCT"
CONFIG = "3d_fullres"
#: label -> (trainer, plans, extra environment)
MODELS = {
    "dense": ("nnUNetTrainerBudget", "nnUNetPlans", {}),
    "L2 25 %": ("nnUNetTrainerStructuredL2_oneshot", "nnUNetPlans", {"NNUNET_PRUNE_STRUCTURED": "pruning_ratio=0.75"}),
    "LUnet": ("nnUNetTrainerBudget", "nnUNetLUnetPlans", {}),
}
RUNTIMES = ("pytorch", "openvino", "openvino int8")
SETTINGS = ((True, 0.5), (True, 0.75), (False, 0.5), (False, 0.75))


def environment(work: Path) -> dict:
    return {**os.environ, "nnUNet_raw": str(work / "raw"), "nnUNet_preprocessed": str(work / "preprocessed"),
            "nnUNet_results": str(work / "results"), "nnUNet_def_n_proc": "2", "nnUNet_compile": "f",
            "NNUNET_PRUNE_EPOCHS": "1", "NNUNET_PRUNE_ITERS_PER_EPOCH": "2", "NNUNET_PRUNE_VAL_ITERS": "1"}


def run(cmd: list[str], env: dict, log: Path) -> float:
    start = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        proc = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {proc.returncode}); see {log}")
    return time.perf_counter() - start


def phantom(shape: tuple[int, int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like volume (z, y, x) in HU, int16: air, an elliptic body with soft-tissue noise, an ellipsoid organ
    (label 1) brighter than the tissue around it."""
    rng = np.random.default_rng(seed)
    z, y, x = (np.linspace(-1, 1, n, dtype=np.float32) for n in shape)
    body = (y[:, None] / 0.75) ** 2 + (x[None, :] / 0.9) ** 2 < 1
    image = np.where(body[None], np.float32(40), np.float32(-1000)) + rng.normal(0, 15, shape).astype(np.float32)
    c = rng.uniform(-0.2, 0.2, 3)
    organ = (((z[:, None, None] - c[0]) / 0.5) ** 2 + ((y[None, :, None] - c[1]) / 0.3) ** 2
             + ((x[None, None, :] - c[2]) / 0.35) ** 2) < 1
    image[organ] += 60
    return image.astype(np.int16), organ.astype(np.uint8)


def make_data(work: Path, shape: tuple[int, int, int], spacing: tuple[float, float, float], log: Path) -> None:
    import SimpleITK as sitk

    raw = work / "raw" / NAME
    if (raw / "dataset.json").is_file():
        return
    small = (min(shape[0], 40), min(shape[1], 160), min(shape[2], 160))
    cases = {"imagesTr/ct_000": shape, "imagesTr/ct_001": shape, "imagesTr/ct_002": small, "imagesTs/ct_100": shape}
    for i, (name, s) in enumerate(cases.items()):
        image, label = phantom(s, i)
        for array, path in ((image, raw / f"{name}_0000.nii.gz"),
                            (label, raw / (name.replace("images", "labels") + ".nii.gz"))):
            if path.parent.name == "labelsTs":
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            img = sitk.GetImageFromArray(array)
            img.SetSpacing(tuple(reversed(spacing)))  # SimpleITK: x, y, z
            sitk.WriteImage(img, str(path), useCompression=True)
    (raw / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {"background": 0, "organ": 1}, "numTraining": 3,
        "file_ending": ".nii.gz"}, indent=1))
    with open(log, "a") as f:
        f.write(f"data: {cases} at spacing {spacing} mm (z, y, x)\n")


def plan(work: Path, env: dict, log: Path) -> None:
    pre = work / "preprocessed" / NAME
    for planner, plans in (("ExperimentPlanner", "nnUNetPlans"), ("LUnetPlanner", "nnUNetLUnetPlans")):
        if not (pre / f"{plans}.json").is_file():
            run(["nnUNetv2_plan_and_preprocess", "-d", str(DATASET), "-c", CONFIG, "-pl", planner, "-np", "2",
                 "-npfp", "2"], env, log)
    (pre / "splits_final.json").write_text(json.dumps([{"train": ["ct_000", "ct_001"], "val": ["ct_002"]}]))


def model_folder(work: Path, label: str) -> Path:
    trainer, plans, _ = MODELS[label]
    return work / "results" / NAME / f"{trainer}__{plans}__{CONFIG}"


def train(work: Path, env: dict, log: Path) -> None:
    for label, (trainer, plans, extra) in MODELS.items():
        if not (model_folder(work, label) / "fold_0" / "checkpoint_final.pth").is_file():
            seconds = run(["nnUNetv2_train", str(DATASET), CONFIG, "0", "-tr", trainer, "-p", plans, "-device",
                           "cpu"], {**env, "nnUNet_n_proc_DA": "0", **extra}, log)
            with open(log, "a") as f:
                f.write(f"trained {label} in {seconds:.0f} s\n")


def export_folder(work: Path, label: str, runtime: str) -> Path:
    if runtime == "pytorch":
        return model_folder(work, label)
    return work / "exports" / f"{_slug(label)}_{runtime.replace(' ', '_')}"


def export(work: Path, env: dict, log: Path, calibration_patches: int) -> None:
    for label in MODELS:
        for runtime in RUNTIMES[1:]:
            out = export_folder(work, label, runtime)
            if (out / "fold_0").is_dir():
                continue
            int8 = (["--int8", "--max-dice-drop", "0.5", "--calibration-patches", str(calibration_patches)]
                    if runtime.endswith("int8") else [])
            run(["nnunet-prune", "export", str(model_folder(work, label)), "-o", str(out), "-f", "0", "--runtime",
                 "openvino", "--threads", "2", *int8], env, log)


def per_patch(work: Path) -> dict:
    """(label, runtime) -> median ms per patch (batch 1, 2 threads), plus (label, 'GMACs') and (label, 'params')."""
    from nnunet_prune.tools.report.efficiency import measure_model_folder

    cache = work / "per_patch.json"  # (reused by a rerun: delete it to time again)
    if cache.is_file():
        return {tuple(k.split("|")): v for k, v in json.loads(cache.read_text()).items()}
    out = {}
    for label in MODELS:
        row = measure_model_folder(model_folder(work, label), [0], runtimes=["openvino"], compile=False, repeats=3,
                                   warmup=1, threads=2, cpu=True)[0]
        out[label, "pytorch"], out[label, "openvino"] = row.cpu_ms_eager, row.cpu_ms_runtimes.get("openvino")
        out[label, "GMACs"], out[label, "params"] = row.macs / 1e9, row.parameters / 1e6
        q = measure_model_folder(export_folder(work, label, "openvino int8"), [0], runtimes=[], compile=False,
                                 repeats=3, warmup=1, threads=2)[0]
        out[label, "openvino int8"] = q.cpu_ms_runtimes.get("openvino int8")
        print(f"per patch: {label}: " + ", ".join(f"{r} {out[label, r]:.0f} ms" for r in RUNTIMES), flush=True)
    cache.write_text(json.dumps({"|".join(k): v for k, v in out.items()}))
    return out


def tiles_and_mirrors(work: Path, label: str, shape, spacing, step: float) -> tuple[int, int]:
    """nnU-Net's sliding-window tiles of the test image for ``step``, and the mirrored copies per tile."""
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window

    from nnunet_prune.nnunet.modelfolder import ModelFolder

    mf = ModelFolder.open(model_folder(work, label), [0])
    target = mf.plans["configurations"][CONFIG]["spacing"]
    patch = mf.patch_size
    size = [max(round(n * s / t), p) for n, s, t, p in zip(shape, spacing, target, patch)]
    steps = compute_steps_for_sliding_window(size, patch, step)
    axes = mf.first_checkpoint.get("inference_allowed_mirroring_axes") or ()
    return int(np.prod([len(x) for x in steps])), 2 ** len(axes)


def stock_seconds(folder: Path, images: Path, out: Path, tta: bool, step: float, env: dict, log: Path) -> float:
    return run(["nnUNetv2_predict_from_modelfolder", "-i", str(images), "-o", str(out), "-m", str(folder), "-f", "0",
                "-device", "cpu", "-step_size", str(step), "-npp", "1", "-nps", "1", "--disable_progress_bar",
                *([] if tta else ["--disable_tta"])], env, log)


def compose(row: dict, staged: list) -> float:
    """Seconds of a run composed of measured parts (module docstring)."""
    def median(values):
        return common.median(values) if values else 0.0

    done = [r for _, r in staged if r.error is None]
    same = [r for r in done if r.runtime == row["runtime"]] or done
    fixed = median([sum(r.seconds[k] for k in ("read", "preprocess", "resample logits", "write", "exit"))
                    for r in done])
    per_call = median([r.seconds["sliding window"] / r.forward_calls for r in done if r.tta == row["tta"]]
                      or [r.seconds["sliding window"] / r.forward_calls for r in done])
    return median([r.seconds["start-up"] for r in same]) + fixed + row["calls"] * (row["ms"] / 1000 + per_call)


def measure(work: Path, env: dict, shape, spacing, max_staged: float, max_stock: float, log: Path) -> list[dict]:
    """Every model x runtime x setting: per-patch ms, tiles, forward calls; staged (and stock) runs where the
    network's estimated seconds fit ``max_staged`` (``max_stock``); composed seconds for all."""
    from nnunet_prune.tools.report.stages import run_stages

    os.environ.update(env)
    images = work / "raw" / NAME / "imagesTs"
    ms = per_patch(work)
    rows = []
    for label in MODELS:
        for runtime in RUNTIMES:
            for tta, step in SETTINGS:
                tiles, mirrors = tiles_and_mirrors(work, label, shape, spacing, step)
                rows.append({"label": label, "runtime": runtime, "tta": tta, "step": step, "tiles": tiles,
                             "calls": tiles * (mirrors if tta else 1), "ms": ms[label, runtime],
                             "GMACs": ms[label, "GMACs"], "params": ms[label, "params"]})
    staged = []
    for row in sorted(rows, key=lambda r: r["calls"] * r["ms"]):
        estimate = row["calls"] * row["ms"] / 1000
        if estimate > max_staged:
            continue
        folder, name = export_folder(work, row["label"], row["runtime"]), run_name(row)
        print(f"staged: {name} (network about {estimate:.0f} s)", flush=True)
        row["staged"] = run_stages(folder, images, work / "pred" / f"staged_{name}", [0], step_size=row["step"],
                                   tta=row["tta"], label=row["label"], runtime=row["runtime"])
        if row["staged"].error is None:
            staged.append((row, row["staged"]))
        else:
            print(f"  failed: {row['staged'].error}", flush=True)
        if estimate <= max_stock:
            row["stock"] = stock_seconds(folder, images, work / "pred" / f"stock_{name}", row["tta"], row["step"],
                                         env, log)
            print(f"  stock nnUNetv2_predict_from_modelfolder: {row['stock']:.1f} s", flush=True)
    for row in rows:
        row["composed"] = compose(row, staged)
        row["seconds"] = row["staged"].wall_seconds if row.get("staged") and not row["staged"].error else \
            row["composed"]
    return rows


def run_name(row: dict) -> str:
    return f"{_slug(row['label'])}_{row['runtime'].replace(' ', '_')}_{'tta' if row['tta'] else 'notta'}_{row['step']}"


def _slug(label: str) -> str:
    """A model label as a file name: 'L2 25 %' -> 'L225'."""
    return label.replace(" ", "").replace("%", "")


def tables(rows: list[dict], shape, spacing) -> str:
    from nnunet_prune.tools.report.stages import format_stages

    ref = next(r for r in rows if r["label"] == "dense" and r["runtime"] == "pytorch" and r["tta"]
               and r["step"] == 0.5)
    lines = [f"Full-size case: {shape[2]} x {shape[1]} x {shape[0]} voxels (x, y, z) at {spacing[2]} x {spacing[1]} "
             f"x {spacing[0]} mm, 3d_fullres; {common.cpu_model()}, no GPU.",
             "", "### Per patch (batch 1, 2 threads, median of 3)", "",
             "| model | params (M) | GMACs | PyTorch ms | OpenVINO ms | OpenVINO INT8 ms | INT8 vs OpenVINO |",
             "|:---|---:|---:|---:|---:|---:|---:|"]
    for label in MODELS:
        r = {x["runtime"]: x for x in rows if x["label"] == label}
        lines.append(f"| {label} | {r['pytorch']['params']:.2f} | {r['pytorch']['GMACs']:.1f} | "
                     f"{r['pytorch']['ms']:.0f} | {r['openvino']['ms']:.0f} | {r['openvino int8']['ms']:.0f} | "
                     f"{r['openvino']['ms'] / r['openvino int8']['ms']:.2f}x |")
    lines += ["", "### Per case", "",
              "| model | runtime | mirroring | step | tiles | forward calls | s per case | how | composed s | "
              "stock command s | x faster than dense eager default |", "|:---|:---|:---|---:|" + "---:|" * 3 +
              ":---|---:|---:|---:|"]
    for r in rows:
        how = "measured (staged)" if r.get("staged") and not r["staged"].error else "composed"
        stock = f"{r['stock']:.1f}" if "stock" in r else "-"
        lines.append(f"| {r['label']} | {r['runtime']} | {'on' if r['tta'] else 'off'} | {r['step']} | {r['tiles']} |"
                     f" {r['calls']} | {r['seconds']:.1f} | {how} | {r['composed']:.1f} | {stock} | "
                     f"{ref['seconds'] / r['seconds']:.1f}x |")
    lines += ["", "### Pruning gain end to end against the network's gain (mirroring on, step 0.5)", "",
              "| model | runtime | network gain (ms per patch) | end-to-end gain (s per case) | end-to-end / network |",
              "|:---|:---|---:|---:|---:|"]
    for runtime in RUNTIMES:
        dense = next(r for r in rows if r["label"] == "dense" and r["runtime"] == runtime and r["tta"]
                     and r["step"] == 0.5)
        for r in rows:
            if r["label"] != "dense" and r["runtime"] == runtime and r["tta"] and r["step"] == 0.5:
                net, case = dense["ms"] / r["ms"], dense["seconds"] / r["seconds"]
                lines.append(f"| {r['label']} | {runtime} | {net:.2f}x | {case:.2f}x | {case / net:.2f} |")
    for tta, step in SETTINGS:
        group = [r["staged"] for r in rows if r.get("staged") and r["tta"] == tta and r["step"] == step]
        if group:
            lines += ["", f"### Stages: mirroring {'on' if tta else 'off'}, step {step}", "", *format_stages(group)]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, required=True, help="working folder (nnU-Net's three folders go here)")
    p.add_argument("--shape", type=int, nargs=3, default=[200, 512, 512], help="z y x voxels")
    p.add_argument("--spacing", type=float, nargs=3, default=[2.5, 0.8, 0.8], help="z y x mm")
    p.add_argument("--steps", nargs="+", default=["data", "plan", "train", "export", "measure"])
    p.add_argument("--calibration-patches", type=int, default=20)
    p.add_argument("--out", type=Path, help="write the tables here (markdown)")
    p.add_argument("--max-staged", type=float, default=240,
                   help="run a setting stage by stage when its network needs at most this many seconds (estimated)")
    p.add_argument("--max-stock", type=float, default=60,
                   help="also time stock nnUNetv2_predict_from_modelfolder for staged runs up to this many seconds")
    a = p.parse_args(argv)
    a.work.mkdir(parents=True, exist_ok=True)
    env, log = environment(a.work), a.work / "log.txt"
    if "data" in a.steps:
        make_data(a.work, tuple(a.shape), tuple(a.spacing), log)
    if "plan" in a.steps:
        plan(a.work, env, log)
    if "train" in a.steps:
        train(a.work, env, log)
    if "export" in a.steps:
        export(a.work, env, log, a.calibration_patches)
    if "measure" in a.steps:
        rows = measure(a.work, env, a.shape, a.spacing, a.max_staged, a.max_stock, log)
        text = tables(rows, a.shape, a.spacing)
        print(text)
        if a.out:
            a.out.write_text(text)


if __name__ == "__main__":
    main()
