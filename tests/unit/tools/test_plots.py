"""Every plot of the package, drawn with nnU-Net's global seaborn style active (as in a training process, where
nnU-Net's progress plot calls ``seaborn.set(font_scale=2.5)``): the file is written, the style does not leak in,
the caller's matplotlib state is left alone, and what the plots promise is on them."""

from __future__ import annotations

import dataclasses
import math

import matplotlib
import pytest
from matplotlib.figure import Figure
from matplotlib.text import Text

from nnunet_prune.nnunet.trainers.logging import RECORD_KEY, plot_pruning_progress, plot_widths
from nnunet_prune.tools.report.efficiency import FoldEfficiency, plot_dice_vs_macs
from nnunet_prune.tools.sweep.magnitude import plot_sweep

INITIAL = {"enc0.conv0": 32, "enc0.conv1": 32, "enc1.conv0": 64, "enc1.conv1": 64, "bottleneck.conv0": 128,
           "bottleneck.conv1": 128, "up1": 64, "dec1.conv0": 64, "dec1.conv1": 64, "up0": 32, "dec0.conv0": 32,
           "dec0.conv1": 32}


@pytest.fixture
def nnunet_style():
    """nnU-Net's global seaborn settings, as its logger applies them; yields the rcParams a plot must leave as they
    are (restored for the other tests afterwards)."""
    pytest.importorskip("seaborn")
    import nnunetv2.training.logging.nnunet_logger  # noqa: F401  (imports seaborn, as in a training process)
    import seaborn as sns

    with matplotlib.rc_context():
        sns.set(font_scale=2.5)
        yield dict(matplotlib.rcParams)


@pytest.fixture
def figures(monkeypatch):
    """The figures the plot functions save, to look inside them."""
    saved = []
    original = Figure.savefig

    def savefig(self, *args, **kwargs):
        saved.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return saved


def assert_unchanged(before: dict) -> None:
    after = dict(matplotlib.rcParams)
    changed = [k for k in before if str(before[k]) != str(after[k])]
    assert not changed, f"global rcParams changed: {changed}"
    assert matplotlib.rcParams["font.size"] == before["font.size"]


def assert_own_style(fig: Figure) -> None:
    """No text of the figure is drawn at seaborn's 2.5x font scale."""
    sizes = [t.get_fontsize() for t in fig.findobj(Text) if t.get_text()]
    assert sizes and max(sizes) <= 14, sorted(set(sizes))


def make_records(epochs: int) -> list[dict]:
    return [{"epoch": e, "widths": {n: max(1, w - 4 * (e + 1)) for n, w in INITIAL.items()},
             "num_parameters": 10**6 - 10**4 * e, "macs": 10**9 - 10**7 * e} for e in range(epochs)]


def make_log(epochs: int) -> dict:
    records = make_records(epochs)
    return {
        "epoch_start_timestamps": [100.0 * e for e in range(epochs)],
        "epoch_end_timestamps": [100.0 * e + 50 for e in range(epochs)],
        "num_parameters": [r["num_parameters"] for r in records], "macs": [r["macs"] for r in records],
        "delta_opt": [0.5 / (e + 1) for e in range(epochs)],
        "sauron_tau": [[0.001 * (e + i % 3) for i in range(len(INITIAL))] for e in range(epochs)],
        "sauron_layers_raised": [len(INITIAL) - e for e in range(epochs)],
        RECORD_KEY: records,
    }


def test_plot_widths_starts_from_the_unpruned_network(tmp_path, nnunet_style, figures):
    out = tmp_path / "pruning_widths.png"
    plot_widths(make_records(3), str(out), "T: channels per coupling group", initial_widths=INITIAL)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert_unchanged(nnunet_style)
    (fig,) = figures
    ax = fig.axes[0]
    assert [b.get_height() for b in ax.containers[0]] == list(INITIAL.values())
    assert [b.get_height() for b in ax.containers[1]] == list(make_records(3)[-1]["widths"].values())
    assert "unpruned" in " ".join(t.get_text() for t in ax.get_legend().get_texts())
    assert [t.get_text() for t in ax.get_xticklabels()] == list(INITIAL)
    assert_own_style(fig)


