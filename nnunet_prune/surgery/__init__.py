"""Channel surgery for nnU-Net's U-Nets (layer 1: no pruning *decisions* here, only mechanics).

* :func:`build_channel_graph` -- the coupling groups of a PlainConvUNet / ResidualEncoderUNet,
* :meth:`ChannelGraph.prune` / :func:`prune_channels` -- remove channels in place, optimizer state included,
* :func:`resize_to_state_dict` -- give a network the widths stored in a state dict.
"""

from nnunet_prune.surgery.graph import (
    ChannelGraph,
    ChannelGroup,
    External,
    UnsupportedNetworkError,
    build_channel_graph,
)
from nnunet_prune.surgery.prune import PruneResult, prune_channels
from nnunet_prune.surgery.resize import resize_to_state_dict
from nnunet_prune.surgery.tensors import sync_attributes

__all__ = [
    "ChannelGraph", "ChannelGroup", "External", "PruneResult", "UnsupportedNetworkError", "build_channel_graph",
    "prune_channels", "resize_to_state_dict", "sync_attributes",
]
