"""Filter importance from weights: L1 and L2 norms of the filters, network slimming's |gamma| (structured-pruning
paper, papers/structured-pruning-pathology.txt, "pruning heuristics"; Li et al. 2017 for the filter norms; Liu et al.
2017 for network slimming).

Pure scores of one coupling group (its channels are removed together): (C,) float64 per group, larger = more
important. Nothing here changes a tensor.

* :func:`filter_norms` -- the Lp norm of each output channel's weights. A group produced by several convolutions
  (the summands of a residual addition) is scored by the norm of its filters concatenated over those producers:
  L1 sums the producers' L1 norms, L2 is the root of the sum of their squared L2 norms (a channel is small only if it
  is small in every producer it comes from). Biases are not part of a filter.
* :func:`slimming_scores` -- |gamma| of the group's norm layers (BatchNorm and InstanceNorm alike: nnU-Net uses
  InstanceNorm, which general pruning libraries leave out); several norms (a residual group): the largest |gamma|.
  Groups without a norm (transposed convolutions' outputs) have no scaling factor and are not ranked
  (:func:`can_score`).
* :func:`gamma_l1` -- sum |gamma| over norm layers: the sparsity term lambda * sum |gamma| of network slimming's
  training (Liu et al. 2017, eq. 1).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from nnunet_prune.core.conv import out_axis
from nnunet_prune.surgery.graph import ChannelGroup

CRITERIA = ("l1", "l2", "slimming")


def filter_norms(group: ChannelGroup, p: int) -> np.ndarray:
    """(C,) the Lp norm (p = 1 or 2) of each channel's filter weights, concatenated over the group's producers (a
    conv's weight (C, in, *k): row c; a transposed conv's (in, C, *k): column c).

    Raises:
        ValueError: p is not 1 or 2.
    """
    if p not in (1, 2):
        raise ValueError(f"p must be 1 or 2, got {p}")
    total = None
    for m in group.producers:
        w = m.weight.detach().double()
        w = w.transpose(0, out_axis(m))  # output channels first
        part = w.abs().flatten(1).sum(1) if p == 1 else w.square().flatten(1).sum(1)
        total = part if total is None else total + part
    out = total if p == 1 else total.sqrt()
    return out.cpu().numpy()


def slimming_scores(group: ChannelGroup) -> np.ndarray:
    """(C,) |gamma| of the group's norm layers (the largest over several norms).

    Raises:
        ValueError: the group has no norm layer with an affine weight (slimming has nothing to rank).
    """
    gammas = [n.weight.detach().double().abs() for n in group.norms if getattr(n, "weight", None) is not None]
    if not gammas:
        raise ValueError(f"group {group.name} has no norm layer with an affine weight: network slimming needs "
                         f"affine norms (InstanceNorm or BatchNorm with affine=True)")
    return torch.stack(gammas).max(0).values.cpu().numpy()


def can_score(group: ChannelGroup, criterion: str) -> bool:
    """Whether ``criterion`` ranks ``group``'s channels: filter norms always; slimming only with an affine norm (a
    transposed convolution's output has none in nnU-Net's U-Nets: under slimming those groups are not pruned, as in
    Liu et al., who prune only channels with a scaling factor)."""
    return criterion != "slimming" or any(getattr(n, "weight", None) is not None for n in group.norms)


def group_scores(group: ChannelGroup, criterion: str) -> np.ndarray:
    """(C,) the scores of ``criterion`` ('l1', 'l2' or 'slimming') for one group.

    Raises:
        ValueError: an unknown criterion, or slimming on a group without affine norms.
    """
    if criterion == "l1":
        return filter_norms(group, 1)
    if criterion == "l2":
        return filter_norms(group, 2)
    if criterion == "slimming":
        return slimming_scores(group)
    raise ValueError(f"unknown criterion {criterion!r} (known: {', '.join(CRITERIA)})")


def gamma_l1(norms: Iterable[nn.Module]) -> torch.Tensor:
    """sum |gamma| over the affine weights of ``norms`` (a differentiable scalar).

    Raises:
        ValueError: no norm in ``norms`` has an affine weight.
    """
    gammas = [n.weight for n in norms if getattr(n, "weight", None) is not None]
    if not gammas:
        raise ValueError("no norm layer with an affine weight")
    return torch.stack([g.abs().sum() for g in gammas]).sum()