def test_plot_widths_without_initial_widths_uses_the_first_record(tmp_path, nnunet_style, figures):
    records = make_records(2)
    plot_widths(records, str(tmp_path / "w.png"))
    assert (tmp_path / "w.png").is_file()
    assert [b.get_height() for b in figures[0].axes[0].containers[0]] == list(records[0]["widths"].values())
    assert_unchanged(nnunet_style)


@pytest.mark.parametrize("epochs", [1, 3, 30])
def test_plot_pruning_progress(tmp_path, nnunet_style, figures, epochs):
    keys = ["num_parameters", "macs", "delta_opt", "sauron_tau", "sauron_layers_raised", "some_new_series"]
    plot_pruning_progress(make_log(epochs), keys, str(tmp_path))
    assert (tmp_path / "progress_pruning.png").is_file()
    assert_unchanged(nnunet_style)
    (fig,) = figures
    assert_own_style(fig)
    labels = [ax.get_ylabel().replace("\n", " ") for ax in fig.axes]
    assert not any("_raised" in label or label == "sauron_tau" for label in labels), labels
    assert "layers whose threshold rose" in labels and "some new series" in labels
    for ax in fig.axes:
        legend = ax.get_legend()
        assert legend is None or len(legend.get_texts()) <= 5  # never one entry per group or layer
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert all(float(t).is_integer() for t in ticks), ticks


def test_plot_pruning_progress_relative_to_the_unpruned_network(tmp_path, nnunet_style, figures):
    import json

    (tmp_path / "pruning_config.json").write_text(json.dumps(
        {"trainer": "T", "initial_widths": INITIAL, "initial_parameters": 2 * 10**6, "initial_macs_per_patch": 2e9}))
    plot_pruning_progress(make_log(3), ["num_parameters", "macs"], str(tmp_path))
    ax = figures[0].axes[0]
    assert "unpruned" in ax.get_ylabel()
    assert math.isclose(ax.get_lines()[0].get_ydata()[0], 50.0)


def rows() -> list[FoldEfficiency]:
    def row(model, fold, gmacs, dice):
        return FoldEfficiency(model=model, fold=fold, trainer="t", configuration="2d", patch_size=[64, 64],
                              parameters=10**6, macs=int(gmacs * 1e9), checkpoint_bytes=4 * 10**6, dice=dice)

    return [row("dense", 0, 8.0, 0.91), row("pruned", 0, 2.0, 0.90), row("pruned-export", 0, 2.0, 0.90),
            row("not-validated", 0, 1.5, None)]


def test_plot_dice_vs_macs_notes_hidden_and_missing_models(tmp_path, nnunet_style, figures):
    out = tmp_path / "dice_vs_macs.png"
    assert plot_dice_vs_macs(rows(), out) is True
    assert out.is_file()
    assert_unchanged(nnunet_style)
    (fig,) = figures
    assert_own_style(fig)
    text = " ".join(t.get_text() for t in fig.findobj(Text))
    assert "not-validated" in text and "no validation Dice" in text
    assert "pruned = pruned-export" in text  # the export is not silently hidden under its source
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == ["dense", "pruned", "pruned-export"]
    assert plot_dice_vs_macs([r for r in rows() if r.dice is None], tmp_path / "none.png") is False
    assert not (tmp_path / "none.png").exists()


def sweep_report() -> dict:
    taus = [0.0, 0.001, 0.002, 0.005, 0.01, 0.02, 0.04]
    dice = [1.0, 0.999, 0.99, 0.97, 0.94, 0.6, 0.1]
    stages = ["enc0", "enc1", "bottleneck", "dec1", "dec0", "heads"]
    results = [{"tau": t, "sparsity_of_nonzero": 1 - math.exp(-t / 0.005), "sparsity_of_all_parameters": 0.5,
                "proxy_dice": d, "real_dice": 0.9 * d if i % 2 else None,
                "stages": {s: {"weights": 1000, "zero_before": 0, "zero_after": int(1000 * (1 - math.exp(-t / 0.005)))}
                           for s in stages}} for i, (t, d) in enumerate(zip(taus, dice))]
    return {"model": "/r/Dataset001_X/nnUNetTrainer__nnUNetPlans__2d", "folds": ["0"], "cases": ["a"],
            "settings": {"per_layer_normalised": False}, "threshold": 0.95,
            "critical_point": {"tau": 0.005, "sparsity": results[3]["sparsity_of_nonzero"], "proxy_dice": 0.97},
            "first_failure": {"tau": 0.01, "sparsity": results[4]["sparsity_of_nonzero"], "proxy_dice": 0.94},
            "results": results}


