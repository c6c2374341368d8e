"""Does latency follow MACs? Dense vs uniformly slimmed networks (and real trained folds), per runtime, 2D and 3D.

For each network (default ``2d`` and ``3d_fullres``, the planned shapes of nnU-Net's default planner; ``--small``:
2d 256^2, 3d 64^3 patches) the dense network and copies pruned uniformly to each ``--widths`` fraction (the same
fraction of channels kept in every coupling group, random channels, fixed seed) are timed, one patch, batch 1,
through every runtime a deployed nnU-Net model can use:

* ``pytorch stock``: eager PyTorch with the stock dynamic_network_architectures classes (what a dense nnU-Net model
  folder runs);
* ``pytorch``: eager PyTorch with this package's width-adaptive classes (what pruned and exported folders run: 3D
  convolutions with few channels in oneDNN instead of ATen's slow kernel, ``nnunet_prune.networks.OneDnnConv3d``);
* ``torch-compile`` (``--compile``; slow to build on a CPU), ``onnxruntime``, ``openvino`` (when installed):
  the network converted as ``nnunet-prune export --runtime`` converts it (``RuntimeNetwork.around``).

``--folders DENSE PRUNED ...`` adds trained model folders (fold ``--fold``), timed the same way at their own patch
size; the first folder is their reference. Timing is round-robin (one call per network per round, per runtime),
so drift hits all alike. Columns: params, GMACs, MAC ratio vs the reference, median ms per runtime, and per runtime
the latency ratio vs the reference's latency in the SAME runtime; then the best runtime and its speed-up over
``pytorch stock`` on the dense network (what a user would run without this package).

Usage::

    python benchmarks/runtime_latency.py --small --threads 2 --repeats 5 --out runtime_latency_cpu.md
    python benchmarks/runtime_latency.py --small --threads 2 --networks 2d --folders DENSE_FOLDER PRUNED_FOLDER
"""

from __future__ import annotations

import copy

import torch

try:
    from benchmarks import common
    from benchmarks.width_latency import slimmed
except ImportError:  # run as a script: benchmarks/ is on sys.path
    import common
    from width_latency import slimmed

from nnunet_prune.core.stats import count_macs, count_parameters, inference_outputs
from nnunet_prune.networks.runtime import RuntimeNetwork, available_runtimes


def stock_copy(net: torch.nn.Module) -> torch.nn.Module:
    """The same network with stock ``nn.Conv3d`` (undo the adaptive classes' oneDNN convolution)."""
    from nnunet_prune.networks import OneDnnConv3d

    net = copy.deepcopy(net)
    for m in net.modules():
        if type(m) is OneDnnConv3d:
            m.__class__ = torch.nn.Conv3d
    return net


def runner(net: torch.nn.Module, runtime: str, patch, threads: int):
    """A no-argument callable: one inference of one patch through ``runtime``."""
    x = torch.randn((1, next(m for m in net.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)).in_channels,
                     *patch), generator=torch.Generator().manual_seed(0))
    if runtime == "pytorch stock":
        model = stock_copy(net)
    elif runtime == "pytorch":
        from nnunet_prune.networks import use_onednn_conv3d

        model = use_onednn_conv3d(copy.deepcopy(net))
    else:
        options = {"threads": threads} if runtime != "torch-compile" else {}
        model = RuntimeNetwork.around(net, runtime, patch, options)
    model.eval()

    def run():
        with torch.inference_mode(), inference_outputs(model):
            return model(x)

    return run


