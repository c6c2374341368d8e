"""Shared helpers of the benchmark scripts: default nnU-Net networks, machine description, timing and tables.

The networks are what nnU-Net's default planners produce for a typical CT dataset (built directly with
dynamic_network_architectures, initialised like ``get_network_from_plans`` does):

* ``2d``         PlainConvUNet, 7 stages, 32..512 features, 3x3, patch 512x512
* ``3d_fullres`` PlainConvUNet, 6 stages, 32..320 features, 3x3x3, patch 128^3
* ``3d_resenc``  ResidualEncoderUNet (ResEnc M), 6 stages, blocks (1, 3, 4, 6, 6, 6), decoder 1 conv, patch 128^3
* ``2d_resenc``  ResidualEncoderUNet (ResEnc M, 2d configuration), 7 stages, 32..512 features, patch 512x512

``--small`` halves the patch edge (2d 256^2, 3d 64^3) for smoke runs on a small CPU; real measurements use the
planned patch sizes. Benchmarks are not tests: they print tables and never assert on timings.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

# make `python benchmarks/x.py` work from a checkout without installing (the package is importable when installed)
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)


@dataclass(frozen=True)
class NetSpec:
    arch: str  # 'plain' or 'resenc'
    dim: int
    features: tuple[int, ...]
    strides: tuple[int, ...]
    n_conv: tuple[int, ...]  # convs per encoder stage (plain) / residual blocks per stage (resenc)
    n_conv_decoder: tuple[int, ...]
    patch: tuple[int, ...]
    small_patch: tuple[int, ...]
    input_channels: int = 1
    num_classes: int = 3

    def patch_size(self, small: bool = False) -> tuple[int, ...]:
        return self.small_patch if small else self.patch


NETWORKS: dict[str, NetSpec] = {
    "2d": NetSpec("plain", 2, (32, 64, 128, 256, 512, 512, 512), (1, 2, 2, 2, 2, 2, 2), (2,) * 7, (2,) * 6,
                  (512, 512), (256, 256)),
    "3d_fullres": NetSpec("plain", 3, (32, 64, 128, 256, 320, 320), (1, 2, 2, 2, 2, 2), (2,) * 6, (2,) * 5,
                          (128, 128, 128), (64, 64, 64)),
    "3d_resenc": NetSpec("resenc", 3, (32, 64, 128, 256, 320, 320), (1, 2, 2, 2, 2, 2), (1, 3, 4, 6, 6, 6),
                         (1,) * 5, (128, 128, 128), (64, 64, 64)),
    "2d_resenc": NetSpec("resenc", 2, (32, 64, 128, 256, 512, 512, 512), (1, 2, 2, 2, 2, 2, 2), (1, 3, 4, 6, 6, 6, 6),
                         (1,) * 6, (512, 512), (256, 256)),
}


def build_network(name: str, adaptive: bool = False, deep_supervision: bool = True) -> nn.Module:
    """One of :data:`NETWORKS`, as nnU-Net builds it (stock class, or the adaptive subclass of nnunet_prune)."""
    from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet

    from nnunet_prune.networks import AdaptivePlainConvUNet, AdaptiveResidualEncoderUNet

    s = NETWORKS[name]
    conv = nn.Conv2d if s.dim == 2 else nn.Conv3d
    norm = nn.InstanceNorm2d if s.dim == 2 else nn.InstanceNorm3d
    kw = dict(conv_bias=True, norm_op=norm, norm_op_kwargs={"eps": 1e-5, "affine": True}, dropout_op=None,
              dropout_op_kwargs=None, nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True},
              deep_supervision=deep_supervision)
    n = len(s.features)
    if s.arch == "plain":
        cls = AdaptivePlainConvUNet if adaptive else PlainConvUNet
        net = cls(s.input_channels, n, s.features, conv, 3, s.strides, s.n_conv, s.num_classes, s.n_conv_decoder, **kw)
    else:
        cls = AdaptiveResidualEncoderUNet if adaptive else ResidualEncoderUNet
        net = cls(s.input_channels, n, s.features, conv, 3, s.strides, s.n_conv, s.num_classes, s.n_conv_decoder,
                  **kw)
    net.apply(net.initialize)  # as nnunetv2.utilities.get_network_from_plans
    return net


def nnunet_sgd(network: nn.Module, lr: float = 1e-2) -> torch.optim.SGD:
    """nnU-Net's default optimizer (nnUNetTrainer.configure_optimizers)."""
    return torch.optim.SGD(network.parameters(), lr, weight_decay=3e-5, momentum=0.99, nesterov=True)