def test_plot_sweep(tmp_path, nnunet_style, figures):
    paths = plot_sweep(sweep_report(), tmp_path)
    assert set(paths) == {"dice_vs_sparsity.png", "dice_vs_tau.png", "stage_sparsity.png"}
    assert all(p.is_file() for p in paths.values())
    assert_unchanged(nnunet_style)
    assert len(figures) == 3
    for fig in figures:
        assert_own_style(fig)
    report = sweep_report()
    report["critical_point"] = report["first_failure"] = None  # nothing above the threshold
    assert all(p.is_file() for p in plot_sweep(report, tmp_path).values())


# ---------------------------------------------------------------------------------------------------- honest plots
def visible_tick_labels(ax, which: str = "x") -> list[str]:
    """The labels of the major ticks inside the axis limits, after drawing."""
    ax.figure.canvas.draw()
    lo, hi = sorted(ax.get_xlim() if which == "x" else ax.get_ylim())
    ticks = ax.get_xticks() if which == "x" else ax.get_yticks()
    labels = ax.get_xticklabels() if which == "x" else ax.get_yticklabels()
    return [t.get_text() for v, t in zip(ticks, labels) if lo - 1e-12 <= v <= hi + 1e-12 and t.get_text()]


def assert_readable(labels: list[str]) -> None:
    """At least two labelled ticks, written as plain decimals (no 5x10^-1, no 1e-05)."""
    assert len(labels) >= 2, labels
    assert not any(c in "".join(labels) for c in "^\\e×$"), labels
    for text in labels:
        float(text.replace(",", "").replace("\N{MINUS SIGN}", "-"))


def text_boxes(ax) -> list:
    from matplotlib.text import Text

    renderer = ax.figure.canvas.get_renderer()
    return [Text.get_window_extent(t, renderer) for t in ax.texts if t.get_text()]


def assert_no_overlap(boxes) -> None:
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not a.overlaps(b), (a, b)


def test_plot_dice_vs_macs_does_not_blow_up_noise(tmp_path, figures):
    from nnunet_prune.core.plotting import MIN_DICE_SPAN

    def row(model, gmacs, dice):
        return FoldEfficiency(model=model, fold=0, trainer="t", configuration="2d", patch_size=[64, 64],
                              parameters=10**6, macs=int(gmacs * 1e9), checkpoint_bytes=10**6, dice=dice)

    rows_ = [row("dense", 3.55, 0.6035), row("l2 75 %", 0.30, 0.6083), row("l2 75 % openvino", 0.30, 0.6083),
             row("sauron", 2.18, 0.6051), row("lunet", 2.0, 0.6049)]
    plot_dice_vs_macs(rows_, tmp_path / "d.png")
    ax = figures[0].axes[0]
    lo, hi = ax.get_ylim()
    assert hi - lo >= MIN_DICE_SPAN - 1e-9 and lo <= 0.6035 and hi >= 0.6083  # 0.005 apart do not fill the plot
    text = " ".join(t.get_text() for t in figures[0].findobj(Text))
    assert "Dice spread between training runs of a model: not measured" in text
    assert_readable(visible_tick_labels(ax, "x"))
    assert_no_overlap(text_boxes(ax)[:-1])  # the fold labels (the last text is the note under the plot)


def lits_benchmark_rows():
    """The 13 methods of docs/benchmark.md's LiTS-117 table (parameters M, GMAC, fastest ms, Dice)."""
    from nnunet_prune.tools.benchmark.benchmark import MethodResult

    table = [("LUnet 8", 0.017, 0.056, 4.1, 0.576), ("LUnet 16", 0.067, 0.222, 4.4, 0.640),
             ("network slimming (iterative)", 0.413, 0.270, 9.3, 0.379), ("PSP-Seg-S", 1.604, 0.636, 8.9, 0.639),
             ("LUnet 32", 0.263, 0.884, 8.5, 0.700), ("STAMP", 0.846, 1.226, 12.8, 0.658),
             ("STAMP randomInBlock", 0.843, 1.244, 12.0, 0.731),
             ("structured L2 (iterative)", 0.851, 1.407, 13.4, 0.708),
             ("structured L1 (iterative)", 0.850, 1.409, 13.4, 0.720),
             ("STAMP widestBlock", 0.824, 1.505, 13.0, 0.701),
             ("Sauron", 20.466, 3.096, 27.7, 0.690), ("nnU-Net default", 20.620, 3.555, 26.6, 0.701),
             ("magnitude (critical tau)", 20.620, 3.555, 28.5, 0.699)]
    return [MethodResult(f"m{i}", label, "t", "p", status="ok", parameters=p * 1e6, macs=g * 1e9, cpu_ms=ms * 1.8,
                         fastest_runtime="openvino", fastest_ms=ms, dice=d)
            for i, (label, p, g, ms, d) in enumerate(table)]


