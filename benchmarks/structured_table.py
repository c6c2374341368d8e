"""Structured pruning runs side by side: Dice against compression, parameters, MACs, CPU latency (docs/structured.md).

    python benchmarks/structured_table.py RESULTS_ROOT --labels LABELS_TS --pred PRED_ROOT [--latency] [-o table.md]

RESULTS_ROOT holds one nnU-Net results folder per run (``res_<run>/Dataset.../<trainer>__<plans>__<conf>/fold_0``,
the layout of the GPU script of issue 12; ``res`` is the dense model); PRED_ROOT holds each run's held-out
predictions as ``PRED_ROOT/res_<run>/*.nii.gz``. For each run: the filters, parameters and MACs per patch of its
final network (from its widths, with :class:`nnunet_prune.surgery.size.SizeModel`), nnU-Net's validation Dice
(foreground mean) of fold 0, the held-out Dice against LABELS_TS (nnU-Net's evaluation), and with ``--latency`` the
median CPU latency of one patch (2 threads, eager) of a network built at those widths, all measured in one run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def fold_folder(res: Path) -> Path:
    return next(res.glob("Dataset*/*__*__*/fold_0"))


def network_at(fold: Path, widths: dict | None):
    """The plans' network (inference path) at ``widths`` (None: unpruned)."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_prune.networks import set_channel_widths
    from nnunet_prune.nnunet.trainers.base import nnUNetTrainerPruning

    model = fold.parent
    pm = PlansManager(json.loads((model / "plans.json").read_text()))
    cm = pm.get_configuration(model.name.split("__")[-1])
    labels = json.loads((model / "dataset.json").read_text())["labels"]
    net = nnUNetTrainerPruning.build_network_architecture(pm, cm, 1, len(labels), enable_deep_supervision=False)
    if widths:
        set_channel_widths(net, widths)
    return net.eval(), cm.patch_size


def held_out_dice(pred: Path, labels: Path) -> float:
    """Mean over the test cases of the foreground-mean Dice (liver, tumour), nnU-Net's reader."""
    from nnunetv2.imageio.nibabel_reader_writer import NibabelIO

    from nnunet_prune.tools.dice import dice_per_case, foreground_mean

    rw = NibabelIO()
    cases = sorted(p.name[:-7] for p in pred.glob("*.nii.gz"))
    ref = {c: rw.read_seg(str(labels / f"{c}.nii.gz"))[0][0] for c in cases}
    got = {c: rw.read_seg(str(pred / f"{c}.nii.gz"))[0][0] for c in cases}
    return foreground_mean(dice_per_case(ref, got, [1, 2], None))[0]


def main() -> None:
    """Parse the arguments, measure every run, print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--labels", type=Path, required=True)
    parser.add_argument("--pred", type=Path, required=True)
    parser.add_argument("--latency", action="store_true")
    parser.add_argument("-o", "--output", type=Path, default=None)
    args = parser.parse_args()

    from nnunet_prune.core.latency import measure_latency
    from nnunet_prune.core.stats import count_macs, count_parameters
    from nnunet_prune.surgery import build_channel_graph

    rows = []
    for res in sorted(args.root.glob("res*")):
        fold = fold_folder(res)
        history = fold / "pruning_history.json"
        widths = json.loads(history.read_text())["epochs"][-1]["widths"] if history.is_file() else None
        net, patch = network_at(fold, widths)
        summary = json.loads((fold / "validation" / "summary.json").read_text())
        row = {"run": res.name[4:] or "dense", "filters": sum(build_channel_graph(net).widths().values()),
               "params": count_parameters(net), "macs": count_macs(net, patch),
               "val_dice": summary["foreground_mean"]["Dice"],
               "held_out_dice": held_out_dice(args.pred / res.name, args.labels)}
        if args.latency:
            if not rows:  # the first timing of a process runs slow (kernel selection, allocator): not counted
                measure_latency(net, patch, "cpu", repeats=10, warmup=3, threads=2)
            row["cpu_ms"] = measure_latency(net, patch, "cpu", repeats=20, warmup=3, threads=2)
        rows.append(row)
    dense = next(r for r in rows if r["run"] == "dense")
    lines = ["| run | filters removed | parameters | MACs | " + ("CPU ms/patch | " if args.latency else "")
             + "val Dice | held-out Dice |", "|---|---:|---:|---:|" + ("---:|" if args.latency else "") + "---:|---:|"]
    for r in sorted(rows, key=lambda r: (r["run"] != "dense", r["run"])):
        lines.append(
            f"| {r['run']} | {1 - r['filters'] / dense['filters']:.1%} | {r['params'] / 1e6:.2f} M "
            f"({1 - r['params'] / dense['params']:.1%} fewer) | {r['macs'] / 1e9:.3f} G "
            f"({1 - r['macs'] / dense['macs']:.1%} fewer) | "
            + (f"{r['cpu_ms']:.1f} ({dense['cpu_ms'] / r['cpu_ms']:.1f}x) | " if args.latency else "")
            + f"{r['val_dice']:.3f} | {r['held_out_dice']:.3f} |")
    text = "\n".join(lines)
    print(text)
    if args.output:
        args.output.write_text(text + "\n")
        (args.output.with_suffix(".json")).write_text(json.dumps(rows, indent=1, default=float))


if __name__ == "__main__":
    main()
