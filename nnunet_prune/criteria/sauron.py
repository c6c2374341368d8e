"""Sauron's feature-map distances (arXiv:2209.13590 §3.2-3.3).

Shapes: feature maps are (B, C, *spatial) for 2D or 3D. Distances are root-mean-square differences over the
pooled map, so layers at different resolutions are comparable.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-8


def pool(feature_map: torch.Tensor, omega: int) -> torch.Tensor:
    """phi(O; omega): average pooling with window and stride omega (clipped to axes shorter than omega)."""
    spatial = feature_map.shape[2:]
    kernel = tuple(max(1, min(omega, s)) for s in spatial)
    if all(k == 1 for k in kernel):
        return feature_map
    pooling = F.avg_pool2d if len(spatial) == 2 else F.avg_pool3d
    return pooling(feature_map, kernel, kernel)


def minmax_normalise(pooled: torch.Tensor) -> torch.Tensor:
    """Scale every (sample, channel) map to [0, 1] over all its spatial axes; a constant map becomes 0."""
    flat = pooled.flatten(2)
    lo = flat.amin(dim=2, keepdim=True)
    hi = flat.amax(dim=2, keepdim=True)
    return ((flat - lo) / (hi - lo + EPS)).view_as(pooled)


def rms_distance_to(pooled: torch.Tensor, reference: int) -> torch.Tensor:
    """(B, C): RMS over space of every channel's difference to channel ``reference``."""
    flat = pooled.flatten(2)
    return (flat - flat[:, reference:reference + 1]).square().mean(dim=2).add(EPS).sqrt() \
        .masked_fill(_onehot(flat.shape[1], reference, flat.device)[None], 0.0)


def _onehot(n: int, i: int, device) -> torch.Tensor:
    m = torch.zeros(n, dtype=torch.bool, device=device)
    m[i] = True
    return m


def delta_opt_layer(pooled: torch.Tensor) -> torch.Tensor:
    """Eq. (2) for one layer: mean over batch and channels of the distance of every min-max normalised channel
    to channel 0 (the reference t). A single-channel layer contributes 0."""
    if pooled.shape[1] < 2:
        return pooled.new_zeros(())
    return rms_distance_to(minmax_normalise(pooled), 0).mean()


def delta_opt(pooled_maps: list[torch.Tensor]) -> torch.Tensor | None:
    """Eq. (2): delta_opt averaged over layers (None if there are no layers)."""
    if not pooled_maps:
        return None
    return torch.stack([delta_opt_layer(p) for p in pooled_maps]).mean()


def prune_distances(pooled: torch.Tensor, reference: int) -> torch.Tensor:
    """Eq. (3) before normalisation, for one batch: (C,) mean over samples of the distance of every channel to
    channel ``reference`` on the raw (not min-max normalised) pooled maps."""
    return rms_distance_to(pooled, reference).mean(dim=0)


def normalise_by_max(distances: torch.Tensor) -> torch.Tensor:
    """delta_prune = d / max(d) in [0, 1] (all zeros if every channel equals the reference)."""
    top = distances.max()
    return distances / top if top > 0 else torch.zeros_like(distances)
