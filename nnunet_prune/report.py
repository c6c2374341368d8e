"""Efficiency report: parameters, MACs, checkpoint size, latency, GPU memory and validation Dice, side by side.

Pruning is only worth it if the model gets cheaper where it runs and stays accurate, so every number here is
measured on the real networks of trained nnU-Net model folders: exact MACs for one patch (PyTorch's flop counter,
inference path), the median latency of one patch (batch 1) eagerly and compiled, and the Dice nnU-Net's own
validation wrote to ``fold_k/validation/summary.json``. Rows are plain dataclasses; :func:`write_report` turns
them into CSV, Markdown and a Dice-vs-MACs plot.
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from nnunet_prune import NnUNetPruneError
from nnunet_prune.modelfolder import ModelFolder, parse_fold
from nnunet_prune.outputs import check_writable_files, record_files
from nnunet_prune.stats import count_macs, count_parameters, inference_outputs, input_channels, unwrap

TOOL = "report"
#: the files ``report`` writes into its output folder (an existing one must be its own earlier output)
OUTPUT_FILES = ("report.csv", "report.md", "dice_vs_macs.png")

__all__ = [
    "FoldEfficiency", "format_markdown", "format_table", "measure_latency", "measure_model_folder",
    "open_model_folders", "peak_gpu_memory_mb", "plot_dice_vs_macs", "read_dice", "resolve_device", "write_report",
]


@dataclass
class FoldEfficiency:
    """Cost and accuracy of one fold of one model folder.

    MACs are for one patch (batch 1, inference path without deep supervision). Latencies are median milliseconds
    per patch (batch 1); eager runs in float32 (as a model is shipped), compiled runs use ``torch.compile`` -- on
    the GPU with CUDA graphs under bf16 autocast (how a deployed GPU model would run). Fields that were not measured
    (no CUDA, compile disabled or failed) are None.
    """

    model: str
    fold: int | str
    trainer: str
    configuration: str
    patch_size: list[int]
    parameters: int
    macs: int
    checkpoint_bytes: int
    #: parameters that are not exactly zero (differs from ``parameters`` after unstructured/magnitude pruning, which
    #: shrinks checkpoints but not dense MACs)
    nonzero_parameters: int | None = None
    cpu_ms_eager: float | None = None
    cpu_ms_compiled: float | None = None
    #: CPU threads used for the CPU timings
    threads: int | None = None
    gpu_ms_eager: float | None = None
    gpu_ms_compiled: float | None = None
    gpu_peak_mb: float | None = None
    gpu_name: str | None = None
    #: validation foreground mean Dice (nnU-Net's summary.json), None without validation
    dice: float | None = None
    #: validation Dice per label / region, keyed by label name where dataset.json gives one
    dice_per_class: dict[str, float | None] | None = None
    repeats: int | None = None
    path: str = ""
    #: what went wrong while measuring (e.g. a failed torch.compile)
    notes: list[str] = field(default_factory=list)

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9


# ---------------------------------------------------------------------------------------------------- measuring
def resolve_device(device: str) -> torch.device:
    """'cpu', 'cuda' (or 'cuda:N') or 'auto' (CUDA when available) as a torch device; errors say what to do."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise NnUNetPruneError(f"Unknown device {device!r}: use cpu, cuda or auto.") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        why = ("it is a CPU-only build: install a CUDA build of PyTorch" if torch.version.cuda is None else
               "check nvidia-smi and CUDA_VISIBLE_DEVICES")
        raise NnUNetPruneError(f"--device {device} was asked for, but this PyTorch ({torch.__version__}) sees no "
                               f"CUDA GPU ({why}). Or use --device cpu (or auto).")
    if dev.type not in ("cpu", "cuda"):
        raise NnUNetPruneError(f"Device {device!r} is not supported for timing: use cpu, cuda or auto.")
    return dev