def test_pareto_labels_do_not_collide_and_ticks_are_plain(tmp_path, nnunet_style, figures):
    from nnunet_prune.tools.benchmark.benchmark import plot_pareto

    assert plot_pareto(lits_benchmark_rows(), tmp_path / "pareto.png")
    assert_unchanged(nnunet_style)
    (fig,) = figures
    assert_own_style(fig)
    fig.canvas.draw()
    for ax in fig.axes:
        boxes = text_boxes(ax)
        assert len(boxes) == 13
        assert_no_overlap(boxes)  # "LUnet 32" no longer under "STAMP widestBlock"
        frame = ax.get_window_extent()
        assert all(frame.x0 - 1 <= b.x0 and b.x1 <= frame.x1 + 1 and frame.y0 - 1 <= b.y0 and b.y1 <= frame.y1 + 1
                   for b in boxes)  # inside the panel
        assert_readable(visible_tick_labels(ax, "x"))
    assert "Dice spread between seeds: not measured" in fig._suptitle.get_text()


def test_pareto_front_takes_no_step_within_the_noise(tmp_path, figures):
    from nnunet_prune.core.plotting import MIN_DICE_SPAN
    from nnunet_prune.tools.benchmark.benchmark import MethodResult, plot_pareto

    rows_ = [MethodResult("a", "a", "t", "p", status="ok", parameters=1e5, macs=1e8, cpu_ms=5, dice=0.605),
             MethodResult("b", "b", "t", "p", status="ok", parameters=1e6, macs=1e9, cpu_ms=20, dice=0.608)]
    plot_pareto(rows_, tmp_path / "p.png")
    for ax in figures[0].axes:
        assert not [line for line in ax.get_lines() if line.get_linestyle() == "--"]  # 0.003 apart: no front
        lo, hi = ax.get_ylim()
        assert hi - lo >= MIN_DICE_SPAN - 1e-9
    # with a measured seed spread the front needs more than that spread; the spread is stated and drawn
    rows_ = [dataclasses.replace(r, dice_spread=0.02, seeds=[0, 1, 2]) for r in rows_]
    rows_[1].dice = 0.65
    plot_pareto(rows_, tmp_path / "p2.png")
    fig = figures[-1]
    assert "Dice spread between seeds: +-0.020 over 3 runs" in fig._suptitle.get_text()
    assert [line for line in fig.axes[0].get_lines() if line.get_linestyle() == "--"]  # 0.045 > 0.02: a step
    assert fig.axes[0].collections  # error bars and points


@pytest.mark.parametrize("width", [1, 3, 24, 700])
def test_progress_channel_axis_has_readable_log_ticks(tmp_path, figures, width):
    """A one-shot run: every group keeps one width, so a log axis used to show one odd tick (5x10^-1 style)."""
    log = make_log(2)
    for r in log[RECORD_KEY]:
        r["widths"] = {n: width for n in INITIAL}
    plot_pruning_progress(log, ["num_parameters", "macs"], str(tmp_path))
    assert_readable(visible_tick_labels(figures[-1].axes[2], "y"))


def test_sweep_tau_axis_ticks_are_plain(tmp_path, figures):
    report = sweep_report()
    report["results"].insert(1, dict(report["results"][1], tau=1e-5))
    plot_sweep(report, tmp_path)
    ax = next(f for f in figures if "tau (magnitude" in f.axes[0].get_xlabel()).axes[0]
    labels = visible_tick_labels(ax, "x")
    assert_readable(labels) and "0" in labels
    assert "e-" not in ax.get_xlabel()
