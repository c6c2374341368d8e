"""Transforms the tools apply to a loaded network (layer 5): a method's decision, applied by the surgery layer.

``export`` is load -> transform -> verify -> write, and the sweep prunes each fold for each tau: both call these,
so a tool never re-implements a method or a surgery.
"""

from __future__ import annotations

from torch import nn

from nnunet_prune.methods.magnitude import MagnitudeMethod, MagnitudeSettings
from nnunet_prune.surgery import apply_removal, build_channel_graph
from nnunet_prune.surgery.masks import SparsityStats


def magnitude_prune(network: nn.Module, tau: float, prune_bias: bool = False, per_layer_normalised: bool = False
                    ) -> SparsityStats:
    """Zero every prunable weight with |w| <= tau in place (:class:`~nnunet_prune.methods.magnitude.MagnitudeMethod`,
    the same decision the ``nnUNetTrainerMagnitude*`` trainers make); returns the sparsity by stage.

    Raises:
        NnUNetPruneError: invalid settings (tau < 0, not finite).
    """
    settings = MagnitudeSettings(tau=tau, prune_bias=prune_bias, per_layer_normalised=per_layer_normalised).validate()
    graph = build_channel_graph(network)
    return apply_removal(network, MagnitudeMethod(settings).start(network, graph), graph=graph).sparsity


def remove_dead_channels(network: nn.Module) -> int:
    """Remove the channels no consumer reads (no output changes); returns how many were removed."""
    graph = build_channel_graph(network)
    dead = graph.dead_channels()
    graph.prune(dead)
    return sum(len(v) for v in dead.values())


def remove_masked_blocks(network: nn.Module) -> int:
    """Delete the blocks that are masked (PSP-Seg branches still masked when training ended: they compute nothing,
    so no output changes); returns how many. Architectures without masks: 0."""
    from nnunet_prune.surgery import architectures

    masked = architectures.masked_blocks(network)
    if masked:
        architectures.of(network).remove_blocks(network, masked)
    return len(masked)
