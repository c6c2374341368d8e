"""The pictures of a pruning fold (nnU-Net glue): ``progress_pruning.png`` (every epoch, from nnU-Net's logger),
``pruning_widths.png`` (channels per coupling group at the end) and ``branch_map.png`` (PSP-Seg's branch map).

Each is drawn in its own style (:func:`nnunet_prune.core.plotting.plot_style`): nnU-Net's
``seaborn.set(font_scale=2.5)`` does not leak in, and the caller's matplotlib state is left as it was.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from nnunet_prune.nnunet.trainers.records import RECORD_KEY, SCALAR_KEYS, FoldRecords


def plot_pruning_progress(log: dict, scalar_keys, output_folder: str) -> None:
    """``progress_pruning.png``: network size (relative to the unpruned network when the fold's
    ``pruning_config.json`` says what it was), epoch time, the width of every coupling group (one line each, coloured
    by encoder / bottleneck / decoder) and the method's series (a per-layer series as median and bands).

    ``log``: nnU-Net's logger (``my_fantastic_logging``); ``scalar_keys``: the logged scalar keys (the method's are
    those beyond parameters and MACs). Drawn in its own style: nnU-Net's ``seaborn.set(font_scale=2.5)`` does not
    leak in, and the caller's matplotlib state is left as it was.
    """
    from nnunet_prune.core.plotting import integer_ticks, new_figure, plot_style, save

    n = min(len(log.get(k, [])) for k in ("epoch_end_timestamps", "num_parameters", "macs"))
    if n == 0:
        return
    config = FoldRecords(output_folder).read_config()
    marker = "o" if n <= 15 else None  # single points of a short run stay visible
    method_keys = [k for k in scalar_keys if k not in SCALAR_KEYS]
    records = (list(log.get(RECORD_KEY, [])) + [None] * n)[:n]
    initial = config.get("initial_widths") if isinstance(config.get("initial_widths"), dict) else None
    names = list(initial) if initial else next((list(r["widths"]) for r in records if r), [])

    with plot_style():
        panels = 2 + bool(names) + len(method_keys)  # no channel panel for a network without groups (PSP-Seg)
        fig = new_figure(figsize=(10, 2.3 * panels + 0.7), layout="constrained")
        axes = fig.subplots(panels, 1, sharex=True, squeeze=False)[:, 0]
        trainer = config.get("trainer")
        fig.suptitle(f"{trainer}: pruning progress" if trainer else "Pruning progress")
        _size_panel(axes[0], log, n, config, records, names, initial, marker)
        _time_panel(axes[1], log, n, marker)
        if names:
            _width_panel(axes[2], records, names, n, marker)
        for ax, key in zip(axes[2 + bool(names):], method_keys):
            _series_panel(ax, (list(log.get(key, [])) + [None] * n)[:n], key, n, marker)
        for ax in axes:
            ax.tick_params(labelbottom=True)  # every panel keeps its epoch numbers
            integer_ticks(ax.xaxis)
        axes[-1].set_xlabel("epoch")
        if n == 1:
            axes[-1].set_xlim(-0.5, 0.5)
        save(fig, f"{output_folder}/progress_pruning.png")


def _number(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _relative(values, base) -> list[float]:
    values = [_number(v) for v in values]
    base = base or next((v for v in values if v and not math.isnan(v)), None)
    return [v / base * 100 if base else math.nan for v in values]


def _legend_right(ax, **kw) -> None:
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, frameon=False, **kw)


def _last(values):
    return next((v for v in reversed(values) if isinstance(v, (int, float))), None)


def _size_panel(ax, log: Mapping, n: int, config: Mapping[str, Any], records: Sequence, names: list[str],
                initial: Mapping[str, int] | None, marker) -> None:
    """Parameters, MACs per patch and channels in % of the unpruned network (else of epoch 0)."""
    import numpy as np

    epochs = np.arange(n)
    unpruned = bool(config.get("initial_parameters") and config.get("initial_macs_per_patch"))
    params, macs = log["num_parameters"][:n], log["macs"][:n]
    p_last, m_last = _last(params), _last(macs)
    ax.plot(epochs, _relative(params, config.get("initial_parameters")), marker=marker, lw=2,
            label="parameters" + (f" (now {p_last / 1e6:.3g} M)" if p_last else ""))
    ax.plot(epochs, _relative(macs, config.get("initial_macs_per_patch")), marker=marker, lw=2, ls="--",
            label="MACs per patch" + (f" (now {m_last / 1e9:.3g} G)" if m_last else ""))
    if names and any(records):
        channels = [sum(r["widths"].values()) if r else math.nan for r in records]
        ax.plot(epochs, _relative(channels, sum(initial.values()) if initial else None), marker=marker, lw=1.5,
                ls=":", color="0.3", label="channels (all groups)")
    ax.set_ylim(0, 105)
    ax.set_ylabel("% of the unpruned\nnetwork" if unpruned else "% of epoch 0")
    ax.set_title("Network size" + ("" if unpruned else " (relative to the end of epoch 0, already pruned)"),
                 loc="left")
    _legend_right(ax)


def _time_panel(ax, log: Mapping, n: int, marker) -> None:
    """Seconds per epoch."""
    import numpy as np

    epochs = np.arange(n)
    times = [_number(e) - _number(s) for e, s in zip(log["epoch_end_timestamps"][:n],
                                                     log.get("epoch_start_timestamps", [])[:n])]
    ax.plot(epochs[:len(times)], times, marker=marker, lw=2)
    ax.set_ylim(0, None)
    ax.set_ylabel("seconds")
    ax.set_title("Epoch time", loc="left")


def _width_panel(ax, records: Sequence, names: list[str], n: int, marker) -> None:
    """Channels of every coupling group, one line each, coloured by part, on a log axis."""
    import numpy as np
    from matplotlib.lines import Line2D

    from nnunet_prune.core.plotting import PART_COLORS, part_of, readable_log_axis

    epochs = np.arange(n)
    counts: dict[str, int] = {}
    for name in names:
        part = part_of(name, names)
        counts[part] = counts.get(part, 0) + 1
        ax.plot(epochs, [_number(r["widths"].get(name)) if r else math.nan for r in records], marker=marker,
                ms=3, lw=1, alpha=0.7, color=PART_COLORS.get(part, "0.5"))
    ax.set_yscale("log", base=2)
    readable_log_axis(ax, "y", base=2)  # plain channel counts, at least two of them labelled
    _legend_right(ax, handles=[Line2D([], [], color=PART_COLORS.get(p, "0.5"), lw=2,
                                      label=f"{p} ({c} group{'s' if c > 1 else ''})")
                               for p, c in counts.items()])
    ax.set_ylabel("channels\n(log scale)")
    ax.set_title(f"Channels per coupling group (one line each, {len(names)} groups)", loc="left")


def _series_panel(ax, raw: list, key: str, n: int, marker) -> None:
    """One of the method's series: a number per epoch, or a number per layer per epoch (median and bands)."""
    import textwrap

    import numpy as np

    from nnunet_prune.core.plotting import SERIES_LABELS, integer_ticks, words

    epochs = np.arange(n)
    label = words(key, SERIES_LABELS)
    if any(isinstance(v, (list, tuple)) for v in raw):  # one value per layer: summarise, never 30 lines
        stats = []
        for v in raw:
            finite = [x for x in map(_number, v or []) if not math.isnan(x)]
            stats.append(np.percentile(finite, [0, 25, 50, 75, 100]) if finite else [math.nan] * 5)
        lo, q1, med, q3, hi = np.asarray(stats, dtype=float).T
        layers = max((len(v) for v in raw if isinstance(v, (list, tuple))), default=0)
        ax.fill_between(epochs, lo, hi, color="tab:blue", alpha=0.15, lw=0, label="min to max")
        ax.fill_between(epochs, q1, q3, color="tab:blue", alpha=0.35, lw=0, label="middle half")
        ax.plot(epochs, med, color="tab:blue", lw=2, marker=marker, label="median")
        _legend_right(ax, title=f"over {layers} layers")
    else:
        values = [_number(v) for v in raw]
        ax.plot(epochs, values, marker=marker, lw=2)
        if all(isinstance(v, int) for v in raw if v is not None):
            integer_ticks(ax.yaxis)
            ax.set_ylim(bottom=0)
    ax.set_ylabel("\n".join(textwrap.wrap(label, 18)))
    ax.set_title(label[:1].upper() + label[1:], loc="left")


