"""What every plot of the package shares: its own style, figures without pyplot, readable labels.

nnU-Net's progress plot calls ``seaborn.set(font_scale=2.5)``, which changes matplotlib's global rcParams for the
whole training process; a caller (a notebook, a script) may have its own settings too. So every plot here is drawn
inside :func:`plot_style` (matplotlib's defaults plus :data:`STYLE`, restored on exit) on a :func:`new_figure` (the
object-oriented API with an Agg canvas: no pyplot, no backend switch, nothing left open).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

#: small, explicit settings on top of matplotlib's defaults (whatever the global state is)
STYLE = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "figure.titlesize": 11,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "savefig.dpi": 120,
}

#: colours of the parts of a U-Net (encoder, bottleneck, decoder), used wherever groups or stages are coloured
PART_COLORS = {"encoder": "tab:blue", "bottleneck": "tab:purple", "decoder": "tab:orange", "heads": "tab:gray"}


@contextlib.contextmanager
def plot_style() -> Iterator[None]:
    """matplotlib's default style plus :data:`STYLE`; the caller's rcParams are restored on exit."""
    import matplotlib.style

    with matplotlib.style.context(["default", STYLE]):
        yield


def new_figure(**kwargs):
    """A ``Figure`` with an Agg canvas (no pyplot: the caller's backend and open figures are untouched).
    Create it inside :func:`plot_style`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def save(fig, file) -> None:
    """Save inside :func:`plot_style`, cropped to what was drawn (nothing cut off)."""
    fig.savefig(file, bbox_inches="tight", pad_inches=0.1)


def integer_ticks(axis) -> None:
    """Integer ticks only (epochs, counts): no 0.5 epochs on short runs."""
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # one epoch: the single tick 0


def words(key: str, labels: dict[str, str] | None = None) -> str:
    """A label for a logged key: from ``labels`` when known, else ``a_b_c`` -> ``a b c``."""
    if labels and key in labels:
        return labels[key]
    return key.replace("_", " ").strip()


def part_of(name: str, names=()) -> str:
    """encoder / bottleneck / decoder for a coupling-group name of :mod:`nnunet_prune.surgery.graph`
    (``enc2.conv1``, ``bottleneck.conv0``, ``up3``, ``dec3.conv0``, residual ``res2`` / ``res1-3``). A residual group
    at the deepest level is the bottleneck's; ``names`` (all groups) tells which level that is."""
    if name.startswith(("dec", "up")):
        return "decoder"
    if name.startswith("bottleneck"):
        return "bottleneck"
    if name.startswith("res"):
        try:
            level = int(name[3:].split("-")[-1])
        except ValueError:
            return "encoder"
        encoder_levels = [int(n[3:].split(".")[0]) for n in names if n.startswith("enc") and n[3:].split(".")[0]
                          .isdigit()]
        if encoder_levels and level > max(encoder_levels):
            return "bottleneck"
    return "encoder"


#: words for the series the trainers log (others: underscores become spaces)
SERIES_LABELS = {
    "num_parameters": "parameters",
    "macs": "MACs per patch",
    "delta_opt": "delta_opt (Sauron regulariser)",
    "sauron_tau": "threshold tau per layer",
    "sauron_layers_raised": "layers whose threshold rose",
}


# ------------------------------------------------------------------------------------------- honest axes and labels
#: the least span of a Dice axis: differences of a few thousandths must not fill a plot
MIN_DICE_SPAN = 0.1
#: Dice differences below this are not drawn as a gain (a Pareto step) when the run-to-run noise is unknown
DICE_RESOLUTION = 0.01


def dice_limits(values, noise: float | None = None, min_span: float = MIN_DICE_SPAN) -> tuple[float, float]:
    """Limits of a Dice axis for ``values`` (each in [0, 1]; NaN / None ignored): the data with a margin, at least
    ``min_span`` wide and at least 4 x ``noise`` (the run-to-run spread, if known), inside [0, 1.02].

    Raises:
        ValueError: no finite value."""
    import math

    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite:
        raise ValueError("no Dice value to scale an axis to")
    lo, hi = min(finite), max(finite)
    span = max((hi - lo) * 1.25, min_span, 4 * (noise or 0.0))
    centre = (lo + hi) / 2
    low, high = centre - span / 2, centre + span / 2
    if low < 0:
        low, high = 0.0, min(1.02, span)
    if high > 1.02:
        low, high = max(0.0, 1.02 - span), 1.02
    return low, high


def noise_text(noise: float | None, runs: int | None = None, what: str = "training runs",
               front: bool = False) -> str:
    """Plain words for the Dice noise a plot can be read against: the measured spread (``noise``, over ``runs``
    runs), or that it is unknown; ``front``: also what a Pareto front leaves out."""
    if noise is None:
        return (f"Dice spread between {what}: not measured (one run each), so small differences may be noise"
                + (f"; the front ignores Dice gains under {DICE_RESOLUTION:g}" if front else ""))
    runs_text = f" over {runs} runs" if runs else ""
    return (f"Dice spread between {what}: +-{noise:.3f}{runs_text}; differences under that are noise"
            + ("; the front ignores smaller Dice gains" if front else ""))


def _nice_values(lo: float, hi: float, mantissas, base: int) -> list[float]:
    import math

    out = []
    k_lo, k_hi = math.floor(math.log(lo, base)) - 1, math.ceil(math.log(hi, base)) + 1
    for k in range(k_lo, k_hi + 1):
        for m in mantissas:
            v = float(f"{m}e{k}") if base == 10 else m * 2.0 ** k
            out.append(v)
    return sorted(set(out))


#: candidate tick values of a log axis, coarsest first (mantissas of a power of the base)
_LOG_MANTISSAS = {10: ((1,), (1, 2, 5), (1, 2, 3, 5, 7), (1, 1.5, 2, 3, 4, 5, 6, 7, 8, 9)),
                  2: ((1,), (1, 1.5), (1, 1.25, 1.5, 1.75))}


def log_ticks(lo: float, hi: float, base: int = 10) -> list[float]:
    """Tick values for a log axis over [lo, hi] (lo > 0): the coarsest of 1 / 1-2-5 / 1-2-3-5-7 / every digit (base
    10; powers of two and their halves for base 2) that gives at least three ticks inside; where even the finest
    gives fewer than two, the nearest values below ``lo`` and above ``hi`` are added (the caller widens the axis).

    Raises:
        ValueError: lo <= 0 or hi < lo, or base not 2 or 10."""
    if not 0 < lo <= hi or base not in _LOG_MANTISSAS:
        raise ValueError(f"log ticks need 0 < lo <= hi and base 2 or 10 (got {lo}, {hi}, {base})")
    tol = 1e-9 * hi
    for mantissas in _LOG_MANTISSAS[base]:
        inside = [v for v in _nice_values(lo, hi, mantissas, base) if lo - tol <= v <= hi + tol]
        if len(inside) >= 3:
            return inside
    values = _nice_values(lo, hi, _LOG_MANTISSAS[base][-1], base)
    inside = [v for v in values if lo - tol <= v <= hi + tol]
    if len(inside) >= 2:
        return inside
    below = [v for v in values if v < lo - tol][-1:]
    above = [v for v in values if v > hi + tol][:1]
    return below + inside + above


def plain_number(value: float) -> str:
    """A tick label without exponent notation: 0.05, 2, 1,500, 20,000."""
    import numpy as np

    if value == 0:
        return "0"
    if abs(value) >= 1e4:
        return f"{value:,.0f}"
    return np.format_float_positional(float(f"{value:.6g}"), trim="-")


def readable_log_axis(ax, which: str = "x", base: int = 10, linthresh: float | None = None) -> list[float]:
    """Plain decimal ticks (no ``5x10^-1``) on a log axis of ``ax`` (``which`` "x" or "y"), at least two of them
    labelled, over the axis's current limits (widened to the nearest ticks where the data spans less than two);
    minor ticks unlabelled. With ``linthresh`` (a symlog axis) 0 is a tick too and the log ticks start there.
    Call it after the data is drawn and the limits are final. Returns the tick values."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    axis = ax.xaxis if which == "x" else ax.yaxis
    get, set_ = (ax.get_xlim, ax.set_xlim) if which == "x" else (ax.get_ylim, ax.set_ylim)
    lo, hi = sorted(get())
    start = max(lo, linthresh) if linthresh else lo
    if start <= 0:
        start = hi / 1e3
    ticks = log_ticks(start, max(hi, start), base if linthresh is None else 10)
    if linthresh:
        ticks = [0.0, *ticks] if lo <= 0 <= hi else ticks
    new_lo, new_hi = min(lo, ticks[0]), max(hi, ticks[-1])
    if (new_lo, new_hi) != (lo, hi):
        set_(new_lo, new_hi)
    axis.set_major_locator(FixedLocator(ticks))
    axis.set_major_formatter(FuncFormatter(lambda v, _: plain_number(v)))
    axis.set_minor_formatter(NullFormatter())
    return ticks


def _candidates() -> list[tuple[float, float, str, str]]:
    """Offsets (points) and alignments tried for a label, nearest first: beside the point to the right or left,
    above or below it, then stacked further up and down (labels are wide: vertical room is what a crowd lacks)."""
    out = []
    for dy in (0, 4, -4, 10, -10, 16, -16, 22, -22, 30, -30, 40, -40, 50, -50, 62, -62, 75, -75, 90, -90, 110,
               -110):
        for dx in (5, -5, 0, 25, -25, 50, -50, 80, -80):
            if dx == 0 and abs(dy) < 8:
                continue  # centred on its own marker
            ha = "left" if dx > 0 else "right" if dx < 0 else "center"
            va = "bottom" if dy > 0 else "top" if dy < 0 else "center"
            out.append((dx, dy, ha, va))
    return sorted(out, key=lambda c: (c[0] ** 2 + c[1] ** 2) ** 0.5 + (0 if c[0] > 0 else 2))


_SHIFT = {"left": 0.0, "center": 0.5, "right": 1.0, "bottom": 0.0, "top": 1.0}


def _overlap(a, b) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return w * h if w > 0 and h > 0 else 0.0


def place_labels(ax, xy, texts, *, fontsize: float = 7, marker_pt: float = 4.0, color: str = "0.15") -> list:
    """Annotate the points ``xy`` (data coordinates) of ``ax`` with ``texts`` so that no label covers another
    label, a marker or the legend, or leaves the axes, where any free place exists (deterministic: the nearest
    free offset of a fixed list; crowded points are placed first; the least-overlapping offset otherwise). Labels
    placed away from their point get a thin leader line. Call it after everything else is drawn and the limits
    are final (it draws the figure once to know the layout). Returns the annotations."""
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    px = fig.dpi / 72.0
    centres = [tuple(p) for p in ax.transData.transform(list(xy))] if len(xy) else []
    r = marker_pt * px
    obstacles = [(x - r, y - r, x + r, y + r) for x, y in centres]
    legend = ax.get_legend()
    if legend is not None:
        obstacles.append(tuple(legend.get_window_extent(renderer).extents))
    frame = ax.get_window_extent(renderer).extents

    def crowd(i):
        x, y = centres[i]
        return -sum(abs(x - a) < 60 * px and abs(y - b) < 30 * px for a, b in centres)

    placed, out = [], [None] * len(texts)
    for i in sorted(range(len(texts)), key=lambda i: (crowd(i), i)):
        probe = ax.annotate(texts[i], xy[i], fontsize=fontsize)
        extent = probe.get_window_extent(renderer)
        w, h = extent.width, extent.height
        probe.remove()
        best = None
        for dx, dy, ha, va in _candidates():
            x0 = centres[i][0] + dx * px - _SHIFT[ha] * w
            y0 = centres[i][1] + dy * px - (0.5 if va == "center" else _SHIFT[va]) * h
            box = (x0, y0, x0 + w, y0 + h)
            outside = w * h - _overlap(box, frame)
            cost = sum(_overlap(box, b) for b in placed + obstacles) + 10 * outside
            if best is None or cost < best[0]:
                best = (cost, (dx, dy), ha, va, box)
            if cost == 0:
                break
        _, offset, ha, va, box = best
        far = max(abs(offset[0]), abs(offset[1])) > 12  # away from its point: a leader line says whose it is
        ann = ax.annotate(texts[i], xy[i], xytext=offset, textcoords="offset points", fontsize=fontsize,
                          color=color, ha=ha, va=va, zorder=4,
                          arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "0.6", "shrinkA": 1,
                                      "shrinkB": marker_pt} if far else None)
        ann.set_in_layout(False)
        placed.append(box)
        out[i] = ann
    return out
