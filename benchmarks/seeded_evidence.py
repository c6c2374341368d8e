"""Seeded evidence that a refactor changes no decision and no number.

Runs, in one fresh nnU-Net folder tree (``--work``), on the synthetic 2D phantom with fixed seeds:

1. a short ``nnUNetTrainerSauron`` fold (thresholds high from the first epoch, so channels go every epoch),
2. ``nnUNetTrainerMagnitude_tau005`` on a dense ``nnUNetTrainerBudget`` fold,
3. ``nnunet-prune sweep`` of that dense fold on a fixed tau grid,
4. ``nnUNetTrainerSTAMP`` with a forced schedule (a step of 20 % of the channels after epochs 0 and 1),
5. ``nnUNetTrainerStructuredL2_iterative`` from the dense fold (steps of 20 % to half the filters),
6. ``nnUNetTrainerPSPSeg`` on ``PSPSegPlanner_S`` plans with a forced schedule (branches masked and deleted),

and writes a digest (per-epoch removed channels / branches, widths, losses, each method's scalars, sparsities,
proxy Dice per tau, a checksum of every final weight) to ``--out``. Run it on two commits with the same ``--work``
data (dataset and plans are made once) and compare the two digests with ``--compare A B``: they must be equal
(floats to 1e-6 relative).

    python benchmarks/seeded_evidence.py --work /tmp/evidence --tag before --out before.json
    python benchmarks/seeded_evidence.py --compare before.json after.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path


def seed_everything(seed: int = 0) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    # unseeded generators (Sauron's reference channels) become seeded ones, in creation order
    base = np.random.default_rng
    counter = iter(range(seed * 1000, seed * 1000 + 10**6))
    np.random.default_rng = lambda s=None: base(next(counter) if s is None else s)


def run(cmd: list[str], env: dict) -> None:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


def checksum(state: dict) -> dict:
    import torch

    return {k: [list(v.shape), round(float(v.double().abs().sum()), 6)] for k, v in state.items()
            if torch.is_tensor(v)}


def train(trainer_name: str, fold: int, extra_env: dict, plans: str = "nnUNetPlans") -> Path:
    """One fold trained in this process by nnU-Net's own run_training (seeded), with validation."""
    saved = {k: os.environ.get(k) for k in extra_env}
    os.environ.update(extra_env)
    seed_everything(0)
    import torch
    from nnunetv2.run.run_training import run_training

    run_training("601", "2d", fold, trainer_name, plans, device=torch.device("cpu"))
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k)
        else:
            os.environ[k] = v
    results = Path(os.environ["nnUNet_results"])
    return next(results.glob("Dataset601_*")) / f"{trainer_name}__{plans}__2d"