def plot_widths(records: list[dict], output_file: str, title: str = "",
                initial_widths: dict[str, int] | None = None, parts: dict[str, str] | None = None) -> None:
    """``pruning_widths.png``: the channels of every coupling group before pruning and after the last recorded epoch,
    as bar pairs in network order, with the share kept above each pair.

    ``initial_widths`` are the unpruned widths (the fold's ``pruning_config.json`` "initial_widths"); without them the
    first record stands in, which is already pruned once (records are written after each epoch's surgery). ``parts``
    (group name -> encoder / bottleneck / decoder, the graph's own labels: ``pruning_config.json`` "group_parts")
    colour the bars; without them the part is read from the group name. Drawn in its own style; the caller's
    matplotlib state is left as it was.
    """
    import numpy as np
    from matplotlib.patches import Patch

    from nnunet_prune.core.plotting import PART_COLORS, new_figure, part_of, plot_style, save

    records = [r for r in records if r]
    if not records:
        return
    end = records[-1]
    if initial_widths:
        start, start_label = dict(initial_widths), "unpruned (start of training)"
    else:
        start, start_label = records[0]["widths"], f"after epoch {records[0]['epoch']} (first record)"
    names = list(start) + [n for n in end["widths"] if n not in start]
    before = [start.get(n, 0) for n in names]
    after = [end["widths"].get(n, 0) for n in names]
    parts = [(parts or {}).get(n) or part_of(n, names) for n in names]
    x = np.arange(len(names))
    kept = sum(after) / sum(before) if sum(before) else float("nan")

    with plot_style():
        fig = new_figure(figsize=(max(7.0, 0.27 * len(names) + 1.8), 5), layout="constrained")
        ax = fig.add_subplot()
        ax.bar(x - 0.2, before, 0.4, color="0.82", edgecolor="0.5", linewidth=0.5, label=start_label)
        ax.bar(x + 0.2, after, 0.4, color=[PART_COLORS.get(p, "0.5") for p in parts])
        for xi, b, a in zip(x, before, after):
            if b:
                ax.annotate(f"{a / b:.0%}", (xi, max(a, b)), xytext=(0, 2), textcoords="offset points",
                            ha="center", va="bottom", fontsize=6.5, rotation=90, color="0.25")
        for i in range(1, len(names)):  # a thin line where the encoder / bottleneck / decoder starts
            if parts[i] != parts[i - 1]:
                ax.axvline(i - 0.5, color="0.6", lw=0.8, ls="--")
        ax.set_xticks(x)
        ax.set_xticklabels(names, rotation=60, ha="right", rotation_mode="anchor", fontsize=7.5)
        for label, part in zip(ax.get_xticklabels(), parts):
            label.set_color(PART_COLORS.get(part, "0.2"))
        ax.set_xlim(-0.7, len(names) - 0.3)
        ax.set_ylim(0, max(before + after + [1]) * 1.15)
        ax.grid(False, axis="x")
        ax.set_ylabel("channels")
        ax.set_xlabel("coupling group (network order; % = share of channels kept)")
        handles = [Patch(facecolor="0.82", edgecolor="0.5", label=start_label)]
        handles += [Patch(color=PART_COLORS.get(p, "0.5"), label=f"{p}, after epoch {end['epoch']}")
                    for p in dict.fromkeys(parts)]
        ax.legend(handles=handles, loc="lower left", bbox_to_anchor=(0, 1.01), borderaxespad=0, frameon=False,
                  ncol=len(handles) if len(names) >= 24 else 2)  # a narrow plot: two columns stay inside
        fig.suptitle(f"{title or 'Channels per coupling group'}\n"
                     f"{sum(before):,} channels {'unpruned' if initial_widths else 'at first'}, "
                     f"{sum(after):,} after epoch {end['epoch']} ({kept:.0%} kept)")
        save(fig, output_file)


