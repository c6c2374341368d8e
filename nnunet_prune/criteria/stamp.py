"""STAMP's channel scores and targeted-dropout probabilities (Dinsdale et al., STAMP; the Lean U-Net paper
(papers/lunet.txt) §II-B: "removes the channel with the lowest normalized activations").

Shapes: feature maps are (B, C, *spatial), 2D or 3D; scores are (C,) per layer. Pure functions: no network, no
schedule, no state.

* :func:`activation_l2` -- the L2 norm of each channel's map, averaged over the batch (one batch's statistic; the
  caller averages it over many training batches);
* :func:`normalise_per_layer` -- a layer's scores divided by their L2 norm, so layers of different resolution and
  width are ranked on one scale (a wider layer's channels get smaller values on average, which is why STAMP prunes
  the widest layers first: LUnet paper §III-A);
* :func:`combine_points` -- one score per channel of a coupling group measured at several points;
* :func:`global_ranking` / :func:`rank_weights` -- the lowest scores first, and each channel's rank weight
  (1 for the next channel to remove, 0 for the last);
* :func:`layer_dropout` / :func:`width_dropout` -- targeted dropout probabilities per layer
  (p_l = p_base * q_l / max q).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

EPS = 1e-12


def activation_l2(feature_map: torch.Tensor) -> torch.Tensor:
    """(B, C, *spatial) -> (C,): the L2 norm of every channel's map, averaged over the B samples (float32)."""
    if feature_map.dim() < 3:
        raise ValueError(f"expected a feature map (B, C, *spatial), got shape {tuple(feature_map.shape)}")
    return feature_map.detach().float().flatten(2).norm(dim=2).mean(dim=0)


def normalise_per_layer(scores: torch.Tensor | np.ndarray) -> np.ndarray:
    """(C,) -> (C,) float64: the scores divided by their L2 norm (all zeros stay zeros)."""
    s = np.asarray(scores.detach().cpu() if torch.is_tensor(scores) else scores, dtype=np.float64)
    return s / max(float(np.linalg.norm(s)), EPS)


def combine_points(per_point: Sequence[np.ndarray]) -> np.ndarray:
    """Normalised scores of one group's channels measured at several points (e.g. the summands of a residual
    addition), each (C,), -> (C,): the maximum (a channel is unimportant only where it is unimportant everywhere).

    Raises:
        ValueError: no point, or points of different widths.
    """
    if not per_point:
        raise ValueError("no scores to combine")
    return np.stack([np.asarray(p, dtype=np.float64) for p in per_point]).max(axis=0)


def global_ranking(scores: Mapping[str, np.ndarray]) -> list[tuple[str, int, float]]:
    """Every channel of every layer as (layer, channel, score), lowest score first (ties: layer order, then
    channel)."""
    entries = [(name, int(c), float(v)) for name, s in scores.items() for c, v in enumerate(s)]
    order = sorted(range(len(entries)), key=lambda i: (entries[i][2], i))
    return [entries[i] for i in order]


def rank_weights(scores: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per layer (C,): 1 - rank / (N - 1) over the global ranking of all N channels (1 for the lowest score, the
    next to be removed; 0 for the highest). A single channel in all gets weight 1."""
    ranking = global_ranking(scores)
    n = len(ranking)
    weights = {name: np.zeros(len(s)) for name, s in scores.items()}
    for rank, (name, channel, _) in enumerate(ranking):
        weights[name][channel] = 1.0 - rank / (n - 1) if n > 1 else 1.0
    return weights


def layer_dropout(weights: Mapping[str, np.ndarray], p_base: float) -> dict[str, float]:
    """Targeted dropout per layer: p_l = p_base * q_l / max_l q_l, where q_l is the mean rank weight of layer l's
    channels (:func:`rank_weights`): the layer whose channels are closest to removal drops with p_base, a layer
    ranked safest with about 0."""
    q = {name: float(np.mean(w)) if len(w) else 0.0 for name, w in weights.items()}
    top = max(q.values(), default=0.0)
    return {name: p_base * v / top if top > 0 else 0.0 for name, v in q.items()}


def width_dropout(widths: Mapping[str, int], p_base: float) -> dict[str, float]:
    """Dropout for a rule without a criterion that removes from the widest layer (LUnet paper §III-C): p_l =
    p_base * width_l / max width, so the channels next in line drop most."""
    top = max(widths.values(), default=0)
    return {name: p_base * w / top if top > 0 else 0.0 for name, w in widths.items()}
