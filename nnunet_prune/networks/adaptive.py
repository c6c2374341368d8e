"""U-Nets whose widths follow the state dict they load.

Stock nnU-Net builds ONE network from the plans and loads each fold's weights into it with a strict
``load_state_dict``; folds pruned differently have different widths. These subclasses of the
dynamic_network_architectures U-Nets resize their tensors to the shapes in the state dict first (widths are all
the structure pruning changes), so a pruned fold loads wherever nnU-Net loads a network: the predictor,
``--c`` resume, ``--val``, ensembling. They also accept the compact sparse entries of :mod:`nnunet_prune.core.compact`.
Apart from ``load_state_dict`` they are the stock classes: same modules and forward; on the CPU their 3D
convolutions avoid ATen's slow native kernel for the few channels of slim layers (:class:`OneDnnConv3d`).

Plans may name them by dotted path (``nnunet_prune.networks.AdaptivePlainConvUNet``); this package's trainers
use them in place of the stock classes automatically. One more keyword, ``channel_widths`` ({coupling group name:
width}, as :meth:`~nnunet_prune.surgery.graph.ChannelGraph.widths` names them), builds the network at those widths
from the start: a plans file written by ``nnunet-prune plans-from-model`` uses it to train a pruned architecture from
scratch with the stock trainer (nnU-Net initialises the weights after construction, so at the final shapes).
"""

from __future__ import annotations

import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet
from torch import nn

from nnunet_prune.networks.checkpoints import normalise_state_dict
from nnunet_prune.surgery.resize import resize_to_state_dict


class AdaptiveWidthMixin:
    """Resize to the incoming state dict before loading it (compact entries and torch.nn.utils.prune's
    ``weight_orig``/``weight_mask`` pairs are read too: :func:`nnunet_prune.networks.checkpoints.normalise_state_dict`).

    ``channel_widths`` ({group name: width}): built at these widths (groups not named keep the plans' width).

    Raises:
        NnUNetPruneError: ``channel_widths`` names a group the network does not have, or a width that is not in
            1..(the plans' width).
    """

    def __init__(self, *args, channel_widths: dict[str, int] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        use_onednn_conv3d(self)
        if channel_widths:
            set_channel_widths(self, channel_widths)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Take the state dict's block counts and widths (:func:`~nnunet_prune.surgery.resize.resize_to_state_dict`),
        then load it as ``nn.Module`` does."""
        state_dict = normalise_state_dict(state_dict)
        resize_to_state_dict(self, state_dict)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


def _cpu_autocast() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # PyTorch < 2.4
        return torch.is_autocast_cpu_enabled()


#: ATen's oneDNN threshold: for batch 1, a 3D convolution runs in oneDNN only when N*C*D*H of its input exceeds this
ATEN_ONEDNN_MIN_NCDH = 20480


class OneDnnConv3d(nn.Conv3d):
    """``nn.Conv3d`` that runs CPU float32 inference in oneDNN (``torch.mkldnn_convolution``) where ATen would fall
    back to its slow native kernel (batch-1 inputs with N*C*D*H <= 20480, i.e. the few channels of a slim network).

    Same parameters, state dict and results (up to float rounding, ~1e-6); training, gradients, other devices and
    dtypes, ``torch.compile``, tracing (ONNX export) and large inputs take the stock path. Measured (2-core EPYC,
    2 threads, 3d_fullres 64^3 patch): 30 % width 303 -> 195 ms, 15 % width 382 -> 94 ms, dense unchanged
    (docs/deploy.md).
    """

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if (input.dim() == 5 and input.device.type == "cpu" and input.dtype == torch.float32
                and self.padding_mode == "zeros" and not isinstance(self.padding, str)
                and not (torch.is_grad_enabled() and (input.requires_grad or weight.requires_grad))
                and input.shape[0] * input.shape[1] * input.shape[2] * input.shape[3] <= ATEN_ONEDNN_MIN_NCDH
                and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
                and not torch.compiler.is_compiling() and not torch.jit.is_tracing()  # (ONNX export traces)
                and not _cpu_autocast()):
            return torch.mkldnn_convolution(input, weight.contiguous(), bias, self.padding, self.stride,
                                            self.dilation, self.groups)
        return super()._conv_forward(input, weight, bias)


def use_onednn_conv3d(network: nn.Module) -> nn.Module:
    """Turn every plain ``nn.Conv3d`` of ``network`` into :class:`OneDnnConv3d` in place (class swap: same parameters
    and state dict keys); returns ``network``."""
    for m in network.modules():
        if type(m) is nn.Conv3d:
            m.__class__ = OneDnnConv3d
    return network


class AdaptivePlainConvUNet(AdaptiveWidthMixin, PlainConvUNet):
    """``PlainConvUNet`` that takes its widths from the state dict it loads."""


class AdaptiveResidualEncoderUNet(AdaptiveWidthMixin, ResidualEncoderUNet):
    """``ResidualEncoderUNet`` that takes its widths from the state dict it loads."""


def set_channel_widths(network, widths: dict[str, int]) -> None:
    """Narrow ``network``'s coupling groups to ``widths`` ({group name: width}) by keeping their first channels (the
    values are meant to be re-initialised).

    Raises:
        NnUNetPruneError: an unknown group or a width outside 1..(current width).
    """
    from nnunet_prune import NnUNetPruneError
    from nnunet_prune.surgery import architectures

    graph = architectures.of(network).build_graph(network)
    current = graph.widths()
    unknown = sorted(set(widths) - set(current))
    bad = {k: v for k, v in widths.items() if k in current and not (isinstance(v, int) and 1 <= v <= current[k])}
    if unknown or bad:
        raise NnUNetPruneError(
            "channel_widths does not fit the network: " + "; ".join(
                [f"unknown group(s) {', '.join(unknown)}"] * bool(unknown) +
                [f"{k}={v} (allowed 1..{current[k]})" for k, v in bad.items()]) +
            ". Write the plans again with `nnunet-prune plans-from-model`.")
    removal = {k: list(range(v, current[k])) for k, v in widths.items() if v < current[k]}
    if removal:
        graph.prune(removal)


def adaptive_class_name(network_class_name: str) -> str:
    """The adaptive counterpart of a plans' ``network_class_name`` (unchanged if it already is one), from the
    architecture registry (:mod:`nnunet_prune.surgery.architectures`).

    Raises:
        NnUNetPruneError: an architecture the registry does not know (the message lists the supported ones).
    """
    from nnunet_prune.surgery import architectures

    return architectures.for_class_name(network_class_name).adaptive_class
