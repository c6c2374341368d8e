"""Choosing channels from per-group scores, shared by the methods that rank channels globally (STAMP, structured
pruning).

A global ranking compares channels of groups with different widths and scales, so each group's scores are
normalised (divided by their L2 norm over the group's channels). Taking many channels from one ranking at once lets a
group lose almost everything (its scores are all small); taking them one at a time, the chosen group normalised again
after each choice, follows what a run of one-channel steps would do.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from nnunet_prune.criteria.stamp import combine_points, normalise_per_layer


def layer_scores(raw: np.ndarray) -> np.ndarray:
    """(P, C) raw scores of one group measured at P points -> (C,): normalised per point (divided by the point's L2
    norm over the channels), the max over the points."""
    return combine_points([normalise_per_layer(r) for r in raw])


def select_lowest(raw: Mapping[str, np.ndarray], count: int, floors: Mapping[str, int] | None = None
                  ) -> list[tuple[str, int, float]]:
    """The ``count`` lowest-ranked channels, one at a time: after each choice the chosen group's survivors are
    normalised again (:func:`layer_scores`; a layer that lost channels has a smaller norm, so its other channels rank
    higher; without this, one large step can take a whole layer down to one channel). A group keeps at least
    ``floors[name]`` channels (default and minimum 1). ``raw``: group -> (P, C) scores. Returns (group, channel,
    score at the time it was chosen), in order; fewer than ``count`` when every group is at its floor."""
    floors = {g: max(1, int((floors or {}).get(g, 1))) for g in raw}
    alive = {g: np.ones(r.shape[1], dtype=bool) for g, r in raw.items()}
    current: dict[str, np.ndarray] = {}
    lowest: dict[str, float] = {}

    def refresh(g: str) -> None:
        s = np.full(raw[g].shape[1], np.inf)
        if alive[g].sum() > floors[g]:
            s[alive[g]] = layer_scores(raw[g][:, alive[g]])
        current[g], lowest[g] = s, float(s.min()) if s.size else np.inf

    for g in raw:
        refresh(g)
    order = {g: i for i, g in enumerate(raw)}
    chosen = []
    for _ in range(count):
        candidates = [(v, order[g], g) for g, v in lowest.items() if np.isfinite(v)]
        if not candidates:
            break
        score, _, g = min(candidates)
        c = int(np.argmin(current[g]))
        chosen.append((g, c, score))
        alive[g][c] = False
        refresh(g)
    return chosen