def uniform_removal(graph, width: float, generator: torch.Generator | None = None, random: bool = True
                    ) -> dict[int, list[int]]:
    """Channels to remove from EVERY group so that ``round(width * size)`` (at least 1) remain."""
    removal = {}
    for g in graph.groups:
        n_remove = g.size - max(1, round(width * g.size))
        if n_remove > 0:
            order = torch.randperm(g.size, generator=generator) if random else torch.arange(g.size - 1, -1, -1)
            removal[g.index] = order[:n_remove].tolist()
    return removal


# --------------------------------------------------------------------------------------------------- arguments


def base_parser(description: str, default_repeats: int) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads (default: torch's default for this machine)")
    p.add_argument("--repeats", type=int, default=default_repeats, help="timed repeats (medians are reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up runs")
    p.add_argument("--small", action="store_true", help="smaller patches (2d 256^2, 3d 64^3) for smoke runs")
    p.add_argument("--networks", nargs="+", choices=sorted(NETWORKS), default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="also write the results: .json for JSON, anything else Markdown")
    return p


OUT_MARKER = "<!-- written by an nnunet-prune benchmark -->"


def check_out(path: str | None) -> None:
    """Before the benchmark runs: ``--out`` is new or an earlier benchmark output (never a user's file)."""
    if not path or not os.path.exists(path):
        return
    if os.path.isdir(path):
        raise SystemExit(f"--out {path} is a folder: give a file name (.md or .json).")
    with open(path, errors="replace") as f:
        head = f.read(4096)
    if OUT_MARKER not in head and '"nnunet_prune_benchmark": true' not in head:
        raise SystemExit(f"--out {path} exists and was not written by a benchmark of this package; it would be "
                         f"overwritten. Nothing was run: choose another file name or move it away.")


def setup(args) -> torch.device:
    check_out(getattr(args, "out", None))
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if args.device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: CUDA is not available")
        torch.backends.cudnn.benchmark = True  # as nnU-Net's trainer and predictor
    return torch.device(args.device)


# --------------------------------------------------------------------------------------------------- machine


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: str | torch.device) -> dict:
    import dynamic_network_architectures as dna

    info = {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "dynamic_network_architectures": getattr(dna, "__version__", "?"),
        "python": platform.python_version(),
        "device": str(device),
        "device_name": cpu_model(),
        "load_average_at_start": _loadavg(),
    }
    try:
        from importlib.metadata import version

        info["dynamic_network_architectures"] = version("dynamic_network_architectures")
        info["nnunetv2"] = version("nnunetv2")
    except Exception:  # noqa: BLE001 - purely informative
        pass
    try:
        load1 = os.getloadavg()[0]
        if load1 > 0.5 and load1 + torch.get_num_threads() > info["usable_cpus"] + 0.5:
            info["warning"] = (f"machine busy (1-min load {load1:.1f} on {info['usable_cpus']} CPUs before this run): "
                               f"CPU timings are unreliable; ratios measured side by side are less affected")
    except OSError:
        pass
    if torch.device(device).type == "cuda":
        info["device_name"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
    return info


def _loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def header(title: str, info: dict, args) -> str:
    lines = [f"# {title}", ""]
    lines += [f"- {k}: {v}" for k, v in info.items()]
    opts = {k: v for k, v in vars(args).items() if k != "out"}
    lines += [f"- arguments: {opts}", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------- timing


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_once(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds of one call of ``fn`` (device work included: synchronized before and after on CUDA)."""
    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t0


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def spread(xs: Sequence[float]) -> tuple[float, float]:
    return min(xs), max(xs)


# --------------------------------------------------------------------------------------------------- output


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    fmt = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"  # noqa: E731
    return "\n".join([fmt(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(fmt, cells[1:])])


def finish(title: str, info: dict, args, headers: Sequence[str], rows: Sequence[Sequence], notes: str = "",
           records: list[dict] | None = None) -> str:
    """Print the header and the table; write them with ``--out`` (JSON if it ends with .json)."""
    info = {**info, "load_average_at_end": _loadavg()}
    text = header(title, info, args) + "\n" + markdown_table(headers, rows) + ("\n\n" + notes if notes else "") + "\n"
    print("\n" + text)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            if args.out.endswith(".json"):
                json.dump({"nnunet_prune_benchmark": True,
                           "title": title, "machine": info, "arguments": {k: v for k, v in vars(args).items()},
                           "headers": list(headers), "rows": [list(r) for r in rows], "records": records or [],
                           "notes": notes}, f, indent=2, default=str)
            else:
                f.write(OUT_MARKER + "\n" + text)
        print(f"written to {args.out}")
    return text