#: colours of the branch map (PSP-Seg's Fig. 4: green kept, grey masked, white deleted)
BRANCH_COLORS = {"active": "#4caf50", "masked": "#9e9e9e", "deleted": "#ffffff"}


def plot_branch_map(records: list[dict], output_file: str, kernels: dict[str, list[str]] | None = None,
                    title: str = "", max_panels: int = 6) -> None:
    """``branch_map.png``: PSP-Seg's branch map (its Fig. 4) -- one panel per snapshot (the first record, the record
    after each pruning event, the last record; at most ``max_panels``), each a grid of modules (rows, forward order)
    x branches (columns), green active, grey masked, white deleted; ``kernels`` ({module: kernel label per branch})
    label the cells. Records are ``pruning_history.json`` epochs with a ``branch_map``."""
    import numpy as np
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    from nnunet_prune.core.plotting import new_figure, plot_style, save

    records = [r for r in records if r and r.get("branch_map")]
    if not records:
        return
    picked = [records[0]] + [r for r in records[1:-1] if r.get("pspseg_events")] + [records[-1]]
    picked = list({r["epoch"]: r for r in picked}.values())
    if len(picked) > max_panels:
        picked = picked[:max_panels - 1] + [picked[-1]]
    modules = list(records[-1]["branch_map"])
    width = max(len(v) for v in records[-1]["branch_map"].values())
    code = {"active": 0, "masked": 1, "deleted": 2}
    cmap = ListedColormap([BRANCH_COLORS["active"], BRANCH_COLORS["masked"], BRANCH_COLORS["deleted"]])
    short = [m.replace("encoder.stages.", "enc").replace("decoder.stages.", "dec").replace(".prm", "")
             for m in modules]
    with plot_style():
        fig = new_figure(figsize=(1.2 + 0.42 * width * len(picked), 1.4 + 0.3 * len(modules)), layout="constrained")
        axes = fig.subplots(1, len(picked), squeeze=False)[0]
        for ax, r in zip(axes, picked):
            grid = np.full((len(modules), width), 2)
            for row, m in enumerate(modules):
                for col, state in enumerate(r["branch_map"].get(m, [])):
                    grid[row, col] = code[state]
            ax.imshow(grid, cmap=cmap, vmin=0, vmax=2, aspect="auto")
            ax.set_xticks(np.arange(width) - 0.5, minor=True)
            ax.set_yticks(np.arange(len(modules)) - 0.5, minor=True)
            ax.grid(which="minor", color="0.4", linewidth=0.6)
            ax.grid(False, which="major")
            ax.tick_params(which="minor", length=0)
            ax.set_xticks(range(width))
            ax.set_xticklabels([str(i) for i in range(width)], fontsize=7)
            ax.set_yticks(range(len(modules)))
            ax.set_yticklabels(short if ax is axes[0] else [""] * len(modules), fontsize=7)
            for row, m in enumerate(modules):
                for col, label in enumerate((kernels or {}).get(m, [])):
                    ax.text(col, row, label, ha="center", va="center", fontsize=5.5, color="0.15")
            events = " + ".join(e["kind"] for e in r.get("pspseg_events") or [])
            ax.set_title(f"after epoch {r['epoch']}" + (f"\n({events})" if events else ""), fontsize=8)
            ax.set_xlabel("branch", fontsize=7)
        fig.legend(handles=[Patch(facecolor=c, edgecolor="0.4", label=k) for k, c in BRANCH_COLORS.items()],
                   loc="outside lower center", ncol=3, frameon=False, fontsize=7)
        states = [s for v in records[-1]["branch_map"].values() for s in v]
        fig.suptitle(f"{title or 'PSP-Seg branch map'}\n{states.count('active')} active, "
                     f"{states.count('masked')} masked, {states.count('deleted')} deleted of {len(states)} branches",
                     fontsize=9)
        save(fig, output_file)
