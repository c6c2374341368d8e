"""Surgery (layer 1): the mechanics of removing channels, weights and blocks; no pruning *decisions* here.

* :func:`build_channel_graph` -- the coupling groups of a network of a registered architecture
  (:mod:`~nnunet_prune.surgery.architectures`, the only door: ``PlainConvUNet`` and ``ResidualEncoderUNet`` through
  :mod:`~nnunet_prune.surgery.unet_graph`, PSP-Seg's network; any other class is refused);
* :meth:`ChannelGraph.prune` / :func:`prune_channels` -- remove channels in place, optimizer state included, with
  per-group caps (:func:`caps_from_ratio`); :meth:`ChannelGraph.dead_channels`;
* :mod:`~nnunet_prune.surgery.masks` -- zero individual weights, hold a zero pattern, sparsity by stage;
* :mod:`~nnunet_prune.surgery.blocks` -- remove whole blocks (parameters leave the optimizer);
* :mod:`~nnunet_prune.surgery.taps` -- activation taps, statistics windows and channel masks / dropout at group
  outputs;
* :mod:`~nnunet_prune.surgery.layout` -- stage, level and part of every convolution;
* :class:`Removal` / :func:`apply_removal` -- what a method decided, applied in one call;
* :func:`resize_to_state_dict` -- give a network the widths and block counts stored in a state dict.
"""

from nnunet_prune.surgery.architectures import build_channel_graph
from nnunet_prune.surgery.graph import ChannelGraph, ChannelGroup, External, UnsupportedNetworkError
from nnunet_prune.surgery.prune import PruneResult, caps_from_ratio, prune_channels
from nnunet_prune.surgery.removal import Removal, SurgeryResult, apply_removal
from nnunet_prune.surgery.resize import resize_to_state_dict
from nnunet_prune.surgery.tensors import sync_attributes

__all__ = [
    "ChannelGraph", "ChannelGroup", "External", "PruneResult", "Removal", "SurgeryResult", "UnsupportedNetworkError",
    "apply_removal", "build_channel_graph", "caps_from_ratio", "prune_channels", "resize_to_state_dict",
    "sync_attributes",
]