@contextlib.contextmanager
def _eval_on(network: nn.Module, device: torch.device, threads: int | None):
    """Network in eval mode on ``device`` with ``threads`` CPU threads; everything restored afterwards."""
    modes = {m: m.training for m in network.modules()}
    first = next(network.parameters(), None)
    old_device = first.device if first is not None else torch.device("cpu")
    old_threads = torch.get_num_threads()
    old_benchmark = torch.backends.cudnn.benchmark
    try:
        if threads:
            torch.set_num_threads(threads)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # as nnU-Net's predictor
        network.eval().to(device)
        yield network
    finally:
        network.to(old_device)
        for m, mode in modes.items():
            m.training = mode
        torch.set_num_threads(old_threads)
        torch.backends.cudnn.benchmark = old_benchmark
        if device.type == "cuda":
            torch.cuda.empty_cache()


def _autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def measure_latency(network: nn.Module, patch_size: Sequence[int], device: str | torch.device = "cpu",
                    repeats: int = 10, warmup: int = 2, compiled: bool = False, threads: int | None = None,
                    bf16: bool = False) -> float:
    """Median milliseconds for one forward pass over one patch (batch 1, ``torch.inference_mode``, no deep
    supervision), after ``warmup`` untimed passes.

    ``compiled`` uses ``torch.compile``: on the CPU plain inductor, on CUDA ``mode="reduce-overhead"`` (CUDA
    graphs), which is how a deployed model would run. ``bf16`` runs under bfloat16 autocast. ``threads`` sets
    ``torch.set_num_threads`` for the measurement. The network's device, mode and the thread count are restored
    afterwards; a compiled measurement resets torch.compile's caches (``torch.compiler.reset``) before and after.
    A compile failure propagates (callers decide whether it is fatal).
    """
    if repeats < 1 or warmup < 0:
        raise ValueError("repeats must be >= 1 and warmup >= 0")
    device = torch.device(device)
    cuda = device.type == "cuda"
    net = unwrap(network)
    x = torch.randn((1, input_channels(net), *patch_size), generator=torch.Generator().manual_seed(0)).to(device)
    times = []
    with _eval_on(net, device, threads), inference_outputs(net):
        fn = net
        if compiled:
            torch.compiler.reset()  # a fresh cache: no recompile limit across networks, no stale CUDA graphs
            fn = torch.compile(net, mode="reduce-overhead" if cuda else None)
            warmup = max(warmup, 3 if cuda else 1)  # compilation, then CUDA-graph recording, stay out of the timing
        try:
            with torch.inference_mode(), _autocast(device, bf16):
                for i in range(warmup + repeats):
                    if cuda and compiled:
                        torch.compiler.cudagraph_mark_step_begin()
                    if cuda:
                        torch.cuda.synchronize(device)
                    start = time.perf_counter()
                    fn(x)
                    if cuda:
                        torch.cuda.synchronize(device)
                    if i >= warmup:
                        times.append(time.perf_counter() - start)
        finally:
            if compiled:
                del fn
                torch.compiler.reset()
    return statistics.median(times) * 1000.0


def peak_gpu_memory_mb(network: nn.Module, patch_size: Sequence[int], device: str | torch.device = "cuda",
                       bf16: bool = True) -> float:
    """Peak CUDA memory (MB, 1e6 bytes) allocated by PyTorch while predicting one patch (batch 1, eager), weights
    included: what the GPU must hold to run the network at all."""
    device = torch.device(device)
    net = unwrap(network)
    with _eval_on(net, device, None), inference_outputs(net):
        x = torch.randn((1, input_channels(net), *patch_size), device=device)
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        with torch.inference_mode(), _autocast(device, bf16):
            net(x)
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        del x
    return peak / 1e6


def _first_line(e: BaseException, limit: int = 200) -> str:
    text = str(e).strip().splitlines()
    msg = f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")
    return msg if len(msg) <= limit else msg[: limit - 3] + "..."


