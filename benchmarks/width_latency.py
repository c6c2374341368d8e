"""Dense vs slim: inference latency of the same network at 100 / 50 / 25 / 10 % width.

Every slim network is the dense one pruned with the surgery layer: the same fraction of channels is removed from
every coupling group (``round(width * size)`` channels kept, at least one; random channels, fixed seed), so the
networks differ only in width. Latency is eager inference (``eval()``, ``no_grad``, deep supervision off,
batch 1) at the planned patch size (``--small``: 2d 256^2, 3d 64^3).

Variants (each one measured for all widths round-robin -- one call per width per round -- so drift hits all
widths alike; ratios are medians of per-round ratios vs 100 %):

* ``cpu eager fp32`` always (skip with ``--no-cpu``),
* ``cuda eager fp32`` with ``--device cuda``; ``cuda eager bf16`` (autocast) with ``--bf16``,
* ``--compile``: ``torch.compile(mode="reduce-overhead")`` (CUDA graphs) under bf16 autocast on CUDA, plain
  ``torch.compile`` on CPU (slow to build: one compilation per width).

``--batch-size`` (default 1, as nnU-Net's sliding-window predictor) changes the batch; latency is per call.

Columns: params, GMACs (exact, ``nnunet_prune.core.stats.count_macs``), MAC ratio vs 100 %, median latency and its
min-max, latency ratio vs 100 %, speed-up (1 / latency ratio) and the ideal speed-up (1 / MAC ratio): on a CPU the
speed-up lags the ideal because normalisation, activation, concatenation and upsampling scale only linearly
with the width, and at small widths per-layer overhead dominates.

Finding (smoke runs on a 2-core EPYC VM, 1 thread): on CPU the slim 3D networks lose most of their theoretical
speed-up to PyTorch's convolution backend choice, not to the network: for batch 1 ATen only uses oneDNN
(``mkldnn_convolution``) for a 3x3(x3) convolution when N*C*D*H (the first four input dims) exceeds 20480, and
falls back to the naive ``slow_conv3d_forward`` (im2col + GEMM) below that. At 10 % width 22 of the 23 convolutions
of 3d_fullres (64^3 patch) took the slow path and made up ~90 % of the time (~340 ms); the same network with batch
2 ran all of them in oneDNN and needed ~85-95 ms per image, i.e. ~4x less (``--batch-size 2``: 10 % width was
22.9x faster than 100 %, against 5.6x at batch 1). So CPU latencies of slim 3D networks at
batch 1 say more about that heuristic than about the pruning; batch >= 2 avoids it (whether ``torch.compile``
does was not checked in 3D). 2D networks are less affected (N*C*H stays above the threshold at the
high-resolution layers; at 10 % width 8 of 27 convolutions of the 2d network took the slow path, ~10 % of the time).

Usage::

    python benchmarks/width_latency.py --small --repeats 3                   # smoke run
    python benchmarks/width_latency.py --threads 16 --repeats 10 --out width_latency_cpu.md
    python benchmarks/width_latency.py --device cuda --bf16 --compile --repeats 50 --no-cpu --out width_gpu.json
"""

from __future__ import annotations

import contextlib
import copy

import torch

try:
    from benchmarks import common
except ImportError:  # run as a script: benchmarks/ is on sys.path
    import common

from nnunet_prune.core.stats import count_macs, count_parameters
from nnunet_prune.surgery import build_channel_graph


def slimmed(dense: torch.nn.Module, width: float, seed: int) -> torch.nn.Module:
    """``dense`` pruned uniformly to ``width`` (a copy; the dense network is left alone)."""
    net = copy.deepcopy(dense)
    if width < 1:
        graph = build_channel_graph(net)
        graph.prune(common.uniform_removal(graph, width, torch.Generator().manual_seed(seed)))
    return net.eval()


def make_runner(net: torch.nn.Module, x: torch.Tensor, variant: str):
    """A no-argument callable running one inference of ``net`` in the given variant."""
    device = x.device
    bf16 = "bf16" in variant
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    net = net.to(device).eval()
    net.decoder.deep_supervision = False
    model = net
    if "compile" in variant:
        model = torch.compile(net, mode="reduce-overhead" if device.type == "cuda" else None, dynamic=False)

    def run():
        if "compile" in variant and device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()
        with torch.no_grad(), autocast():
            return model(x)

    return run


def prepare_compile() -> None:
    """Fresh dynamo caches, and room for one compilation per width (the default limit of 8 recompilations of the
    same ``forward`` would silently fall back to eager)."""
    import torch._dynamo

    torch._dynamo.reset()
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), 64))


def variants(args) -> list[tuple[str, torch.device]]:
    out = []
    if not args.no_cpu:
        out.append(("cpu eager fp32", torch.device("cpu")))
        if args.compile:
            out.append(("cpu compile fp32", torch.device("cpu")))
    if args.device == "cuda":
        out.append(("cuda eager fp32", torch.device("cuda")))
        if args.bf16:
            out.append(("cuda eager bf16", torch.device("cuda")))
        if args.compile:
            out.append(("cuda compile+cudagraphs bf16", torch.device("cuda")))
    return out