def method_digest(folder: Path, keys: tuple[str, ...]) -> dict:
    """A pruning fold's per-epoch record (``keys`` of pruning_history.json), final weights and validation Dice."""
    import torch

    hist = json.loads((folder / "fold_0" / "pruning_history.json").read_text())
    return {
        "epochs": [{k: r.get(k) for k in keys} for r in hist["epochs"]],
        "final_weights": checksum(torch.load(folder / "fold_0" / "checkpoint_final.pth", map_location="cpu",
                                             weights_only=False)["network_weights"]),
        "validation": json.loads((folder / "fold_0" / "validation" / "summary.json").read_text())["foreground_mean"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path)
    ap.add_argument("--tag", default="run")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--compare", nargs=2, type=Path)
    args = ap.parse_args()
    if args.compare:
        sys.exit(compare(*args.compare))
    work = args.work.resolve()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("nnUNet_", "NNUNET_PRUNE_"))
           or k == "nnUNet_extTrainer"}  # set by the start-up hook: nnU-Net finds this package's trainers there
    env.update(nnUNet_raw=str(work / "raw"), nnUNet_preprocessed=str(work / "preprocessed"),
               nnUNet_results=str(work / f"results_{args.tag}"), nnUNet_def_n_proc="2", nnUNet_compile="f",
               MPLBACKEND="agg")
    if not (work / "preprocessed" / "Dataset601_Synthetic2D" / "nnUNetPlans.json").is_file():
        run([sys.executable, "-m", "nnunet_prune.cli.main", "dataset", "synthetic", "-d", "601", "--cases", "10",
             "--test-cases", "3", "--size", "32"], env)
        run([shutil_which("nnUNetv2_plan_and_preprocess"), "-d", "601", "-c", "2d", "-np", "2", "-npfp", "2"], env)
    if not (work / "preprocessed" / "Dataset601_Synthetic2D" / "nnUNetPSPSegPlans_S.json").is_file():
        run([shutil_which("nnUNetv2_plan_and_preprocess"), "-d", "601", "-c", "2d", "-pl", "PSPSegPlanner_S",
             "-np", "2", "-npfp", "2"], env)
    # the trainers seed themselves too (after nnU-Net's __init__, so what a version draws before training, e.g. a
    # network built to check a dense start, does not shift the training's random stream)
    env.update(nnUNet_n_proc_DA="0", NNUNET_PRUNE_EPOCHS="3", NNUNET_PRUNE_ITERS_PER_EPOCH="4",
               NNUNET_PRUNE_VAL_ITERS="2", NNUNET_PRUNE_SEED="0")
    os.environ.clear()
    os.environ.update(env)
    digest: dict = {}
    import torch

    sauron = train("nnUNetTrainerSauron", 0,
                   {"NNUNET_PRUNE_SAURON": "tau_init=0.6,tau_max=0.9,kappa=2,rho=1,stat_batches=2"})
    hist = json.loads((sauron / "fold_0" / "pruning_history.json").read_text())
    digest["sauron"] = {
        "epochs": [{k: r[k] for k in ("widths", "removed", "num_parameters", "macs", "train_loss", "val_loss",
                                      "delta_opt", "sauron_tau")} for r in hist["epochs"]],
        "final_weights": checksum(torch.load(sauron / "fold_0" / "checkpoint_final.pth", map_location="cpu",
                                             weights_only=False)["network_weights"]),
        "validation": json.loads((sauron / "fold_0" / "validation" / "summary.json").read_text())["foreground_mean"],
    }
    dense = train("nnUNetTrainerBudget", 0, {})
    mag = train("nnUNetTrainerMagnitude_tau005", 0, {"NNUNET_PRUNE_DENSE_MODEL": str(dense)})
    digest["magnitude_trainer"] = {
        "sparsity": json.loads((mag / "fold_0" / "magnitude_pruning.json").read_text()),
        "validation": json.loads((mag / "fold_0" / "validation" / "summary.json").read_text())["foreground_mean"],
        "final_weights": checksum(torch.load(mag / "fold_0" / "checkpoint_final.pth", map_location="cpu",
                                             weights_only=False)["network_weights"]),
    }
    out = work / f"sweep_{args.tag}"
    raw = next((work / "raw").glob("Dataset601_*"))
    run([shutil_which("nnunet-prune"), "sweep", str(dense), "-i", str(raw / "imagesTs"), "-o", str(out),
         "--taus", "0", "0.005", "0.02", "0.05", "--refine", "2", "--device", "cpu"], env)
    table = sorted(out.glob("*.csv"))
    digest["sweep"] = {p.name: drop_timings(p.read_text()) for p in table}
    common = ("widths", "removed", "num_parameters", "macs", "train_loss", "val_loss")
    digest["stamp"] = method_digest(
        train("nnUNetTrainerSTAMP", 0,
              {"NNUNET_PRUNE_STAMP": "per_step=0.2,start_fraction=0,stop_fraction=1,max_dice_drop=0"}),
        common + ("stamp_dropout_mean", "stamp_cut_score", "stamp_removed_scores"))
    digest["structured_l2"] = method_digest(
        train("nnUNetTrainerStructuredL2_iterative", 0,
              {"NNUNET_PRUNE_DENSE_MODEL": str(dense), "NNUNET_PRUNE_EPOCHS": "4",
               "NNUNET_PRUNE_STRUCTURED": "pruning_ratio=0.5,step=0.2,stop_fraction=1"}),
        common + ("structured_steps_done", "structured_removed_filters", "structured_removed_scores"))
    digest["pspseg"] = method_digest(
        train("nnUNetTrainerPSPSeg", 0,
              {"NNUNET_PRUNE_PSPSEG": "patience=0,tolerance=1000,stop_fraction=1,calibration_patches=2",
               "NNUNET_PRUNE_EPOCHS": "4"}, plans="nnUNetPSPSegPlans_S"),
        ("removed_blocks", "num_parameters", "macs", "train_loss", "val_loss", "pspseg_events", "branch_map"))
    args.out.write_text(json.dumps(digest, indent=1, sort_keys=True))
    print(f"wrote {args.out}")


def drop_timings(csv_text: str) -> list[dict]:
    """The rows of a sweep table without its wall-clock columns (they differ from run to run)."""
    import csv
    import io

    return [{k: v for k, v in row.items() if "second" not in k} for row in csv.DictReader(io.StringIO(csv_text))]


def shutil_which(name: str) -> str:
    import shutil

    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else shutil.which(name) or name


def compare(a: Path, b: Path) -> int:
    """0 if the digests agree (floats to 1e-6 relative), else 1 with every difference printed."""
    diffs: list[str] = []

    def walk(x, y, path):
        if isinstance(x, dict) and isinstance(y, dict):
            for k in sorted(set(x) | set(y)):
                if k not in x or k not in y:
                    diffs.append(f"{path}/{k}: only in {'second' if k in y else 'first'}")
                else:
                    walk(x[k], y[k], f"{path}/{k}")
        elif isinstance(x, list) and isinstance(y, list) and len(x) == len(y):
            for i, (u, v) in enumerate(zip(x, y)):
                walk(u, v, f"{path}[{i}]")
        elif isinstance(x, float) or isinstance(y, float):
            if not (isinstance(x, (int, float)) and isinstance(y, (int, float))
                    and (math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-9) or (x != x and y != y))):
                diffs.append(f"{path}: {x} != {y}")
        elif x != y:
            diffs.append(f"{path}: {x!r} != {y!r}")

    walk(json.loads(a.read_text()), json.loads(b.read_text()), "")
    for d in diffs[:50]:
        print(d)
    print("identical" if not diffs else f"{len(diffs)} difference(s)")
    return 1 if diffs else 0


if __name__ == "__main__":
    main()
