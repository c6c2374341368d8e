"""Speed-ups of a pruned U-Net, timed the old way and the way every tool times now (``nnunet_prune/core/timing.py``).

Old: the unpruned network timed once, then each pruned network, 10 runs each, one after the other (how the
structured sweep timed before). New: each pruned network timed interleaved with the unpruned one, rounds until the
medians are known, the speed-up the median of the per-round ratios, with the load check and the "not comparable"
verdict. The networks: a 2D PlainConvUNet of nnU-Net's default 2D shape (6 stages, 32-512 features, 128x128 patch,
3.55 GMAC), uniform filter pruning (the same fraction of every coupling group removed). Each way runs ``--trials``
times, so their spread shows what a busy machine does to each.

Usage::

    python benchmarks/interleaved_timing.py --threads 1 --trials 2
"""

from __future__ import annotations

import argparse
import copy

import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet

from nnunet_prune.core.latency import measure_latencies, measure_latency_stats
from nnunet_prune.core.stats import count_macs
from nnunet_prune.core.timing import FixedLoad, TimingPolicy
from nnunet_prune.surgery import build_channel_graph


def network() -> torch.nn.Module:
    """nnU-Net's default 2D U-Net shape (random weights: latency does not depend on them)."""
    return PlainConvUNet(1, 6, [32, 64, 128, 256, 512, 512], torch.nn.Conv2d, 3, [1, 2, 2, 2, 2, 2], 2, 3, [2] * 5,
                         True, torch.nn.InstanceNorm2d, {"eps": 1e-5, "affine": True}, None, None, torch.nn.LeakyReLU,
                         {"inplace": True}, deep_supervision=False).eval()


def main(argv=None) -> None:
    """Print the old and the new speed-ups, ``--trials`` times each."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--trials", type=int, default=2)
    p.add_argument("--fractions", type=float, nargs="+", default=[0.5, 0.75, 0.9])
    args = p.parse_args(argv)
    torch.manual_seed(0)
    patch = [128, 128]
    dense = network()
    pruned = {}
    for f in args.fractions:
        net = copy.deepcopy(dense)
        graph = build_channel_graph(net)
        graph.prune({g.name: list(range(int(g.size * f))) for g in graph})
        pruned[f] = net
    print(f"GMAC per patch: dense {count_macs(dense, patch) / 1e9:.3f}, pruned "
          + ", ".join(f"{f:g}: {count_macs(n, patch) / 1e9:.3f}" for f, n in pruned.items()))
    old = TimingPolicy(repeats=10, max_repeats=10, precision=1e6)  # 10 runs, no verdict
    for trial in range(args.trials):
        d = measure_latency_stats(dense, patch, "cpu", threads=args.threads, policy=old, load=FixedLoad(0.0))
        ups = {f: d.median_ms / measure_latency_stats(n, patch, "cpu", threads=args.threads, policy=old,
                                                      load=FixedLoad(0.0)).median_ms for f, n in pruned.items()}
        print(f"old, trial {trial}: unpruned {d.median_ms:.1f} ms; speed-ups "
              + ", ".join(f"{f:g}: {v:.2f}x" for f, v in ups.items()), flush=True)
    for trial in range(args.trials):
        cells = []
        for f, net in pruned.items():
            timings = measure_latencies({"dense": dense, "pruned": net}, patch, "cpu", threads=args.threads)
            up, why = timings.ratio("dense", "pruned")
            cells.append(f"{f:g}: " + (f"n/c ({why})" if why else f"{up:.2f}x")
                         + f" [{timings.stats['pruned'].runs} rounds, other processes "
                         + ("?" if timings.other_cores is None else f"{timings.other_cores:.1f}") + " cores]")
        print(f"new, trial {trial}: " + "; ".join(cells), flush=True)


if __name__ == "__main__":
    main()