def measure(group: str, nets: list[tuple[str, torch.nn.Module]], patch, runtimes, args, rows, records) -> None:
    params = [count_parameters(n) for _, n in nets]
    macs = [count_macs(n, patch) for _, n in nets]
    lat: dict[str, list[float | None]] = {}
    for runtime in runtimes:
        try:
            if runtime == "torch-compile":
                torch.compiler.reset()
            runs = [runner(n, runtime, patch, args.threads or torch.get_num_threads()) for _, n in nets]
            for run in runs:
                for _ in range(max(args.warmup, 2 if runtime == "torch-compile" else 1)):
                    run()
            times = [[] for _ in nets]
            for _ in range(args.repeats):
                for i, run in enumerate(runs):
                    times[i].append(common.time_once(run, torch.device("cpu")))
            lat[runtime] = [common.median(t) * 1e3 for t in times]
        except Exception as e:  # noqa: BLE001 - a runtime that cannot run this network is a table entry
            print(f"{group} / {runtime}: failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}", flush=True)
            lat[runtime] = [None] * len(nets)
    stock0 = lat.get("pytorch stock", [None])[0]
    for i, (name, _) in enumerate(nets):
        cells = {r: lat[r][i] for r in runtimes}
        done = {r: v for r, v in cells.items() if v is not None}
        best = min(done, key=done.get) if done else None
        rec = dict(group=group, network=name, patch=list(patch), params=params[i], macs=macs[i],
                   mac_ratio=macs[i] / macs[0], latency_ms=cells,
                   latency_ratio={r: (v / lat[r][0] if v is not None and lat[r][0] else None)
                                  for r, v in cells.items()},
                   best=best, best_vs_stock_dense=(stock0 / done[best]) if best and stock0 else None)
        records.append(rec)
        rows.append([group, name, f"{params[i] / 1e6:.2f}", f"{macs[i] / 1e9:.2f}", f"{rec['mac_ratio']:.3f}",
                     *("-" if cells[r] is None else f"{cells[r]:.1f}" for r in runtimes),
                     *("-" if rec["latency_ratio"][r] is None else f"{rec['latency_ratio'][r]:.3f}" for r in runtimes),
                     best or "-", "-" if rec["best_vs_stock_dense"] is None else f"{rec['best_vs_stock_dense']:.2f}x"])
        print(" | ".join(rows[-1]), flush=True)


def main(argv=None) -> str:
    p = common.base_parser(__doc__, default_repeats=5)
    p.add_argument("--widths", type=float, nargs="+", default=[1.0, 0.5, 0.3, 0.15],
                   help="fractions of the planned widths (the first is the reference, normally 1.0)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile (minutes per network on a CPU)")
    p.add_argument("--folders", nargs="+", default=[], metavar="MODEL_FOLDER",
                   help="trained model folders to time too (the first is their reference)")
    p.add_argument("--fold", default="0", help="the fold of --folders (default 0)")
    args = p.parse_args(argv)
    common.setup(args)
    info = common.machine_info("cpu")
    info["cpu_threads_used"] = torch.get_num_threads()
    runtimes = ["pytorch stock", "pytorch", *(["torch-compile"] if args.compile else []),
                *(r for r in available_runtimes() if r != "torch-compile")]
    headers = ["network", "width / fold", "params (M)", "GMACs", "MAC ratio", *(f"{r} ms" for r in runtimes),
               *(f"{r} ratio" for r in runtimes), "best runtime", "best vs stock dense"]
    rows, records = [], []
    for name in args.networks or ["2d", "3d_fullres"]:
        spec = common.NETWORKS[name]
        patch = spec.patch_size(args.small)
        torch.manual_seed(args.seed)
        dense = common.build_network(name, adaptive=True, deep_supervision=False)
        nets = [(f"{100 * w:g} %", slimmed(dense, w, args.seed)) for w in args.widths]
        measure(name, nets, patch, runtimes, args, rows, records)
    if args.folders:
        from nnunet_prune.nnunet.modelfolder import ModelFolder

        folders = [ModelFolder.open(f, [args.fold]) for f in args.folders]
        nets = [(mf.path.name, mf.load_network(mf.folds[0])) for mf in folders]
        measure(f"fold {args.fold}", nets, folders[0].patch_size, runtimes, args, rows, records)
    notes = ("One patch, batch 1, float32, inference mode, deep supervision off; median of "
             f"{args.repeats} rounds after warm-up. 'ratio': latency vs the group's first row in the same runtime "
             "(compare with 'MAC ratio'); 'best vs stock dense': the group's dense network in stock eager PyTorch "
             "divided by this row in its best runtime.")
    return common.finish("latency vs MACs per runtime", info, args, headers, rows, notes, records)


if __name__ == "__main__":
    main()
