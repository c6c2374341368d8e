"""INT8 vs float32 per patch: eager PyTorch, OpenVINO float32 and OpenVINO INT8 on the same networks, side by side.

For each trained model folder of ``--folders`` (fold ``--fold``; nnU-Net's variables must point at its dataset),
the fold's network is run on one sliding-window patch, batch 1, through:

* ``pytorch``: eager PyTorch as ``nnUNetv2_predict`` runs it (stock classes for a dense folder, the width-adaptive
  ones for a pruned folder);
* ``openvino fp32``: what ``nnunet-prune export --runtime openvino`` writes;
* ``openvino int8``: what ``nnunet-prune export --runtime openvino --int8`` writes (scope ``all``), calibrated on
  ``--patches`` sliding-window patches of the fold's training cases
  (:func:`nnunet_prune.nnunet.calibration.calibration_patches`).

Agreement: the fraction of voxels of up to 200 sliding-window patches of the fold's VALIDATION cases that the runtime
segments (argmax) like PyTorch. ``--networks 3d_fullres`` adds nnU-Net's default 3d_fullres network with its planned
shape (``--small``: 64^3), random weights, calibrated on random patches: a timing row only (no agreement).

Timing is round-robin (one call per runtime per round), medians over ``--repeats``; ratios are between runtimes of
the same network in the same run.

Usage (a 2-core CPU: about a minute per 2D folder)::

    . env.sh   # nnUNet_raw / nnUNet_preprocessed of the folders' dataset
    python benchmarks/int8_latency.py --threads 2 --repeats 20 --folders DENSE LUNET16 ... --out int8.md
"""

from __future__ import annotations

import numpy as np
import torch

try:
    from benchmarks import common
except ImportError:  # run as a script: benchmarks/ is on sys.path
    import common

from nnunet_prune.core.stats import count_macs, inference_outputs
from nnunet_prune.networks.runtime import RuntimeNetwork, to_onnx
from nnunet_prune.tools.export.quantize import quantize_openvino

RUNTIMES = ("pytorch", "openvino fp32", "openvino int8")


def int8_network(net: torch.nn.Module, patch, patches, threads: int) -> RuntimeNetwork:
    """``net`` run by OpenVINO INT8 as an INT8 export's fold runs it."""
    blob = quantize_openvino(to_onnx(net, patch), patches)
    return RuntimeNetwork.from_stored(net, "openvino", {"threads": threads, "precision": "int8"}, blob)


def runners(net: torch.nn.Module, patch, patches, threads: int) -> dict:
    """Runtime name -> the network run by it (eval mode)."""
    return {"pytorch": net.eval(),
            "openvino fp32": RuntimeNetwork.around(net, "openvino", patch, {"threads": threads}),
            "openvino int8": int8_network(net, patch, patches, threads)}


def agreement(models: dict, checks) -> dict:
    """Per runtime: the fraction of voxels of ``checks`` segmented like PyTorch."""
    out = {}
    with torch.inference_mode():
        ref = [models["pytorch"](torch.from_numpy(x)).argmax(1) for x in checks]
        for name, model in models.items():
            same = [(model(torch.from_numpy(x)).argmax(1) == r).float().mean().item() for x, r in zip(checks, ref)]
            out[name] = float(np.mean(same))
    return out


def time_all(models: dict, x: torch.Tensor, args) -> dict:
    times = {k: [] for k in models}
    with torch.inference_mode():
        for model in models.values():
            with inference_outputs(model):
                for _ in range(max(args.warmup, 2)):
                    model(x)
        for _ in range(args.repeats):
            for name, model in models.items():
                with inference_outputs(model):
                    times[name].append(common.time_once(lambda m=model: m(x), torch.device("cpu")))
    return {k: common.median(v) * 1e3 for k, v in times.items()}


def folder_row(path: str, args, threads: int) -> tuple[list, dict]:
    from nnunet_prune.nnunet.calibration import FoldCases, calibration_patches, dataset_folders, fold_cases
    from nnunet_prune.nnunet.modelfolder import ModelFolder

    mf = ModelFolder.open(path, [args.fold])
    folders = dataset_folders(mf)
    cases = fold_cases(mf, folders)[0]
    patches = calibration_patches(mf, folders, cases, args.patches)
    checks = calibration_patches(mf, folders, FoldCases(args.fold, cases.validation, []), 200, seed=1)
    net = mf.load_network(args.fold)
    patch = mf.patch_size
    models = runners(net, patch, patches, threads)
    ms = time_all(models, torch.from_numpy(checks[0]), args)
    agree = agreement(models, checks)
    name = mf.path.name
    return _row(name, "x".join(map(str, patch)), count_macs(net, patch), ms, agree), \
        {"network": name, "patch": patch, "latency_ms": ms, "agreement": agree, "calibration_patches": len(patches)}


def synthetic_row(name: str, args, threads: int) -> tuple[list, dict]:
    spec = common.NETWORKS[name]
    patch = list(spec.patch_size(args.small))
    net = common.build_network(name, adaptive=True, deep_supervision=False).eval()
    g = torch.Generator().manual_seed(0)
    patches = [torch.randn(1, 1, *patch, generator=g).numpy() for _ in range(args.synthetic_patches)]
    models = runners(net, patch, patches, threads)
    ms = time_all(models, torch.from_numpy(patches[0]), args)
    return _row(f"{name} (random weights)", "x".join(map(str, patch)), count_macs(net, patch), ms, None), \
        {"network": name, "patch": patch, "latency_ms": ms}


def _row(name: str, patch: str, macs: int, ms: dict, agree: dict | None) -> list:
    pt, fp, i8 = (ms[r] for r in RUNTIMES)
    cells = [name, patch, f"{macs / 1e9:.2f}", f"{pt:.1f}", f"{fp:.1f}", f"{i8:.1f}", f"{pt / fp:.2f}x",
             f"{pt / i8:.2f}x", f"{fp / i8:.2f}x"]
    cells += ["-", "-"] if agree is None else [f"{agree['openvino fp32']:.4%}", f"{agree['openvino int8']:.4%}"]
    print(" | ".join(cells), flush=True)
    return cells


def main(argv=None) -> str:
    p = common.base_parser(__doc__.splitlines()[0], default_repeats=20)
    p.add_argument("--folders", nargs="*", default=[], help="trained model folders (their dataset's folders set)")
    p.add_argument("--fold", default=0, type=lambda s: s if s == "all" else int(s))
    p.add_argument("--patches", type=int, default=100, help="calibration patches per folder (default 100)")
    p.add_argument("--synthetic-patches", type=int, default=16, help="random calibration patches of a --networks row")
    args = p.parse_args(argv)
    common.setup(args)
    threads = args.threads or torch.get_num_threads()
    rows, records = [], []
    for path in args.folders:
        row, rec = folder_row(path, args, threads)
        rows.append(row)
        records.append(rec)
    for name in args.networks or []:
        row, rec = synthetic_row(name, args, threads)
        rows.append(row)
        records.append(rec)
    headers = ["network", "patch", "GMACs", "pytorch ms", "OV fp32 ms", "OV int8 ms", "OV fp32 vs pytorch",
               "OV int8 vs pytorch", "int8 vs fp32", "OV fp32 agrees", "OV int8 agrees"]
    notes = ("Median ms per patch (batch 1), round-robin. 'agrees': voxels of up to 200 sliding-window patches of the "
             "fold's validation cases segmented like PyTorch (the INT8 export's Dice check on whole cases is the "
             "binding one).")
    return common.finish("INT8 vs float32 per patch", common.machine_info("cpu"), args, headers, rows, notes, records)


if __name__ == "__main__":
    main()
