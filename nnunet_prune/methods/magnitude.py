"""Post-training magnitude pruning with a proxy-Dice sweep (Yang et al., MIDL 2025 §2).

One tau for the whole network: every conv weight with |w| <= tau becomes zero, once, after training
(:class:`MagnitudeMethod`; the trainers ``nnUNetTrainerMagnitude*`` start from a trained dense fold, prune, and
optionally fine-tune with the zero pattern held). For each tau of a sweep every fold of a trained model is pruned
(no retraining); the pruned ensemble predicts the same images as the unpruned one and the proxy Dice between the
two tells how much was lost. This module also holds the sweep's schedule: the tau grid, its refinement around the
critical point, tau values for target sparsities, and the critical point itself. Inference and files are in
:mod:`nnunet_prune.tools.sweep.magnitude`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from nnunet_prune.criteria.magnitude import magnitude_masks
from nnunet_prune.methods.base import MethodSettings, PruningMethod
from nnunet_prune.surgery.graph import ChannelGraph
from nnunet_prune.surgery.removal import Removal

ENV_VAR = "NNUNET_PRUNE_MAGNITUDE"


@dataclass
class MagnitudeSettings(MethodSettings):
    """Magnitude pruning's settings. ``tau`` has no default: a variant class (``nnUNetTrainerMagnitude_tau005``),
    ``plans['nnunet_prune']['magnitude']`` or ``NNUNET_PRUNE_MAGNITUDE='tau=0.005'`` sets it; the sweep's options
    ``--prune-bias`` and ``--per-layer-normalised`` are the settings of the same names, so any point of a sweep can
    be trained as a model."""

    NAME: ClassVar[str] = "Magnitude"
    ENV_VAR: ClassVar[str] = ENV_VAR
    EXAMPLE: ClassVar[str] = "tau=0.005,prune_bias=0,per_layer_normalised=0"

    tau: float | None = None  # threshold, in weight units (or in units of each tensor's RMS, see below)
    prune_bias: bool = False  # zero biases with |b| <= the threshold too
    per_layer_normalised: bool = False  # each tensor's threshold is tau x RMS(weight)

    def problems(self) -> list[str]:
        """tau must be set, finite and >= 0."""
        if self.tau is None:
            return ["tau is required (a threshold >= 0, e.g. 0.005; or use a fixed variant such as "
                    "nnUNetTrainerMagnitude_tau005)"]
        if not math.isfinite(self.tau) or self.tau < 0:
            return [f"tau must be a finite number >= 0, got {self.tau}"]
        return []


class MagnitudeMethod(PruningMethod):
    """Zero every prunable weight with |w| <= tau once, at the start (after the dense weights are loaded); the
    zero pattern is held while fine-tuning. Nothing is decided after epochs."""

    settings_class = MagnitudeSettings
    removes = "weights"
    holds_zero_pattern = True

    def start(self, network: nn.Module, graph: ChannelGraph, progress=None) -> Removal:
        """Keep-masks of |w| > threshold for every prunable weight (and bias, with ``prune_bias``)."""
        s = self.settings
        weights, biases = magnitude_masks(network, s.tau, s.per_layer_normalised, s.prune_bias)
        return Removal(weights=weights, biases=biases, tau=s.tau)

#: the paper's grid: 0 to 0.02 in steps of 0.001
PAPER_GRID = tuple(round(0.001 * i, 3) for i in range(21))
#: default grid for --per-layer-normalised (tau in units of each tensor's RMS)
NORMALISED_GRID = tuple(round(0.1 * i, 1) for i in range(21))


@dataclass
class SweepPoint:
    """One evaluated tau of a sweep: tau, the mean sparsity of the folds (fraction of the weights non-zero before),
    the proxy Dice."""
    tau: float
    sparsity: float  # of the weights non-zero before pruning, mean over folds
    proxy_dice: float


def critical_point(points: Sequence[SweepPoint], threshold: float = 0.95) -> SweepPoint | None:
    """The point of largest sparsity whose proxy Dice is at least ``threshold`` (None if there is none)."""
    ok = [p for p in points if p.proxy_dice >= threshold]
    return max(ok, key=lambda p: (p.sparsity, p.tau)) if ok else None


def first_failure(points: Sequence[SweepPoint], threshold: float = 0.95) -> SweepPoint | None:
    """The smallest tau whose proxy Dice falls below ``threshold``."""
    bad = [p for p in sorted(points, key=lambda p: p.tau) if p.proxy_dice < threshold]
    return bad[0] if bad else None


def extension_tau(points: Sequence[SweepPoint], threshold: float = 0.95, factor: float = 1.5,
                  max_sparsity: float = 0.995) -> float | None:
    """The next tau beyond the grid when no tau so far made the proxy Dice fall below ``threshold`` (the paper's
    grid stops at 0.02; a robust model may not fail by then): the largest tau times ``factor``, until the proxy
    Dice falls or almost every weight is gone. None when nothing more is needed."""
    if not points or first_failure(points, threshold) is not None:
        return None
    last = max(points, key=lambda p: p.tau)
    if last.sparsity >= max_sparsity:
        return None
    return round(last.tau * factor, 9) if last.tau > 0 else None


def refinement_taus(points: Sequence[SweepPoint], threshold: float = 0.95, steps: int = 4) -> list[float]:
    """New tau values between the last tau that keeps proxy Dice >= threshold and the first one that does not
    (``steps`` evenly spaced interior values), so the critical sparsity is located more finely. Empty if the
    crossing is not bracketed by the points evaluated so far."""
    ordered = sorted(points, key=lambda p: p.tau)
    bad = first_failure(ordered, threshold)
    if bad is None:
        return []
    good = [p for p in ordered if p.tau < bad.tau and p.proxy_dice >= threshold]
    if not good:
        return []
    lo, hi = good[-1].tau, bad.tau
    done = {round(p.tau, 9) for p in ordered}
    new = [round(lo + (hi - lo) * (i + 1) / (steps + 1), 9) for i in range(steps)]
    return [t for t in new if t not in done and lo < t < hi]


def taus_for_sparsities(weights: Sequence[torch.Tensor], targets: Sequence[float]) -> list[float]:
    """Thresholds that zero the requested fractions of the non-zero weights (quantiles of |w| pooled over the
    given tensors, e.g. every prunable tensor of every fold)."""
    flat = torch.cat([w.detach().abs().flatten().float().cpu() for w in weights])
    flat = flat[flat > 0]
    if flat.numel() == 0:
        return [0.0 for _ in targets]
    values = np.sort(flat.numpy())
    out = []
    for t in targets:
        if not 0 <= t < 1:
            raise ValueError(f"target sparsity must be in [0, 1), got {t}")
        k = int(np.floor(t * len(values)))
        out.append(float(values[k - 1]) if k > 0 else 0.0)
    return out
