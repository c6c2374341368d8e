"""What a method decided to remove, and one call that applies it.

A :class:`Removal` is the single answer every pruning method gives (channels of coupling groups, individual
weights, whole blocks); :func:`apply_removal` is the single place that turns it into tensor changes, used by the
trainers' generic driver and by the tools (export, sweep).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from nnunet_prune.core.stats import unwrap
from nnunet_prune.surgery.architectures import build_channel_graph, of
from nnunet_prune.surgery.blocks import BlockRemovalResult
from nnunet_prune.surgery.graph import ChannelGraph, UnsupportedNetworkError
from nnunet_prune.surgery.masks import SparsityStats, apply_weight_masks
from nnunet_prune.surgery.prune import PruneResult, prune_channels


@dataclass
class Removal:
    """What to remove. Any part may be empty.

    * ``channels``: group name -> channel indices (most removable first: caps and ``min_width`` clip the tail);
    * ``weights`` / ``biases``: conv module -> bool keep-mask shaped like the tensor (unstructured pruning);
    * ``blocks``: module paths of whole blocks to delete (the architecture's ``removable_blocks``: a U-Net's
      :func:`~nnunet_prune.surgery.blocks.removable_blocks`, PSP-Seg's branches);
    * ``mask_blocks`` / ``restore_blocks``: blocks to switch off with their weights kept, or back on (PSP-Seg's
      masked-then-pruned branches; architectures with ``mask_blocks`` only);
    * ``tau``: the threshold behind the masks, for the record.
    """

    channels: dict[str, list[int]] = field(default_factory=dict)
    weights: dict[nn.Module, torch.Tensor] = field(default_factory=dict)
    biases: dict[nn.Module, torch.Tensor] = field(default_factory=dict)
    blocks: list[str] = field(default_factory=list)
    tau: float = float("nan")
    mask_blocks: list[str] = field(default_factory=list)
    restore_blocks: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.channels or self.weights or self.biases or self.blocks or self.mask_blocks
                    or self.restore_blocks)


@dataclass
class SurgeryResult:
    """What :func:`apply_removal` did (parts that were not requested are None)."""

    channels: PruneResult | None = None
    sparsity: SparsityStats | None = None
    blocks: BlockRemovalResult | None = None
    masked: list[str] = field(default_factory=list)  # blocks switched off by this call
    restored: list[str] = field(default_factory=list)  # blocks switched back on by this call

    @property
    def structure_changed(self) -> bool:
        """Whether shapes or modules changed (wrappers and the channel graph must be rebuilt)."""
        return bool((self.channels and self.channels.changed) or (self.blocks and self.blocks.changed))


def apply_removal(network: nn.Module, removal: Removal, *, graph: ChannelGraph | None = None,
                  optimizer: torch.optim.Optimizer | None = None, min_width: int = 1,
                  min_keep: Mapping[str, int] | None = None) -> SurgeryResult:
    """Apply a :class:`Removal` in place: weight masks, then channels (optimizer state sliced), then restored and
    masked blocks, then deleted blocks (parameters dropped from the optimizer), the block operations being those of
    the network's architecture (:mod:`~nnunet_prune.surgery.architectures`). ``graph`` must be the current graph of
    ``network`` if given.

    Raises:
        UnsupportedNetworkError: a network whose class is not registered, before anything changed.
        ValueError, IndexError, UnsupportedNetworkError: an invalid request (e.g. masks for an architecture that
            has none), before anything changed in its part.
    """
    net = unwrap(network)
    arch = of(net)  # the registry is the only door, also for a caller that brings its own graph
    result = SurgeryResult()
    if removal.weights or removal.biases:
        result.sparsity = apply_weight_masks(net, removal.weights, removal.biases, tau=removal.tau, graph=graph)
    if removal.channels:
        graph = graph if graph is not None else build_channel_graph(net)
        result.channels = prune_channels(graph, removal.channels, optimizer=optimizer, min_width=min_width,
                                         min_keep=min_keep)
    if removal.mask_blocks or removal.restore_blocks or removal.blocks:
        if removal.mask_blocks or removal.restore_blocks:
            if arch.mask_blocks is None:
                raise UnsupportedNetworkError(f"{type(net).__name__} has no blocks that can be masked")
            result.restored = arch.mask_blocks(net, removal.restore_blocks, True)
            result.masked = arch.mask_blocks(net, removal.mask_blocks, False)
        if removal.blocks:
            result.blocks = arch.remove_blocks(net, removal.blocks, optimizer)
    return result
