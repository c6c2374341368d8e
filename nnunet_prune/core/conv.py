"""The weight layout of convolutions and transposed convolutions, in one place.

A convolution's weight is ``(out, in / groups, *kernel)``; a transposed convolution's is ``(in, out / groups,
*kernel)``: its channel axes are swapped. Everything that slices, scores or counts channels asks here which axis
holds which channels.
"""

from __future__ import annotations

from torch import nn
from torch.nn.modules.conv import _ConvTransposeNd


def is_transposed(conv: nn.Module) -> bool:
    """Whether ``conv`` is a transposed convolution (``ConvTranspose1d/2d/3d``)."""
    return isinstance(conv, _ConvTransposeNd)


def out_axis(conv: nn.Module) -> int:
    """The axis of ``conv.weight`` that indexes output channels: 1 for a transposed convolution, else 0."""
    return 1 if is_transposed(conv) else 0


def in_axis(conv: nn.Module) -> int:
    """The axis of ``conv.weight`` that indexes input channels (per group): 0 for a transposed convolution, else 1."""
    return 0 if is_transposed(conv) else 1


def out_channels(conv: nn.Module) -> int:
    """Output channels of a convolution or transposed convolution, from its weight's shape (groups included)."""
    return conv.weight.shape[1] * conv.groups if is_transposed(conv) else conv.weight.shape[0]


def in_channels(conv: nn.Module) -> int:
    """Input channels of a convolution or transposed convolution, from its weight's shape (groups included)."""
    return conv.weight.shape[0] if is_transposed(conv) else conv.weight.shape[1] * conv.groups
