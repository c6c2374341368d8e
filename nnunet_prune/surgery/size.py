"""Parameters and MACs of a network as functions of its coupling groups' widths, without touching a tensor.

A pruning method that aims at a parameter or MAC budget must know what a candidate removal would leave before it
removes anything (and try many candidates). Every convolution's weight is out x in x kernel, its MACs per patch are
out x in x kernel x the voxels it is evaluated at (the output voxels; a transposed convolution's input voxels, as
``torch.utils.flop_counter`` counts it), and ``out`` and ``in`` are sums of group widths (:class:`ChannelGraph`
layouts). So :class:`SizeModel` measures each convolution's voxels once (one forward pass on the meta device:
nothing is computed) and then evaluates any width assignment in microseconds, exactly as
:func:`nnunet_prune.core.stats.count_parameters` and :func:`nnunet_prune.core.stats.count_macs` would count the pruned
network.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd

from nnunet_prune.core.conv import in_axis, is_transposed, out_axis
from nnunet_prune.core.stats import count_parameters, inference_outputs, input_channels, on_meta_device
from nnunet_prune.surgery.graph import ChannelGraph, External


@dataclass
class _Conv:
    out: str | int  # a group name, or a fixed channel count (a segmentation head)
    inputs: list[str | int]  # the input layout: group names and fixed channel counts
    kernel: int  # weight elements per (out, in) pair
    bias: bool
    voxels: int  # MACs per (out, in) pair and kernel element (0: not on the inference path)


class SizeModel:
    """Parameters and MACs per patch of ``graph``'s network for any group widths.

    ``patch_size``: the patch (voxels per axis) MACs are counted for, through the inference path (deep supervision
    off, as nnU-Net's predictor); None: parameters only (:meth:`macs` then raises).

    Raises:
        ValueError: a grouped convolution (none of the registered architectures has one).
    """

    def __init__(self, graph: ChannelGraph, patch_size: Sequence[int] | None = None):
        network = graph.network
        out_group = {p: g.name for g in graph for p in g.producers}
        self.norms: list[tuple[str, int]] = []  # (group, affine tensors)
        for g in graph:
            for n in g.norms:
                self.norms.append((g.name, sum(t is not None for t in (n.weight, n.bias))))
        voxels = _voxels(network, patch_size) if patch_size is not None else {}
        self.convs: list[_Conv] = []
        for m in network.modules():
            if not isinstance(m, _ConvNd):
                continue
            if m.groups != 1:
                raise ValueError(f"{graph.module_names.get(m)}: grouped convolutions are not supported")
            w = m.weight
            fixed_out, fixed_in = w.shape[out_axis(m)], w.shape[in_axis(m)]
            inputs = [s.name if not isinstance(s, External) else s.channels for s in graph.layouts[m]] \
                if m in graph.layouts else [fixed_in]
            self.convs.append(_Conv(out_group.get(m, fixed_out), inputs, math.prod(w.shape[2:]), m.bias is not None,
                                    voxels.get(m, 0)))
        self.has_macs = patch_size is not None
        self.constant_parameters = count_parameters(network) - self._variable_parameters(graph.widths())

    @staticmethod
    def _width(item: str | int, widths: Mapping[str, int]) -> int:
        return item if isinstance(item, int) else int(widths[item])

    def _variable_parameters(self, widths: Mapping[str, int]) -> int:
        total = 0
        for c in self.convs:
            out = self._width(c.out, widths)
            total += out * sum(self._width(i, widths) for i in c.inputs) * c.kernel + (out if c.bias else 0)
        return total + sum(n * int(widths[g]) for g, n in self.norms)

    def parameters(self, widths: Mapping[str, int]) -> int:
        """Parameters of the network with these group widths ({group name: channels}; every group)."""
        return self.constant_parameters + self._variable_parameters(widths)

    def macs(self, widths: Mapping[str, int]) -> int:
        """Multiply-accumulates of one patch through the inference path with these group widths.

        Raises:
            ValueError: the model was built without a patch size.
        """
        if not self.has_macs:
            raise ValueError("SizeModel was built without patch_size: MACs are unknown")
        return sum(self._width(c.out, widths) * sum(self._width(i, widths) for i in c.inputs) * c.kernel * c.voxels
                   for c in self.convs)


def _voxels(network: nn.Module, patch_size: Sequence[int]) -> dict[nn.Module, int]:
    """Voxels each convolution is counted at in one inference pass of one patch (meta device: no computation)."""
    seen: dict[nn.Module, int] = {}

    def hook(module, inputs, output):
        shape = inputs[0].shape if is_transposed(module) else output.shape
        seen[module] = seen.get(module, 0) + math.prod(shape[2:])

    handles = [m.register_forward_hook(hook) for m in network.modules() if isinstance(m, _ConvNd)]
    modes = {m: m.training for m in network.modules()}
    network.eval()
    try:
        x = torch.empty((1, input_channels(network), *patch_size), device="meta")
        with inference_outputs(network), on_meta_device(network), torch.no_grad():
            network(x)
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
    return seen