def _warn_stderr(message: str) -> None:
    print(f"WARNING: {message}", file=sys.stderr, flush=True)


def _label_name_map(dataset_json: dict) -> dict[str, str]:
    """summary.json key (as nnU-Net writes labels and regions) -> label name from dataset.json."""
    out = {}
    for name, value in dataset_json.get("labels", {}).items():
        if isinstance(value, (list, tuple)):
            out[str(tuple(value))] = name
            if len(value) == 1:
                out[str(value[0])] = name
        else:
            out[str(value)] = name
    return out


def _finite(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def read_dice(folder: ModelFolder, fold) -> tuple[float | None, dict[str, float | None] | None]:
    """(foreground mean Dice, Dice per label name) from the fold's validation summary.json; (None, None) if the fold
    was not validated."""
    summary = folder.validation_summary(fold)
    if not summary:
        return None, None
    dice = _finite(summary.get("foreground_mean", {}).get("Dice"))
    names = _label_name_map(folder.dataset_json)
    per_class = {names.get(str(k), str(k)): _finite(v.get("Dice")) for k, v in summary.get("mean", {}).items()
                 if isinstance(v, dict) and "Dice" in v}
    return dice, per_class or None


def open_model_folders(paths: Sequence[str | os.PathLike], folds: Sequence | None = None) -> list[ModelFolder]:
    """Open and validate every model folder before anything is measured, so that a typo in the last folder does not
    cost the measurement of the first ones."""
    from nnunet_prune.networks import adaptive_class_name

    folders = []
    for path in paths:
        mf = ModelFolder.open(path, folds)
        try:
            cm = mf.configuration_manager
        except (KeyError, RuntimeError, ValueError) as e:
            raise NnUNetPruneError(f"{mf.path}: the checkpoint's configuration {mf.configuration_name!r} cannot be "
                                   f"read from plans.json ({_first_line(e)}). Is plans.json the one the model was "
                                   f"trained with?") from None
        adaptive_class_name(cm.network_arch_class_name)  # raises for unsupported architectures
        folders.append(mf)
    return folders


def measure_model_folder(path: str | os.PathLike | ModelFolder, folds: Sequence | None = None, *,
                         device: str = "cpu", repeats: int = 10, warmup: int = 2, threads: int | None = None,
                         compile: bool = True, cpu: bool = True, bf16: bool = True, label: str | None = None,
                         warn: Callable[[str], None] | None = _warn_stderr) -> list[FoldEfficiency]:
    """Measure every chosen fold (None: all trained folds) of a model folder.

    ``device`` 'cpu' times on the CPU only; 'cuda' (or 'auto' with a GPU) times on the GPU and, unless
    ``cpu=False``, on the CPU too. ``compile=False`` skips the ``torch.compile`` timings (compiling a 3D U-Net takes
    a while). ``bf16`` applies to the compiled GPU timing and the GPU memory peak only. A failed compile is
    recorded as None plus a note, reported via ``warn`` (default: one line on stderr), and never aborts the
    measurement.
    """
    dev = resolve_device(device)
    if repeats < 1 or warmup < 0:
        raise NnUNetPruneError(f"--repeats must be at least 1 and --warmup at least 0 (got {repeats}, {warmup}).")
    if threads is not None and threads < 1:
        raise NnUNetPruneError(f"--threads must be at least 1 (got {threads}).")
    if isinstance(path, ModelFolder):
        mf = path
        chosen = mf.folds if folds is None else [parse_fold(f) for f in folds]
        if any(f not in mf.folds for f in chosen):
            mf = ModelFolder.open(mf.path, folds, mf.checkpoint_name)  # checks the folds exist
    else:
        mf = open_model_folders([path], folds)[0]
        chosen = mf.folds
    label = label or mf.path.name
    patch = mf.patch_size
    rows = []
    for fold in chosen:
        net = mf.load_network(fold)
        dice, per_class = read_dice(mf, fold)
        row = FoldEfficiency(
            model=label, fold=fold, trainer=mf.trainer_name, configuration=mf.configuration_name,
            patch_size=list(patch), parameters=count_parameters(net), macs=count_macs(net, patch),
            nonzero_parameters=sum(int(torch.count_nonzero(p)) for p in net.parameters()),
            checkpoint_bytes=mf.checkpoint_bytes(fold), dice=dice, dice_per_class=per_class, repeats=repeats,
            path=str(mf.path))

        def compiled_ms(where: torch.device, use_bf16: bool, row=row, net=net, fold=fold) -> float | None:
            try:
                return measure_latency(net, patch, where, repeats, warmup, compiled=True, bf16=use_bf16,
                                       threads=threads if where.type == "cpu" else None)
            except Exception as e:  # inductor needs a C++ compiler / Triton; eager numbers are still worth having
                note = f"torch.compile on {where.type} failed for {label} fold {fold} ({_first_line(e)})"
                row.notes.append(note)
                if warn is not None:
                    warn(note + "; compiled latency left empty.")
                return None

        if cpu or dev.type == "cpu":
            cpu_dev = torch.device("cpu")
            row.cpu_ms_eager = measure_latency(net, patch, cpu_dev, repeats, warmup, threads=threads)
            row.cpu_ms_compiled = compiled_ms(cpu_dev, False) if compile else None
            row.threads = threads or torch.get_num_threads()
        if dev.type == "cuda":
            row.gpu_name = torch.cuda.get_device_name(dev)
            row.gpu_ms_eager = measure_latency(net, patch, dev, repeats, warmup)  # float32
            row.gpu_ms_compiled = compiled_ms(dev, bf16) if compile else None
            row.gpu_peak_mb = peak_gpu_memory_mb(net, patch, dev, bf16=bf16)
        rows.append(row)
        del net
    return rows


# ---------------------------------------------------------------------------------------------------- formatting
def _num(x: float | None) -> str:
    """Three significant digits without exponent notation."""
    if x is None:
        return "-"
    a = abs(x)
    if a >= 100:
        return f"{x:.0f}"
    if a >= 10:
        return f"{x:.1f}"
    if a >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def _ratio(value: float | None, base: float | None) -> str:
    if value is None or not base:
        return "-"
    return f"{value / base:.2f}x"


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _table(rows: Sequence[FoldEfficiency]) -> tuple[list[str], list[list[str]]]:
    """Headers and cells in human units, with columns relative to the first model (mean over its folds); columns
    nobody measured are left out."""
    if not rows:
        return [], []
    first = [r for r in rows if r.model == rows[0].model]

    def base(attr: str) -> float | None:
        return _mean(getattr(r, attr) for r in first)

    columns: list[tuple[str, Callable[[FoldEfficiency], str], str | None]] = [
        ("Model", lambda r: r.model, None),
        ("Fold", lambda r: str(r.fold), None),
        ("Params (M)", lambda r: _num(r.parameters / 1e6), "parameters"),
        ("Nonzero (M)", lambda r: _num(None if r.nonzero_parameters is None else r.nonzero_parameters / 1e6),
         "nonzero_parameters"),
        ("GMAC/patch", lambda r: _num(r.macs / 1e9), "macs"),
        ("Checkpoint (MB)", lambda r: _num(r.checkpoint_bytes / 1e6), "checkpoint_bytes"),
        ("CPU ms", lambda r: _num(r.cpu_ms_eager), "cpu_ms_eager"),
        ("CPU ms compiled", lambda r: _num(r.cpu_ms_compiled), "cpu_ms_compiled"),
        ("GPU ms", lambda r: _num(r.gpu_ms_eager), "gpu_ms_eager"),
        ("GPU ms compiled", lambda r: _num(r.gpu_ms_compiled), "gpu_ms_compiled"),
        ("GPU peak (MB)", lambda r: _num(r.gpu_peak_mb), "gpu_peak_mb"),
        ("Dice", lambda r: "-" if r.dice is None else f"{r.dice:.4f}", None),  # always: missing Dice is news
    ]
    b = {a: base(a) for a in ("parameters", "macs", "cpu_ms_eager", "cpu_ms_compiled", "gpu_ms_eager",
                              "gpu_ms_compiled", "dice")}
    columns += [
        ("Params vs first", lambda r: _ratio(r.parameters, b["parameters"]), "parameters"),
        ("MACs vs first", lambda r: _ratio(r.macs, b["macs"]), "macs"),
        ("CPU ms vs first", lambda r: _ratio(r.cpu_ms_eager, b["cpu_ms_eager"]), "cpu_ms_eager"),
        ("CPU compiled vs first", lambda r: _ratio(r.cpu_ms_compiled, b["cpu_ms_compiled"]), "cpu_ms_compiled"),
        ("GPU ms vs first", lambda r: _ratio(r.gpu_ms_eager, b["gpu_ms_eager"]), "gpu_ms_eager"),
        ("GPU compiled vs first", lambda r: _ratio(r.gpu_ms_compiled, b["gpu_ms_compiled"]), "gpu_ms_compiled"),
        ("Dice vs first", lambda r: "-" if r.dice is None or b["dice"] is None else f"{r.dice - b['dice']:+.4f}",
         "dice"),
    ]
    if len({r.model for r in rows}) < 2:  # relative to itself says nothing
        columns = [c for c in columns if not c[0].endswith("vs first")]
    columns = [c for c in columns if c[2] is None or any(getattr(r, c[2]) is not None for r in rows)]
    if not any(r.nonzero_parameters is not None and r.nonzero_parameters < 0.95 * r.parameters for r in rows):
        # no unstructured sparsity worth a column (a few exact zeros, e.g. untrained biases, are no news)
        columns = [c for c in columns if c[0] != "Nonzero (M)"]
    return [c[0] for c in columns], [[c[1](r) for c in columns] for r in rows]


def format_table(rows: Sequence[FoldEfficiency]) -> str:
    """The report as an aligned plain-text table for the terminal."""
    headers, cells = _table(rows)
    if not headers:
        return "(no results)"
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]

    def line(values):
        pairs = zip(values, widths, strict=True)
        return "  ".join(v.ljust(w) if i < 2 else v.rjust(w) for i, (v, w) in enumerate(pairs))

    return "\n".join([line(headers), "  ".join("-" * w for w in widths), *(line(c) for c in cells)])


