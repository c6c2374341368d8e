"""Weight magnitude (Yang et al., MIDL 2025, §2): which weights fall below a threshold.

Pure scores: nothing here changes a tensor (:mod:`nnunet_prune.surgery.masks` applies masks) or knows the network's
stages (:mod:`nnunet_prune.surgery.layout`). One threshold tau for the whole network: every convolution and
transposed-convolution weight with |w| <= tau is pruned (segmentation heads included; norms never; biases only
when asked). With ``per_layer_normalised`` the threshold of each tensor is tau x RMS(weight), so layers with small
weights are not wiped out by a threshold tuned for layers with large ones.
"""

from __future__ import annotations

import torch
from torch import nn

from nnunet_prune.surgery.masks import prunable_convs


def thresholds(network: nn.Module, tau: float, per_layer_normalised: bool = False) -> dict[nn.Module, float]:
    """The threshold of every prunable tensor (conv module -> float, in weight units): tau itself, or
    tau x RMS(weight) of that tensor.

    Raises:
        ValueError: tau < 0.
    """
    if tau < 0:
        raise ValueError("tau must be >= 0")
    out = {}
    for _, m in prunable_convs(network):
        if per_layer_normalised:
            rms = m.weight.detach().float().square().mean().sqrt().item()
            out[m] = tau * rms
        else:
            out[m] = tau
    return out


@torch.no_grad()
def magnitude_masks(network: nn.Module, tau: float, per_layer_normalised: bool = False, prune_bias: bool = False
                    ) -> tuple[dict[nn.Module, torch.Tensor], dict[nn.Module, torch.Tensor]]:
    """Keep-masks (True = keep) of |w| > threshold for every prunable weight, and of the biases when
    ``prune_bias`` (else no bias masks). Each mask has its tensor's shape.

    Raises:
        ValueError: tau < 0.
    """
    limits = thresholds(network, tau, per_layer_normalised)
    weights = {m: m.weight.abs() > limit for m, limit in limits.items()}
    biases = {m: m.bias.abs() > limit for m, limit in limits.items() if prune_bias and m.bias is not None}
    return weights, biases
