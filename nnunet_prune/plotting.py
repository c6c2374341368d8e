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
