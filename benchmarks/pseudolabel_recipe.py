"""The pseudo-label recipe (FLARE) on LiTS-117 with stock commands: a LUnet 16 trained on the labelled slabs only,
against the same LUnet 16 trained on the labelled plus the pseudo-labelled slabs; Dice on a separate test set.

LiTS-117 is cut with ``--test-every 2``: 8 labelled training slabs and 8 held-out slabs, of which the first 4 (in
name order) serve as "unlabelled" (images only) and the other 4 as the test set. The teacher is the dense
``nnUNetTrainerBudget``, folds 0 and 1; ``nnunet-prune pseudo-label`` writes the new dataset; each student trains on
fold ``all`` (every case) with seeds 0..N-1; Dice is ``nnUNetv2_evaluate_folder`` on the 4 test slabs.

Usage (in an empty work folder; about 12 minutes on a 2-core CPU)::

    python benchmarks/pseudolabel_recipe.py --work /tmp/pseudo --seeds 3 --out docs_table.md
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

try:
    from benchmarks import common
except ImportError:  # run as a script: benchmarks/ is on sys.path
    import common

LABELLED, PSEUDO = 118, 119


def run(*cmd, env: dict, log: Path) -> None:
    """Run a console script, its output appended to ``log``; stop with its tail on failure."""
    with open(log, "a") as f:
        f.write(f"\n$ {' '.join(map(str, cmd))}\n")
        f.flush()
        proc = subprocess.run([str(c) for c in cmd], env=env, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed (exit {proc.returncode}); see {log}")


def dice(pred: Path, labels: Path, env: dict, log: Path) -> float:
    """nnU-Net's mean foreground Dice of the predictions in ``pred`` against ``labels``."""
    run("nnUNetv2_evaluate_folder", labels, pred, "-djfile", pred / "dataset.json", "-pfile", pred / "plans.json",
        env=env, log=log)
    return json.loads((pred / "summary.json").read_text())["foreground_mean"]["Dice"]


def _agreements(dataset_json: dict) -> list[float]:
    """The ensemble agreement of each pseudo-labelled case, wherever dataset.json records it."""
    record = dataset_json.get("nnunet_prune_pseudo_labels", {})
    values = record.get("agreement") or dataset_json.get("agreement") or {}
    return [float(v) for v in values.values()] if isinstance(values, dict) else []


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", required=True, help="an empty (or new) work folder")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    raw, pre, res = work / "raw", work / "pre", work / "results"
    env = {**os.environ, "nnUNet_raw": str(raw), "nnUNet_preprocessed": str(pre), "nnUNet_results": str(res),
           "nnUNet_def_n_proc": "2", "nnUNet_n_proc_DA": "0", "nnUNet_compile": "f", "MPLBACKEND": "agg",
           "NNUNET_PRUNE_EPOCHS": str(args.epochs), "NNUNET_PRUNE_ITERS_PER_EPOCH": str(args.iters),
           "NNUNET_PRUNE_VAL_ITERS": "5", "NNUNET_PRUNE_SEED": "0"}
    log = work / "log.txt"
    cli = [sys.executable, "-m", "nnunet_prune.cli.main"]
    if not (raw / "Dataset118_LiTS117").exists():
        run(*cli, "dataset", "lits117", "-d", LABELLED, "--test-every", 2, "--raw", raw, env=env, log=log)
    src = raw / "Dataset118_LiTS117"
    held = sorted(src.glob("imagesTs/*_0000*"))
    unlabelled, test_imgs, test_labels = work / "unlabelled", work / "test_images", work / "test_labels"
    for folder, files in ((unlabelled, held[:len(held) // 2]), (test_imgs, held[len(held) // 2:])):
        folder.mkdir(exist_ok=True)
        for f in files:
            shutil.copy2(f, folder / f.name)
    test_labels.mkdir(exist_ok=True)
    for f in test_imgs.iterdir():
        label = f.name.replace("_0000", "")
        shutil.copy2(src / "labelsTs" / label, test_labels / label)
    for d in (LABELLED,):
        run("nnUNetv2_plan_and_preprocess", "-d", d, "-c", "2d", "-np", 2, "-npfp", 2, env=env, log=log)
    for fold in (0, 1):
        run("nnUNetv2_train", LABELLED, "2d", fold, "-tr", "nnUNetTrainerBudget", "-device", "cpu", env=env, log=log)
    run(*cli, "pseudo-label", "-d", LABELLED, "-c", "2d", "-tr", "nnUNetTrainerBudget", "-i", unlabelled,
        "-o", PSEUDO, "-device", "cpu", env=env, log=log)
    pseudo_json = json.loads(next(raw.glob(f"Dataset{PSEUDO}_*/dataset.json")).read_text())
    for d in (LABELLED, PSEUDO):
        if d == PSEUDO:
            run("nnUNetv2_plan_and_preprocess", "-d", d, "-c", "2d", "-np", 2, "-npfp", 2, env=env, log=log)
        run("nnUNetv2_plan_and_preprocess", "-d", d, "-c", "2d", "-pl", "LUnetPlanner_16", "-np", 2, "-npfp", 2,
            env=env, log=log)
    results: dict[str, list[float]] = {"labelled only": [], "labelled + pseudo-labelled": []}
    for seed in range(args.seeds):
        for name, d in (("labelled only", LABELLED), ("labelled + pseudo-labelled", PSEUDO)):
            trainer = "nnUNetTrainerBudget"
            seed_env = {**env, "NNUNET_PRUNE_SEED": str(seed), "nnUNet_results": str(work / f"results_seed{seed}")}
            run("nnUNetv2_train", d, "2d", "all", "-tr", trainer, "-p", "nnUNetLUnetPlans_16", "-device", "cpu",
                env=seed_env, log=log)
            pred = work / f"pred_{d}_seed{seed}"
            run("nnUNetv2_predict", "-i", test_imgs, "-o", pred, "-d", d, "-c", "2d", "-tr", trainer, "-p",
                "nnUNetLUnetPlans_16", "-f", "all", "-device", "cpu", env=seed_env, log=log)
            results[name].append(dice(pred, test_labels, seed_env, log))
    rows = []
    for name, values in results.items():
        spread = statistics.stdev(values) if len(values) > 1 else float("nan")
        rows.append([name, f"{statistics.mean(values):.3f} ± {spread:.3f}", " ".join(f"{v:.3f}" for v in values)])
    record = pseudo_json["nnunet_prune_pseudo_labels"]
    notes = (f"LiTS-117 2d, 8 labelled slabs + {len(record['pseudo_labelled'])} pseudo-labelled "
             f"(agreement of teacher folds 0 and 1: "
             f"{', '.join(f'{v:.3f}' for v in _agreements(pseudo_json)) or 'see dataset.json'}); "
             f"LUnet 16 (nnUNetTrainerBudget, plans nnUNetLUnetPlans_16, fold all), {args.epochs} epochs x "
             f"{args.iters} iterations, seeds 0..{args.seeds - 1}; Dice: nnUNetv2_evaluate_folder on 4 held-out "
             f"slabs (mean foreground Dice, mean ± sample standard deviation over seeds).")
    args.device, args.threads = "cpu", None
    return common.finish("Pseudo-label recipe on LiTS-117", common.machine_info("cpu"), args,
                         ["training set", "Dice (mean ± sd)", "per seed"], rows, notes)


if __name__ == "__main__":
    main()
