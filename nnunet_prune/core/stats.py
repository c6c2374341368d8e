"""Model statistics: parameter counts, exact MACs (``torch.utils.flop_counter``), per-layer widths."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from nnunet_prune.core.conv import out_axis


def unwrap(network: nn.Module) -> nn.Module:
    """The plain module behind DDP and ``torch.compile`` wrappers."""
    while True:
        if isinstance(network, nn.parallel.DistributedDataParallel):
            network = network.module
        elif hasattr(network, "_orig_mod"):
            network = network._orig_mod
        else:
            return network


def count_parameters(network: nn.Module) -> int:
    """Number of distinct parameters (modules registered under several names are counted once)."""
    return sum(p.numel() for p in unwrap(network).parameters())


def input_channels(network: nn.Module) -> int:
    """Number of image channels the network expects (in_channels of its first convolution)."""
    for m in unwrap(network).modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            return m.in_channels
    raise ValueError("network has no convolution")


@contextlib.contextmanager
def inference_outputs(network: nn.Module):
    """Temporarily disable deep supervision (nnU-Net's decoders) so that only the inference path is executed."""
    decoder = getattr(unwrap(network), "decoder", None)
    old = getattr(decoder, "deep_supervision", None)
    if old is not None:
        decoder.deep_supervision = False
    try:
        yield
    finally:
        if old is not None:
            decoder.deep_supervision = old


def count_macs(network: nn.Module, patch_size: Sequence[int], batch_size: int = 1, inference: bool = True) -> int:
    """Multiply-accumulates of one forward pass over ``batch_size`` patches, counted exactly by PyTorch's flop counter.

    Runs on the meta device: nothing is computed and no activation memory is used, so this is cheap even for
    3D networks. With ``inference=True`` deep supervision heads are skipped, as in nnU-Net's predictor.
    """
    net = unwrap(network)
    x = torch.empty((batch_size, input_channels(net), *patch_size), device="meta")
    ctx = inference_outputs(net) if inference else contextlib.nullcontext()
    modes = {m: m.training for m in net.modules()}
    net.eval()  # inference behaviour (and training-only forward hooks stay quiet)
    try:
        with ctx, on_meta_device(net), FlopCounterMode(display=False) as counter, torch.no_grad():
            net(x)
    finally:
        for m, mode in modes.items():
            m.training = mode
    return counter.get_total_flops() // 2


@contextlib.contextmanager
def on_meta_device(network: nn.Module):
    """Temporarily replace every parameter and buffer by a meta tensor of the same shape (module by module, so
    tensors registered under several names stay shared); the originals are put back on exit."""
    saved = []
    try:
        for m in network.modules():
            saved.append((m, dict(m._parameters), dict(m._buffers)))
            for store in (m._parameters, m._buffers):
                for k, t in store.items():
                    if t is not None:
                        store[k] = torch.empty(t.shape, dtype=t.dtype, device="meta")
        yield network
    finally:
        for m, params, buffers in saved:
            m._parameters.update(params)
            m._buffers.update(buffers)


def conv_widths(network: nn.Module) -> dict[str, int]:
    """Output channels of every convolution and transposed convolution, by (first) module name."""
    out = {}
    for name, m in unwrap(network).named_modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            out[name] = m.weight.shape[out_axis(m)]
    return out