def format_markdown(rows: Sequence[FoldEfficiency]) -> str:
    """The report as a Markdown document: the table, what the numbers mean, and any measurement notes."""
    headers, cells = _table(rows)
    lines = ["# nnunet-prune efficiency report", ""]
    if headers:
        lines.append("| " + " | ".join(headers) + " |")
        lines.append("|" + "|".join(":---" if i < 2 else "---:" for i in range(len(headers))) + "|")
        lines += ["| " + " | ".join(c) + " |" for c in cells]
    lines += ["", "MACs: multiply-accumulates for one patch (batch 1, inference path without deep supervision), "
                  "counted exactly by PyTorch's flop counter. Latency: median milliseconds per patch (batch 1); CPU "
                  "and GPU eager in float32, compiled = `torch.compile` (on GPU with CUDA graphs + bf16). "
                  "Dice: foreground mean of nnU-Net's validation (`fold_k/validation/summary.json`)."
              + (" 'vs first': relative to the first model given (mean over its folds)."
                 if any(h.endswith("vs first") for h in headers) else "")]
    setup = []
    threads = sorted({r.threads for r in rows if r.threads})
    if threads:
        setup.append(f"CPU threads: {', '.join(map(str, threads))}")
    gpus = sorted({r.gpu_name for r in rows if r.gpu_name})
    if gpus:
        setup.append(f"GPU: {', '.join(gpus)}")
    repeats = sorted({r.repeats for r in rows if r.repeats})
    if repeats:
        setup.append(f"repeats: {', '.join(map(str, repeats))}")
    setup.append(f"PyTorch {torch.__version__}")
    lines += ["", "; ".join(setup) + "."]
    patches = dict.fromkeys(f"{r.model}: {r.trainer}, configuration {r.configuration}, patch "
                            f"{'x'.join(map(str, r.patch_size))} (`{r.path}`)" for r in rows)
    lines += ["", "Models:", "", *(f"- {p}" for p in patches)]
    notes = [n for r in rows for n in r.notes]
    if notes:
        lines += ["", "Notes:", "", *(f"- {n}" for n in notes)]
    return "\n".join(lines) + "\n"


