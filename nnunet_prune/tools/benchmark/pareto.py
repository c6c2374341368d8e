"""The benchmark's ``pareto.png``: Dice against MACs, the fastest CPU latency and parameters, with the Pareto front
that takes no step within the Dice noise."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from nnunet_prune.tools.benchmark.rows import MethodResult


def pareto_front(points: Sequence[tuple[float, float]], min_gain: float = 0.0) -> list[int]:
    """Indices of the Pareto front of ``points`` ((cost, Dice) pairs), sorted by cost: the cheapest point, then
    every point that beats the Dice of all cheaper front points by more than ``min_gain`` (0: the points no other
    point beats, cost no higher and Dice no lower; the Dice noise: a costlier point whose Dice is higher only
    within the noise is no gain)."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front: list[int] = []
    for i in order:
        if not front or points[i][1] > points[front[-1]][1] + min_gain:
            front.append(i)
    return front


def dice_noise(rows: Sequence[MethodResult]) -> tuple[float | None, int]:
    """(the largest Dice spread between the seeds of any row, the most seeds a row has): the noise a Dice
    difference must exceed; (None, 1) with one run per method."""
    spreads = [r.dice_spread for r in rows if getattr(r, "dice_spread", None) is not None]
    runs = max((len(getattr(r, "seeds", None) or []) for r in rows), default=1)
    return (max(spreads) if spreads else None), max(runs, 1)


def plot_pareto(rows: Sequence[MethodResult], file: str | os.PathLike, noise: float | None = None) -> bool:
    """``pareto.png``: Dice against MACs per patch, the fastest CPU latency and parameters (log scales, plain
    ticks), one panel each, every method a point labelled where it covers no other label, and the Pareto front
    (:func:`pareto_front`) a dashed line that takes no step smaller than the Dice noise: ``noise`` (None: the seeds'
    spread of :func:`dice_noise`, else :data:`~nnunet_prune.core.plotting.DICE_RESOLUTION`). The Dice axis spans at
    least :data:`~nnunet_prune.core.plotting.MIN_DICE_SPAN` and the plot states the noise (or that it is unknown); rows
    with a seed spread get error bars. A method whose latency is not comparable is a hollow grey point marked
    'n/c' in the latency panel and stays off its front. Returns False (no file) without two measured rows."""
    from nnunet_prune.core.plotting import (
        DICE_RESOLUTION,
        dice_limits,
        new_figure,
        noise_text,
        place_labels,
        plot_style,
        save,
    )

    rows = [r for r in rows if r.status == "ok" and r.dice is not None and r.macs]
    if len(rows) < 2:
        return False
    runs = 1
    if noise is None:
        noise, runs = dice_noise(rows)
    spread = [getattr(r, "dice_spread", None) or 0.0 for r in rows]
    limits = dice_limits([r.dice + s for r, s in zip(rows, spread)] + [r.dice - s for r, s in zip(rows, spread)],
                         noise)
    axes_def = [("GMAC per patch", lambda r: r.macs / 1e9, False),
                ("CPU ms per patch (fastest runtime)", lambda r: r.fastest_ms or r.cpu_ms, True),
                ("parameters (M)", lambda r: r.parameters / 1e6, False)]
    with plot_style():
        fig = new_figure(figsize=(15, 5.0), layout="constrained")
        panels = []
        for ax, (label, cost, latency) in zip(fig.subplots(1, 3), axes_def):
            panels.append((ax, _pareto_panel(ax, rows, cost, latency,
                                             noise if noise is not None else DICE_RESOLUTION)))
            ax.set_xlabel(label + " (log)")
            ax.set_ylim(*limits)
        fig.suptitle("nnunet-prune benchmark: Dice against cost\n"
                     + noise_text(noise, runs if noise is not None else None, "seeds", front=True), fontsize=10)
        for ax, labels in panels:  # last: the layout is final
            place_labels(ax, [(x, y) for x, y, _ in labels], [t for _, _, t in labels], fontsize=7, marker_pt=4)
        save(fig, str(file))
    return True


def _pareto_panel(ax, rows: Sequence[MethodResult], cost: Callable[[MethodResult], float | None], latency: bool,
                  min_gain: float) -> list[tuple[float, float, str]]:
    """One panel of :func:`plot_pareto`: the points (error bars where a seed spread is known; hollow grey for a
    latency that is not comparable, in the latency panel), the front, a log x axis with plain ticks. Returns the
    labels to place, (x, Dice, text)."""
    from matplotlib import colormaps

    from nnunet_prune.core.plotting import readable_log_axis
    from nnunet_prune.core.timing import NOT_COMPARABLE

    colors = colormaps["tab20"]
    drawn = [(i, r, cost(r)) for i, r in enumerate(rows) if cost(r)]
    comparable = [(i, r, x) for i, r, x in drawn if not (latency and r.latency_not_comparable)]
    labels = []
    for i, r, x in drawn:
        nc = latency and r.latency_not_comparable
        spread = getattr(r, "dice_spread", None)
        if spread:
            ax.errorbar([x], [r.dice], yerr=[spread], fmt="none", ecolor="0.6", elinewidth=0.8, capsize=2, zorder=2)
        ax.scatter([x], [r.dice], s=34, zorder=3, color="none" if nc else colors(i % 20),
                   edgecolors="0.5" if nc else "white", linewidths=1.0 if nc else 0.5)
        labels.append((x, r.dice, f"{r.label} ({NOT_COMPARABLE})" if nc else r.label))
    front = [comparable[k] for k in pareto_front([(x, r.dice) for _, r, x in comparable], min_gain)]
    if len(front) > 1:
        ax.plot([x for _, _, x in front], [r.dice for _, r, _ in front], "k--", lw=1, zorder=2,
                label=f"Pareto front (steps > {min_gain:.3g} Dice)")
        ax.legend(loc="lower right", fontsize=7)
    if latency and len(comparable) < len(drawn):
        ax.set_title(f"{NOT_COMPARABLE}: latency not comparable (busy machine or unstable runs; see benchmark.md)",
                     fontsize=7, color="0.35")
    ax.set_xscale("log")
    xs = [x for _, _, x in drawn]
    ax.set_xlim(min(xs) / 1.5, max(xs) * 1.5)
    readable_log_axis(ax, "x")
    ax.set_ylabel("Dice (foreground mean)")
    ax.grid(True, alpha=0.3)
    return labels
