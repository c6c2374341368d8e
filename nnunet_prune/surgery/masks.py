"""Unstructured masks: zero individual weights, hold a zero pattern fixed, count sparsity by stage.

The mechanics behind magnitude pruning (the decision, which weights, is a criterion's:
:mod:`nnunet_prune.criteria.magnitude`). Masks are boolean tensors shaped like the weight, ``True`` = keep.
Sparsity is counted twice: over the weights that were non-zero before (what pruning did) and over all parameters
of the network (what a file could save), and per stage of the U-Net (:mod:`nnunet_prune.surgery.layout`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd

from nnunet_prune.core.stats import count_parameters, unwrap
from nnunet_prune.surgery.architectures import build_channel_graph
from nnunet_prune.surgery.graph import ChannelGraph
from nnunet_prune.surgery.layout import conv_stages, number_of_levels, stage_labels


def prunable_convs(network: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every convolution and transposed convolution (each module once, by its first name), heads included: the
    tensors unstructured pruning applies to (norms never)."""
    return [(n, m) for n, m in unwrap(network).named_modules() if isinstance(m, _ConvNd)]


@dataclass
class StageSparsity:
    """Zero counts of the prunable weights of one stage (or of all of them)."""

    weights: int = 0
    zero_before: int = 0
    zero_after: int = 0

    @property
    def pruned(self) -> int:
        """Weights zeroed by this pruning (zeros already present not counted)."""
        return self.zero_after - self.zero_before

    @property
    def sparsity_of_nonzero(self) -> float:
        """Fraction of the weights that were non-zero before and are zero now."""
        nonzero = self.weights - self.zero_before
        return self.pruned / nonzero if nonzero else 0.0

    @property
    def sparsity(self) -> float:
        """Fraction of the weights that are zero now."""
        return self.zero_after / self.weights if self.weights else 0.0


@dataclass
class SparsityStats:
    """What one application of weight masks did to one network."""

    tau: float
    total_parameters: int  # every parameter of the network (norms, biases included)
    prunable: StageSparsity  # the tensors the masks apply to
    stages: OrderedDict = field(default_factory=OrderedDict)  # stage label -> StageSparsity (every stage listed)
    biases_pruned: int = 0

    @property
    def sparsity_of_nonzero(self) -> float:
        """Newly zeroed / weights that were non-zero before (zeros already present are not counted as pruned)."""
        return self.prunable.sparsity_of_nonzero

    @property
    def sparsity_all_parameters(self) -> float:
        """Zeros in the pruned tensors after pruning / all parameters of the network."""
        return (self.prunable.zero_after + self.biases_pruned) / self.total_parameters if self.total_parameters \
            else 0.0

    def as_dict(self) -> dict:
        """JSON form (``magnitude_pruning.json``, sweep state)."""
        return {
            "tau": self.tau,
            "sparsity_of_nonzero_weights": self.sparsity_of_nonzero,
            "sparsity_of_all_parameters": self.sparsity_all_parameters,
            "prunable_weights": self.prunable.weights,
            "zero_before": self.prunable.zero_before,
            "zero_after": self.prunable.zero_after,
            "total_parameters": self.total_parameters,
            "stages": {k: {"weights": v.weights, "zero_before": v.zero_before, "zero_after": v.zero_after,
                           "sparsity_of_nonzero": v.sparsity_of_nonzero} for k, v in self.stages.items()},
        }


@torch.no_grad()
def apply_weight_masks(network: nn.Module, weight_masks: Mapping[nn.Module, torch.Tensor],
                       bias_masks: Mapping[nn.Module, torch.Tensor] | None = None, tau: float = float("nan"),
                       graph: ChannelGraph | None = None) -> SparsityStats:
    """Zero the weights (biases) where the masks are False, in place, and count what changed per stage.

    Args:
        network: a U-Net the channel graph supports (stages are read off it).
        weight_masks: conv module -> bool tensor shaped like its weight (True = keep); modules not listed keep
            their weights but are counted.
        bias_masks: conv module -> bool tensor shaped like its bias.
        tau: the threshold behind the masks, recorded in the result.
        graph: the network's current channel graph, if the caller has it (else it is built for the stages).
    Returns:
        :class:`SparsityStats` with every stage listed (:func:`~nnunet_prune.surgery.layout.stage_labels`).
    """
    net = unwrap(network)
    graph = graph if graph is not None else build_channel_graph(net)
    where = conv_stages(graph)
    stages = OrderedDict((s, StageSparsity()) for s in stage_labels(number_of_levels(graph)))
    total = StageSparsity()
    biases_pruned = 0
    for _, m in prunable_convs(net):
        w = m.weight
        before = int((w == 0).sum())
        if m in weight_masks:
            w.mul_(weight_masks[m].to(w.dtype))
        after = int((w == 0).sum())
        st = stages.setdefault(where[m].label if m in where else "other", StageSparsity())
        for s in (st, total):
            s.weights += w.numel()
            s.zero_before += before
            s.zero_after += after
        if bias_masks and m in bias_masks and m.bias is not None:
            b0 = int((m.bias == 0).sum())
            m.bias.mul_(bias_masks[m].to(m.bias.dtype))
            biases_pruned += int((m.bias == 0).sum()) - b0
    return SparsityStats(tau, count_parameters(net), total, stages, biases_pruned)


def zero_pattern(network: nn.Module) -> dict[nn.Module, torch.Tensor]:
    """Keep-masks of the currently non-zero weights of every prunable tensor (to hold a zero pattern fixed)."""
    return {m: m.weight.detach() != 0 for _, m in prunable_convs(network)}


@torch.no_grad()
def hold_masks(masks: Mapping[nn.Module, torch.Tensor]) -> None:
    """Re-apply keep-masks after an optimizer step (weights that were zeroed stay zero)."""
    for m, mask in masks.items():
        m.weight.mul_(mask.to(m.weight.dtype))