def _records(rows: Sequence[FoldEfficiency]) -> list[dict]:
    """Flat dicts for the CSV: patch size as '128x128', one 'dice_<label>' column per label."""
    out = []
    for r in rows:
        d = asdict(r)
        d["patch_size"] = "x".join(map(str, r.patch_size))
        d["notes"] = "; ".join(r.notes)
        per_class = d.pop("dice_per_class") or {}
        d.update({f"dice_{k}": v for k, v in per_class.items()})
        out.append(d)
    return out


def plot_dice_vs_macs(rows: Sequence[FoldEfficiency], file: str | os.PathLike) -> bool:
    """Scatter validation Dice against GMACs per patch (log x), one marker per model/fold; rows without Dice are
    left out. Returns False (and writes nothing) when no row has a Dice."""
    points = [r for r in rows if r.dice is not None]
    if not points:
        return False
    # the object-oriented API with the Agg canvas: no pyplot, so the caller's backend (e.g. Jupyter's) is untouched
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, NullFormatter

    models = list(dict.fromkeys(r.model for r in points))
    markers = "osD^vP*Xh<>"
    colors = colormaps["tab10"]
    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for i, model in enumerate(models):
        mine = [r for r in points if r.model == model]
        ax.scatter([r.gmacs for r in mine], [r.dice for r in mine], marker=markers[i % len(markers)],
                   color=colors(i % 10), label=model, s=45, zorder=3)
        folds_at: dict[tuple[float, float], list[str]] = {}  # folds on the same spot share one label
        for r in mine:
            folds_at.setdefault((r.gmacs, r.dice), []).append(str(r.fold))
        for xy, folds in folds_at.items():
            ax.annotate("f" + ",".join(folds), xy, textcoords="offset points", xytext=(5, 4), fontsize=7)
    ax.set_xscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    gmacs = [r.gmacs for r in points]
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(plain if max(gmacs) < 10 * min(gmacs) else NullFormatter())
    ax.margins(x=0.08, y=0.1)
    ax.set_xlabel("GMACs per patch (log scale)")
    ax.set_ylabel("validation Dice (foreground mean)")
    ax.set_title("Dice vs compute")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(file, dpi=150)
    return True


def write_report(rows: Sequence[FoldEfficiency], out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``report.csv``, ``report.md`` and (when any row has a Dice) ``dice_vs_macs.png`` into ``out_dir``;
    returns the written paths by kind ('csv', 'markdown', 'plot')."""
    import pandas as pd

    out = Path(out_dir).expanduser()
    check_writable_files(out, OUTPUT_FILES, TOOL)
    out.mkdir(parents=True, exist_ok=True)
    written = {"csv": out / "report.csv", "markdown": out / "report.md"}
    pd.DataFrame(_records(rows)).to_csv(written["csv"], index=False)
    written["markdown"].write_text(format_markdown(rows))
    if plot_dice_vs_macs(rows, out / "dice_vs_macs.png"):
        written["plot"] = out / "dice_vs_macs.png"
    record_files(out, TOOL, written.values())
    return written
