"""Low-level tensor replacement and the bookkeeping attributes of dynamic_network_architectures modules.

Parameters keep their identity when resized (``param.data`` is swapped), so optimizers, schedulers and any other
holder of a reference keep pointing at the live tensor; only optimizer *state* must be sliced to match.
"""

from __future__ import annotations

import torch
from dynamic_network_architectures.building_blocks.residual import BasicBlockD, BottleneckD, StackedResidualBlocks
from dynamic_network_architectures.building_blocks.simple_conv_blocks import ConvDropoutNormReLU, StackedConvBlocks
from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.modules.conv import _ConvNd

from nnunet_prune.core.conv import in_channels, out_channels


def set_tensor(module: nn.Module, name: str, value: torch.Tensor) -> torch.Tensor:
    """Put ``value`` into ``module.<name>`` keeping the Parameter object (if any); returns the previous tensor."""
    if name in module._parameters:
        param = module._parameters[name]
        old = param.data
        param.data = value
        param.grad = None  # stale gradients of the old shape
        return old
    old = module._buffers[name]
    module._buffers[name] = value
    return old


def sync_attributes(network: nn.Module) -> None:
    """Make the modules' channel-count attributes agree with their tensors after surgery or resizing.

    Covers torch convs and norms (in/out_channels, num_features) and the bookkeeping of
    dynamic_network_architectures (``input_channels`` / ``output_channels`` of blocks and stages, the encoder's
    per-stage ``output_channels`` list), which ``compute_conv_feature_map_size`` and the decoder rely on.
    """
    for m in reversed(list(network.modules())):  # every module after all of its descendants
        if isinstance(m, _ConvNd):
            m.in_channels, m.out_channels = in_channels(m), out_channels(m)
        elif isinstance(m, ConvDropoutNormReLU):
            m.input_channels, m.output_channels = m.conv.in_channels, m.conv.out_channels
            norm = getattr(m, "norm", None)
            if isinstance(norm, _NormBase):
                norm.num_features = m.conv.out_channels
        elif isinstance(m, StackedConvBlocks):
            m.output_channels = m.convs[-1].output_channels
        elif isinstance(m, BasicBlockD):
            m.input_channels, m.output_channels = m.conv1.input_channels, m.conv2.output_channels
        elif isinstance(m, BottleneckD):
            m.input_channels, m.output_channels = m.conv1.input_channels, m.conv3.output_channels
            m.bottleneck_channels = m.conv1.output_channels
        elif isinstance(m, StackedResidualBlocks):
            m.output_channels = m.blocks[-1].output_channels
    encoder = getattr(network, "encoder", None)
    if encoder is not None and hasattr(encoder, "stages") and hasattr(encoder, "output_channels"):
        encoder.output_channels = [_stage_output_channels(s) for s in encoder.stages]


def _stage_output_channels(stage: nn.Module) -> int:
    last = stage[-1] if isinstance(stage, nn.Sequential) else stage
    return last.output_channels
