"""Small networks and utilities shared by the unit tests."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import numpy as np
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet
from dynamic_network_architectures.building_blocks.residual import BasicBlockD, BottleneckD
from torch import nn

#: the repository root (README.md, benchmarks/, the package)
REPO = Path(__file__).resolve().parent.parent

NORMS = {("instance", 2): nn.InstanceNorm2d, ("instance", 3): nn.InstanceNorm3d,
         ("batch", 2): nn.BatchNorm2d, ("batch", 3): nn.BatchNorm3d}

# every network kind the surgery layer must support
NETWORK_KINDS = [
    (arch, dim, norm, bias, ds)
    for arch in ("plain", "resenc", "resenc_bottleneck")
    for dim in (2, 3)
    for norm in ("instance", "batch")
    for bias in (True, False)
    for ds in (True, False)
    if not (arch == "resenc_bottleneck" and (norm, bias, ds) != ("instance", True, True))
]


def kind_id(kind) -> str:
    arch, dim, norm, bias, ds = kind
    return f"{arch}-{dim}d-{norm}-{'bias' if bias else 'nobias'}-{'ds' if ds else 'nods'}"


def make_network(arch: str = "plain", dim: int = 2, norm: str = "instance", bias: bool = True, ds: bool = True,
                 cls=None, in_channels: int = 2, num_classes: int = 3, pool_only_stage: bool = True) -> nn.Module:
    """A small 4-stage U-Net. With ``pool_only_stage`` the two deepest stages have equal width, so the residual
    encoder's strided bottleneck block has a pooling-only skip (no projection)."""
    conv = nn.Conv2d if dim == 2 else nn.Conv3d
    feats = [8, 16, 24, 24] if pool_only_stage else [8, 16, 24, 32]
    kw = dict(conv_bias=bias, norm_op=NORMS[(norm, dim)], norm_op_kwargs={"eps": 1e-5, "affine": True},
              dropout_op=None, dropout_op_kwargs=None, nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True},
              deep_supervision=ds)
    if arch == "plain":
        cls = cls or PlainConvUNet
        return cls(in_channels, 4, feats, conv, 3, [1, 2, 2, 2], [2, 2, 1, 2], num_classes, [1, 2, 2], **kw)
    cls = cls or ResidualEncoderUNet
    if arch == "resenc":
        return cls(in_channels, 4, feats, conv, 3, [1, 2, 2, 2], [1, 2, 2, 1], num_classes, [1, 1, 1],
                   block=BasicBlockD, **kw)
    if arch == "resenc_bottleneck":
        return cls(in_channels, 4, [16, 32, 32, 48], conv, 3, [1, 2, 2, 2], [1, 2, 1, 1], num_classes, [1, 1, 1],
                   block=BottleneckD, bottleneck_channels=[8, 8, 16, 16], **kw)
    raise ValueError(arch)


def randomize_norms(net: nn.Module, seed: int = 0) -> None:
    """Non-trivial affine parameters and running statistics, so that slicing mistakes change the output."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._NormBase):
            if m.weight is not None:
                m.weight.data = torch.rand(m.weight.shape, generator=g) + 0.5
                m.bias.data = torch.randn(m.bias.shape, generator=g) * 0.5
            if m.running_mean is not None:
                m.running_mean.data = torch.randn(m.running_mean.shape, generator=g) * 0.1
                m.running_var.data = torch.rand(m.running_var.shape, generator=g) + 0.5


def as_list(out):
    return list(out) if isinstance(out, (list, tuple)) else [out]


def zeroing_hooks(graph, removal) -> list:
    """Forward hooks that zero ``removal``'s channels wherever the groups' channels are produced."""
    handles = []
    for key, idx in removal.items():
        for module in graph.resolve(key).outputs:
            def hook(mod, inp, out, idx=tuple(idx)):
                out = out.clone()
                out[:, list(idx)] = 0
                return out
            handles.append(module.register_forward_hook(hook))
    return handles


@contextlib.contextmanager
def restored_afterwards(folder: Path, backup: Path):
    """Keep a copy of ``folder`` (a model shared by several tests) in ``backup`` and put it back when the block ends,
    however it ends."""
    shutil.copytree(folder, backup)
    try:
        yield
    finally:
        shutil.rmtree(folder)
        shutil.copytree(backup, folder)


def segmentations(folder) -> dict[str, np.ndarray]:
    """The NIfTI segmentations nnU-Net wrote into ``folder``: {file name: label array}."""
    import nibabel

    return {p.name: np.asarray(nibabel.load(p).dataobj) for p in sorted(Path(folder).glob("*.nii.gz"))}


def logged_once(log: str, prefixes: tuple[str, ...]) -> list[str]:
    """The lines of an nnU-Net training log (timestamp stripped) that start with one of ``prefixes``; asserts there
    is at least one and that none appears twice (a method's messages reach the log once)."""
    from collections import Counter

    lines = [line.split(": ", 1)[1] for line in log.splitlines() if ": " in line]
    hits = [line for line in lines if line.startswith(prefixes)]
    assert hits, f"no line starting with {prefixes} in the log"
    twice = [line for line, n in Counter(hits).items() if n > 1]
    assert not twice, f"logged more than once: {twice}"
    return hits