def main(argv=None) -> str:
    p = common.base_parser(__doc__, default_repeats=10)
    p.add_argument("--widths", type=float, nargs="+", default=[1.0, 0.5, 0.25, 0.1],
                   help="fractions of the planned widths (the first one is the reference, normally 1.0)")
    p.add_argument("--bf16", action="store_true", help="CUDA: also measure eager inference under bf16 autocast")
    p.add_argument("--compile", action="store_true",
                   help="also measure torch.compile (CUDA: reduce-overhead / CUDA graphs under bf16 autocast)")
    p.add_argument("--no-cpu", action="store_true", help="skip the CPU measurement (with --device cuda)")
    p.add_argument("--batch-size", type=int, default=1, help="inference batch size (latency is per call)")
    args = p.parse_args(argv)
    device = common.setup(args)
    info = common.machine_info(device)
    info["cpu_threads_used"] = torch.get_num_threads()
    names = args.networks or ["2d", "3d_fullres", "3d_resenc"]
    todo = variants(args)
    if not todo:
        raise SystemExit("nothing to measure: --no-cpu without --device cuda")

    headers = ["network", "variant", "width %", "params (M)", "GMACs", "MAC ratio", "latency ms", "min-max ms",
               "latency ratio", "speed-up", "ideal speed-up"]
    rows, records = [], []
    for name in names:
        spec = common.NETWORKS[name]
        patch = spec.patch_size(args.small)
        torch.manual_seed(args.seed)
        dense = common.build_network(name, deep_supervision=False)
        nets = [slimmed(dense, w, args.seed) for w in args.widths]
        del dense
        params = [count_parameters(n) for n in nets]
        macs = [count_macs(n, patch, batch_size=args.batch_size) for n in nets]
        x_cpu = torch.randn((args.batch_size, spec.input_channels, *patch),
                            generator=torch.Generator().manual_seed(args.seed))
        for variant, dev in todo:
            if "compile" in variant:
                prepare_compile()
            try:
                runners = [make_runner(copy.deepcopy(n), x_cpu.to(dev), variant) for n in nets]
                warmup = max(args.warmup, 3) if "compile" in variant or dev.type == "cuda" else args.warmup
                for run in runners:  # warm-up (and compilation / autotuning), width by width
                    for _ in range(warmup):
                        run()
                times = [[] for _ in nets]
                for _ in range(args.repeats):  # round-robin over the widths
                    for i, run in enumerate(runners):
                        times[i].append(common.time_once(run, dev))
            except Exception as e:  # noqa: BLE001 - e.g. no C++ compiler for torch.compile on this machine
                print(f"{name} / {variant}: failed: {type(e).__name__}: {e}", flush=True)
                rows.append([name, variant, "-", "-", "-", "-", f"failed: {type(e).__name__}", "-", "-", "-", "-"])
                continue
            finally:
                runners = None
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
            for i, w in enumerate(args.widths):
                ratios = [t / t0 for t, t0 in zip(times[i], times[0], strict=True)]
                lat, (lo, hi) = common.median(times[i]) * 1e3, common.spread(times[i])
                ratio = common.median(ratios)
                rec = dict(network=name, variant=variant, patch=patch, width=w, params=params[i], macs=macs[i],
                           mac_ratio=macs[i] / macs[0], latency_ms=lat, latency_min_ms=lo * 1e3,
                           latency_max_ms=hi * 1e3, latency_ratio=ratio, speed_up=1 / ratio,
                           ideal_speed_up=macs[0] / macs[i], latency_all_ms=[t * 1e3 for t in times[i]])
                records.append(rec)
                rows.append([name, variant, f"{100 * w:g}", f"{params[i] / 1e6:.2f}", f"{macs[i] / 1e9:.1f}",
                             f"{rec['mac_ratio']:.3f}", f"{lat:.1f}", f"{lo * 1e3:.1f}-{hi * 1e3:.1f}",
                             f"{ratio:.3f}", f"{rec['speed_up']:.2f}x", f"{rec['ideal_speed_up']:.1f}x"])
                print(" | ".join(str(c) for c in rows[-1]), flush=True)
        del nets

    patches = ", ".join(f"{n} {'x'.join(map(str, common.NETWORKS[n].patch_size(args.small)))}" for n in names)
    notes = (f"Patches: {patches}; batch {args.batch_size}, eval, no_grad, deep supervision off. Median of "
             f"{args.repeats} rounds "
             f"(one call per width per round) after warm-up; latency ratio = median of per-round ratios vs "
             f"{100 * args.widths[0]:g} % width; speed-up = 1 / latency ratio; ideal speed-up = 1 / MAC ratio.")
    return common.finish("dense vs slim: inference latency by width", info, args, headers, rows, notes, records)


if __name__ == "__main__":
    main()
