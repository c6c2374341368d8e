"""Weight magnitude: zeroing small weights, sparsity accounting by stage, and channels that became dead.

Paper: Yang et al., MIDL 2025. One threshold tau for the whole network: every convolution and
transposed-convolution weight with |w| <= tau becomes 0 (segmentation heads included; norms never; biases only
when asked). Sparsity is counted twice: over the weights that were non-zero before (what pruning did) and over
all parameters of the network (what the file could save).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd

from nnunet_prune.stats import unwrap


def prunable_convs(network: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every convolution and transposed convolution (each module once, by its first name), heads included."""
    return [(n, m) for n, m in unwrap(network).named_modules() if isinstance(m, _ConvNd)]


def stage_of(name: str, n_stages: int) -> str:
    """Stage label of a module name of an nnU-Net U-Net: enc<k>, bottleneck, dec<k> or heads."""
    if ".seg_layers." in f".{name}.":
        return "heads"
    m = re.match(r"(?:decoder\.)?encoder\.stages\.(\d+)\.", name)
    if m:
        s = int(m.group(1))
        return "bottleneck" if s == n_stages - 1 else f"enc{s}"
    if name.startswith(("encoder.stem", "decoder.encoder.stem")):
        return "enc0"
    m = re.match(r"decoder\.(?:stages|transpconvs)\.(\d+)", name)
    if m:
        return f"dec{n_stages - 2 - int(m.group(1))}"
    return "other"


def stage_order(n_stages: int) -> list[str]:
    """All stage labels in network order (encoder, bottleneck, decoder, heads): every stage is always listed."""
    return ([f"enc{i}" for i in range(n_stages - 1)] + ["bottleneck"] +
            [f"dec{i}" for i in reversed(range(n_stages - 1))] + ["heads"])


def number_of_stages(network: nn.Module) -> int:
    return len(unwrap(network).encoder.stages)


@dataclass
class StageSparsity:
    weights: int = 0
    zero_before: int = 0
    zero_after: int = 0

    @property
    def pruned(self) -> int:
        return self.zero_after - self.zero_before

    @property
    def sparsity_of_nonzero(self) -> float:
        """Fraction of the weights that were non-zero before and are zero now."""
        nonzero = self.weights - self.zero_before
        return self.pruned / nonzero if nonzero else 0.0

    @property
    def sparsity(self) -> float:
        return self.zero_after / self.weights if self.weights else 0.0


@dataclass
class SparsityStats:
    """Result of one magnitude pruning of one network."""

    tau: float
    total_parameters: int  # every parameter of the network (norms, biases included)
    prunable: StageSparsity  # the tensors the threshold applies to
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


def thresholds(network: nn.Module, tau: float, per_layer_normalised: bool = False) -> dict[nn.Module, float]:
    """The threshold of every prunable tensor: tau itself, or tau x RMS(weight) of that tensor (scale-free:
    small-weight layers are not wiped out by a threshold tuned for large-weight ones)."""
    out = {}
    for _, m in prunable_convs(network):
        if per_layer_normalised:
            rms = m.weight.detach().float().square().mean().sqrt().item()
            out[m] = tau * rms
        else:
            out[m] = tau
    return out


@torch.no_grad()
def apply_magnitude_pruning(network: nn.Module, tau: float, prune_bias: bool = False,
                            per_layer_normalised: bool = False) -> SparsityStats:
    """Zero every conv / transposed-conv weight with |w| <= tau in place (biases too if ``prune_bias``)."""
    if tau < 0:
        raise ValueError("tau must be >= 0")
    net = unwrap(network)
    n_stages = number_of_stages(net)
    stages = OrderedDict((s, StageSparsity()) for s in stage_order(n_stages))
    total = StageSparsity()
    biases_pruned = 0
    limits = thresholds(net, tau, per_layer_normalised)
    for name, m in prunable_convs(net):
        w = m.weight
        before = int((w == 0).sum())
        w.masked_fill_(w.abs() <= limits[m], 0.0)
        after = int((w == 0).sum())
        st = stages.setdefault(stage_of(name, n_stages), StageSparsity())
        for s in (st, total):
            s.weights += w.numel()
            s.zero_before += before
            s.zero_after += after
        if prune_bias and m.bias is not None:
            b0 = int((m.bias == 0).sum())
            m.bias.masked_fill_(m.bias.abs() <= limits[m], 0.0)
            biases_pruned += int((m.bias == 0).sum()) - b0
    n_params = sum(p.numel() for p in net.parameters())
    return SparsityStats(tau, n_params, total, stages, biases_pruned)


def weight_masks(network: nn.Module) -> dict[nn.Module, torch.Tensor]:
    """Boolean masks of the non-zero weights of every prunable tensor (to hold a zero pattern fixed)."""
    return {m: m.weight.detach() != 0 for _, m in prunable_convs(network)}


@torch.no_grad()
def reapply_masks(masks: dict[nn.Module, torch.Tensor]) -> None:
    for m, mask in masks.items():
        m.weight.mul_(mask.to(m.weight.dtype))


def dead_channels(graph) -> dict[str, list[int]]:
    """Channels no consumer reads: every consumer's input slice for the channel is all zero.

    Removing them changes no output (the oracle of the surgery layer), so an exporter may always remove them.
    A filter whose own weights are all zero is *not* dead: after its norm it still emits the constant bias beta.
    """
    out = {}
    for g in graph:
        alive = torch.zeros(g.size, dtype=torch.bool)
        for c in g.consumers:
            offset = graph.input_offset(c, g)
            w = c.weight.detach()
            dim = 0 if isinstance(c, _ConvTransposeNd) else 1
            sl = w.narrow(dim, offset, g.size).ne(0)
            alive |= sl.transpose(0, dim).reshape(g.size, -1).any(dim=1).cpu()
        dead = (~alive).nonzero().flatten().tolist()
        if dead:
            out[g.name] = dead
    return out
