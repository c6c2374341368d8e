"""Dice against parameters over pruning runs, side by side (docs/stamp.md's figure).

    python benchmarks/plot_pruning_runs.py FOLDER [FOLDER ...] -f 0 -o dice_vs_params.png [--labels A B ...]

Each FOLDER is a trained model folder. A folder with ``fold_k/pruning_history.json`` (a pruning trainer) is drawn
as a line: nnU-Net's pseudo Dice of every epoch against the parameters the network had in that epoch (the epoch's
surgery comes after its validation, so the point of epoch e uses the width before that surgery). Any other folder
(dense nnU-Net, LUnet, a retrained architecture) is one marker: its final pseudo Dice (from the checkpoint's log)
at its parameter count. Prints the points as a table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def _checkpoint(folder: Path, fold: str) -> dict:
    return torch.load(folder / f"fold_{fold}" / "checkpoint_final.pth", map_location="cpu", weights_only=False)


def run_points(folder: Path, fold: str) -> tuple[list[int], list[float]]:
    """(parameters during each epoch, pseudo Dice of each epoch) of a pruning run."""
    history = json.loads((folder / f"fold_{fold}" / "pruning_history.json").read_text())["epochs"]
    config = json.loads((folder / f"fold_{fold}" / "pruning_config.json").read_text())
    params = [config["initial_parameters"]] + [r["num_parameters"] for r in history[:-1]]
    return params, [r["pseudo_dice"] for r in history]


def final_point(folder: Path, fold: str) -> tuple[int, float]:
    """(parameters, last pseudo Dice) of a model trained without pruning."""
    ckpt = _checkpoint(folder, fold)
    seen, n = set(), 0
    for v in ckpt["network_weights"].values():
        if v.data_ptr() not in seen:
            seen.add(v.data_ptr())
            n += v.numel()
    return n, float(ckpt["logging"]["mean_fg_dice"][-1])


def main() -> None:
    """Parse the arguments, draw the figure, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("-f", "--fold", default="0")
    parser.add_argument("-o", "--output", type=Path, default=Path("dice_vs_params.png"))
    parser.add_argument("--labels", nargs="+", default=None)
    args = parser.parse_args()
    labels = args.labels or [f.name.split("__")[0].replace("nnUNetTrainer", "") or f.name for f in args.folders]

    import matplotlib

    matplotlib.use("agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), layout="constrained")
    print(f"{'model':<28} {'epoch':>5} {'parameters':>12} {'pseudo Dice':>11}")
    markers = iter("osD^v*")
    for folder, label in zip(args.folders, labels):
        if (folder / f"fold_{args.fold}" / "pruning_history.json").is_file():
            params, dice = run_points(folder, args.fold)
            ax.plot(params, dice, marker=".", lw=1.5, label=label)
            for e, (p, d) in enumerate(zip(params, dice)):
                print(f"{label:<28} {e:>5} {p:>12,} {d:>11.4f}")
        else:
            p, d = final_point(folder, args.fold)
            ax.plot([p], [d], marker=next(markers), ms=9, ls="none", label=label)
            print(f"{label:<28} {'end':>5} {p:>12,} {d:>11.4f}")
    ax.set_xscale("log")
    ax.set_xlabel("parameters (log scale)")
    ax.set_ylabel("pseudo Dice (nnU-Net, validation patches)")
    ax.set_title(f"Dice against parameters over the run (fold {args.fold})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(args.output, dpi=120)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
