"""U-Nets whose widths follow the state dict they load.

Stock nnU-Net builds ONE network from the plans and loads each fold's weights into it with a strict
``load_state_dict``; folds pruned differently have different widths. These subclasses of the
dynamic_network_architectures U-Nets resize their tensors to the shapes in the state dict first (widths are all
the structure pruning changes), so a pruned fold loads wherever nnU-Net loads a network: the predictor,
``--c`` resume, ``--val``, ensembling. They also accept the compact sparse entries of :mod:`nnunet_prune.compact`.
Apart from ``load_state_dict`` they are the stock classes: same modules, same forward, same speed.

Plans may name them by dotted path (``nnunet_prune.networks.AdaptivePlainConvUNet``); this package's trainers
use them in place of the stock classes automatically.
"""

from __future__ import annotations

from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet

from nnunet_prune.checkpoints import normalise_state_dict
from nnunet_prune.surgery.resize import resize_to_state_dict


class AdaptiveWidthMixin:
    """Resize to the incoming state dict before loading it (compact entries and torch.nn.utils.prune's
    ``weight_orig``/``weight_mask`` pairs are read too: :func:`nnunet_prune.checkpoints.normalise_state_dict`)."""

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Take the state dict's block counts and widths (:func:`~nnunet_prune.surgery.resize.resize_to_state_dict`),
        then load it as ``nn.Module`` does."""
        state_dict = normalise_state_dict(state_dict)
        resize_to_state_dict(self, state_dict)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


class AdaptivePlainConvUNet(AdaptiveWidthMixin, PlainConvUNet):
    """``PlainConvUNet`` that takes its widths from the state dict it loads."""


class AdaptiveResidualEncoderUNet(AdaptiveWidthMixin, ResidualEncoderUNet):
    """``ResidualEncoderUNet`` that takes its widths from the state dict it loads."""


def adaptive_class_name(network_class_name: str) -> str:
    """The adaptive counterpart of a plans' ``network_class_name`` (unchanged if it already is one), from the
    architecture registry (:mod:`nnunet_prune.surgery.architectures`).

    Raises:
        NnUNetPruneError: an architecture the registry does not know (the message lists the supported ones).
    """
    from nnunet_prune.surgery import architectures

    return architectures.for_class_name(network_class_name).adaptive_class
