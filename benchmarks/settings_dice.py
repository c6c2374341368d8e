"""The stock settings users trade against Dice: test-time mirroring and sliding-window step size, per model folder.

For each model folder of ``--folders`` (float, pruned, runtime or INT8 folders; nnU-Net's variables must point at
their dataset), stock ``nnUNetv2_predict_from_modelfolder`` predicts fold ``--fold``'s validation cases once per
setting (``--settings``: ``tta:0.5`` = mirroring on, step 0.5 = nnU-Net's default; ``notta:0.75`` = no mirroring,
step 0.75; ...), timed from start to end as a user waits for it, and nnU-Net's ``nnUNetv2_evaluate_folder`` scores
it against ``gt_segmentations`` (the INT8 export's Dice: absent classes count 1.0). The first folder with the first
setting is the reference of the "x faster" and "Dice change" columns.

Usage (a 2-core CPU: about 15 s per folder and setting on LiTS-117 slabs)::

    . env.sh
    python benchmarks/settings_dice.py --folders DENSE INT8_FOLDER ... --settings tta:0.5 notta:0.5 notta:0.75 \\
        --out settings.md
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

try:
    from benchmarks import common
except ImportError:  # run as a script: benchmarks/ is on sys.path
    import common

from nnunet_prune.nnunet.calibration import dataset_folders, fold_cases, link_images
from nnunet_prune.nnunet.modelfolder import ModelFolder
from nnunet_prune.tools.commands import console_script
from nnunet_prune.tools.export.int8 import case_mean_dice


def parse_setting(text: str) -> tuple[bool, float]:
    mode, step = text.split(":")
    if mode not in ("tta", "notta"):
        raise SystemExit(f"--settings {text}: tta:STEP or notta:STEP")
    return mode == "tta", float(step)


def run(cmd: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{(proc.stdout + proc.stderr)[-2000:]}")
    return time.perf_counter() - start


def measure(folder: str, fold, settings, work: Path) -> list[dict]:
    mf = ModelFolder.open(folder, [fold])
    folders = dataset_folders(mf)
    cases = fold_cases(mf, folders)[0]
    images = link_images(cases, work / f"images_{Path(folder).name}")
    runtime = "pytorch" if mf.runtime is None else " ".join([mf.runtime[0], *mf.runtime[1].values()])
    out = []
    for tta, step in settings:
        pred = work / f"pred_{Path(folder).name}_{int(tta)}_{step}"
        seconds = run([console_script("nnUNetv2_predict_from_modelfolder"), "-i", str(images), "-o", str(pred),
                       "-m", str(mf.path), "-f", str(fold), "-device", "cpu", "-step_size", str(step),
                       "--disable_progress_bar", *([] if tta else ["--disable_tta"])])
        run([console_script("nnUNetv2_evaluate_folder"), str(folders.reference), str(pred), "-djfile",
             str(mf.path / "dataset.json"), "-pfile", str(mf.path / "plans.json"), "-np", "1", "--chill"])
        dice = case_mean_dice(json.loads((pred / "summary.json").read_text()))
        out.append({"model": mf.path.name, "runtime": runtime, "mirroring": tta, "step": step,
                    "seconds": seconds, "cases": len(cases.validation), "dice": dice})
        print(out[-1], flush=True)
    return out


def main(argv=None) -> str:
    p = common.base_parser(__doc__.splitlines()[0], default_repeats=1)
    p.add_argument("--folders", nargs="+", required=True)
    p.add_argument("--fold", default=0, type=int)
    p.add_argument("--settings", nargs="+", default=["tta:0.5", "notta:0.5", "notta:0.75", "notta:1.0"])
    args = p.parse_args(argv)
    common.setup(args)
    settings = [parse_setting(s) for s in args.settings]
    records = []
    with tempfile.TemporaryDirectory(prefix="settings_dice_") as tmp:
        for folder in args.folders:
            records += measure(folder, args.fold, settings, Path(tmp))
    ref = records[0]
    rows = [[r["model"], r["runtime"], "on" if r["mirroring"] else "off", r["step"], f"{r['seconds']:.1f}",
             f"{r['seconds'] / r['cases']:.2f}", f"{ref['seconds'] / r['seconds']:.2f}x", f"{r['dice']:.4f}",
             f"{r['dice'] - ref['dice']:+.4f}"] for r in records]
    headers = ["model", "runtime", "mirroring", "step", "s (stock command)", "s / case", "x faster", "Dice",
               "Dice change"]
    notes = (f"Fold {args.fold}'s validation cases; one stock nnUNetv2_predict_from_modelfolder per row, timed from "
             f"start to end (process start-up included); Dice: nnU-Net's evaluation, mean over classes of the mean "
             f"over cases (absent classes count 1.0). Reference: the first row. {sys.platform}.")
    return common.finish("Settings vs Dice", common.machine_info("cpu"), args, headers, rows, notes, records)


if __name__ == "__main__":
    main()
