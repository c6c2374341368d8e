"""Efficiency report: parameters, MACs, checkpoint size, latency, GPU memory and validation Dice, side by side.

Pruning is only worth it if the model gets cheaper where it runs and stays accurate, so every number here is
measured on the real networks of trained nnU-Net model folders: exact MACs for one patch (PyTorch's flop counter,
inference path), the median latency of one patch (batch 1) eagerly and compiled, and the Dice nnU-Net's own
validation wrote to ``fold_k/validation/summary.json``. Rows are plain dataclasses; :func:`write_report` turns
them into CSV, Markdown and a Dice-vs-MACs plot.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from nnunet_prune import NnUNetPruneError
from nnunet_prune.core.latency import (
    LatencyStats,
    measure_latency,
    measure_latency_stats,
    peak_gpu_memory_mb,
)
from nnunet_prune.core.outputs import check_writable_files, record_files
from nnunet_prune.core.stats import count_macs, count_parameters
from nnunet_prune.core.timing import NOT_COMPARABLE, LoadSource, TimingPolicy
from nnunet_prune.nnunet.modelfolder import ModelFolder, label_names, parse_fold

TOOL = "report"
#: the files ``report`` writes into its output folder (an existing one must be its own earlier output)
OUTPUT_FILES = ("report.csv", "report.md", "dice_vs_macs.png", "end_to_end.csv")

__all__ = [
    "FoldEfficiency", "LatencyStats", "busy_machine_warning", "check_runtimes", "class_notes", "format_markdown",
    "format_table",
    "load_average",
    "measure_latency", "measure_latency_stats", "measure_model_folder", "timing_warnings",
    "open_model_folders", "peak_gpu_memory_mb", "plot_dice_vs_macs", "dice_from_summary", "read_dice",
    "resolve_device", "write_report",
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
    #: interquartile range (ms) of the timed runs behind each latency above (None where not measured)
    cpu_ms_eager_iqr: float | None = None
    cpu_ms_compiled_iqr: float | None = None
    gpu_ms_eager_iqr: float | None = None
    gpu_ms_compiled_iqr: float | None = None
    #: 1-minute load average of the machine just before this fold was timed (None where the OS has none)
    load_average: float | None = None
    path: str = ""
    #: what went wrong while measuring (e.g. a failed torch.compile)
    notes: list[str] = field(default_factory=list)
    #: median CPU ms per patch through each deployment runtime of :mod:`nnunet_prune.networks.runtime` (ONNX Runtime,
    #: OpenVINO; float32, same threads), by runtime name, and their interquartile ranges
    cpu_ms_runtimes: dict[str, float] = field(default_factory=dict)
    cpu_ms_runtimes_iqr: dict[str, float] = field(default_factory=dict)
    #: latencies that are not comparable (:mod:`nnunet_prune.core.timing`: a busy machine, runs that do not agree) and
    #: why, keyed by field prefix (``cpu_ms_eager``, ``cpu_ms_compiled``, ``gpu_ms_eager``, ``gpu_ms_compiled``) or
    #: runtime name (``onnxruntime``, ``openvino``); ratios, speed-ups and "fastest" built on them read 'n/c'
    latency_not_comparable: dict[str, str] = field(default_factory=dict)
    #: the most cores other processes used while this fold was timed (None: unknown)
    other_cores: float | None = None

    def not_comparable(self, *keys: str) -> str | None:
        """Why a latency of ``keys`` (all of this fold's if none given) is not comparable, or None."""
        keys = keys or tuple(self.latency_not_comparable)
        return next((self.latency_not_comparable[k] for k in keys if k in self.latency_not_comparable), None)

    def cpu_not_comparable(self) -> str | None:
        """Why the CPU latencies of this fold cannot be ranked (one of them is not comparable), or None."""
        return self.not_comparable("cpu_ms_eager", "cpu_ms_compiled", *self.cpu_ms_runtimes)

    def cpu_latencies(self) -> dict[str, float]:
        """Median CPU ms per patch of every way this fold was run: ``pytorch`` (eager), ``torch-compile`` and the
        runtimes (only those measured)."""
        out = {"pytorch": self.cpu_ms_eager, "torch-compile": self.cpu_ms_compiled, **self.cpu_ms_runtimes}
        return {k: v for k, v in out.items() if v is not None}

    @property
    def fastest_cpu(self) -> str | None:
        """The name of the fastest way measured to run this fold on the CPU (None if none was timed)."""
        times = self.cpu_latencies()
        return min(times, key=times.get) if times else None

    @property
    def gmacs(self) -> float:
        """MACs per patch in billions (GMACs)."""
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


#: words for the latency keys of :attr:`FoldEfficiency.latency_not_comparable`
LATENCY_WORDS = {"cpu_ms_eager": "CPU eager", "cpu_ms_compiled": "CPU compiled", "gpu_ms_eager": "GPU eager",
                 "gpu_ms_compiled": "GPU compiled"}


def timing_warnings(row: FoldEfficiency, busy: bool = True) -> list[str]:
    """One line per reason a row's latencies are not comparable (:mod:`nnunet_prune.core.timing`: a busy machine, runs
    that do not agree), naming the latencies; ``busy=False`` leaves out the lines about a busy machine."""
    by_reason: dict[str, list[str]] = {}
    for key, why in row.latency_not_comparable.items():
        if busy or not why.startswith("busy machine"):
            by_reason.setdefault(why, []).append(LATENCY_WORDS.get(key, key))
    return [f"{row.model} fold {row.fold}: latency not comparable ({', '.join(keys)}): {why}; its ratios read "
            f"'{NOT_COMPARABLE}'. Measure again on a quiet machine or with more --repeats."
            for why, keys in by_reason.items()]


def load_average() -> float | None:
    """The machine's 1-minute load average (None where the OS does not report one)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def busy_machine_warning(threads: int, load: float | None = None) -> str | None:
    """A warning when other work competes with timings that use ``threads`` CPU threads: the 1-minute load average
    exceeds the cores those threads leave free (plus 0.5); None when the machine looks quiet or reports no load."""
    load = load_average() if load is None else load
    cores = os.cpu_count() or 1
    if load is None or load <= max(0, cores - threads) + 0.5:
        return None
    return (f"the machine is busy (load average {load:.2f} on {cores} cores, timing with {threads} thread(s)): "
            f"latencies are inflated and not comparable between models; measure again on a quiet machine.")


def _first_line(e: BaseException, limit: int = 200) -> str:
    text = str(e).strip().splitlines()
    msg = f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")
    return msg if len(msg) <= limit else msg[: limit - 3] + "..."


def _warn_stderr(message: str) -> None:
    print(f"WARNING: {message}", file=sys.stderr, flush=True)


def _finite(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def dice_from_summary(summary: dict, dataset_json: dict) -> tuple[float | None, dict[str, float | None] | None]:
    """(foreground mean Dice, Dice per label name) from an nnU-Net evaluation ``summary.json`` (validation or
    ``nnUNetv2_evaluate_folder``); per-class None if it has no class Dice."""
    dice = _finite(summary.get("foreground_mean", {}).get("Dice"))
    names = label_names(dataset_json)
    per_class = {names.get(str(k), str(k)): _finite(v.get("Dice")) for k, v in summary.get("mean", {}).items()
                 if isinstance(v, dict) and "Dice" in v}
    return dice, per_class or None


def read_dice(folder: ModelFolder, fold) -> tuple[float | None, dict[str, float | None] | None]:
    """(foreground mean Dice, Dice per label name) from the fold's validation summary.json; (None, None) if the fold
    was not validated."""
    summary = folder.validation_summary(fold)
    return dice_from_summary(summary, folder.dataset_json) if summary else (None, None)


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


@dataclass
class _Timing:
    """How every latency of one measurement is taken (the arguments of :func:`measure_model_folder`)."""

    repeats: int
    warmup: int
    threads: int | None
    warn: Callable[[str], None] | None
    label: str
    #: policy, load source and clock of :func:`~nnunet_prune.core.latency.measure_latency_stats`
    policy: dict


def _cost_row(mf: ModelFolder, fold, net: torch.nn.Module, t: _Timing) -> FoldEfficiency:
    """The fold's row with what needs no timing: parameters, MACs per patch, non-zero parameters, checkpoint bytes and
    the validation Dice."""
    dice, per_class = read_dice(mf, fold)
    patch = mf.patch_size
    return FoldEfficiency(
        model=t.label, fold=fold, trainer=mf.trainer_name, configuration=mf.configuration_name,
        patch_size=list(patch), parameters=count_parameters(net), macs=count_macs(net, patch),
        nonzero_parameters=sum(int(torch.count_nonzero(p)) for p in net.parameters()),
        checkpoint_bytes=mf.checkpoint_bytes(fold), dice=dice, dice_per_class=per_class, repeats=t.repeats,
        path=str(mf.path))


def _put(row: FoldEfficiency, prefix: str, stats: LatencyStats | None) -> None:
    """A latency's median and IQR (ms) into ``row``'s fields ``prefix`` and ``prefix_iqr``, with its verdict."""
    setattr(row, prefix, None if stats is None else stats.median_ms)
    setattr(row, prefix + "_iqr", None if stats is None else stats.iqr_ms)
    _verdict(row, prefix, stats)


def _compiled(row: FoldEfficiency, net: torch.nn.Module, patch: Sequence[int], where: torch.device, bf16: bool,
              t: _Timing) -> LatencyStats | None:
    """The ``torch.compile`` latency on ``where``; None plus a note (and a warning) if compiling fails."""
    try:
        return measure_latency_stats(net, patch, where, t.repeats, t.warmup, runtime="compile", bf16=bf16,
                                     threads=t.threads if where.type == "cpu" else None, **t.policy)
    except Exception as e:  # inductor needs a C++ compiler / Triton; eager numbers are still worth having
        note = f"torch.compile on {where.type} failed for {t.label} fold {row.fold} ({_first_line(e)})"
        row.notes.append(note)
        if t.warn is not None:
            t.warn(note + "; compiled latency left empty.")
        return None


def _time_on_cpu(row: FoldEfficiency, net: torch.nn.Module, patch: Sequence[int], compile: bool,
                 runtimes: Sequence[str], t: _Timing, stored: tuple | None = None) -> None:
    """The CPU latencies of ``row``: eager, compiled (with ``compile``), through each deployment runtime and, for an
    INT8 folder, through its stored INT8 model (``stored``: (runtime, options, blob); column ``openvino int8``)."""
    cpu = torch.device("cpu")
    row.threads = t.threads or torch.get_num_threads()
    _put(row, "cpu_ms_eager", measure_latency_stats(net, patch, cpu, t.repeats, t.warmup, threads=t.threads,
                                                    **t.policy))
    _put(row, "cpu_ms_compiled", _compiled(row, net, patch, cpu, False, t) if compile else None)
    timed = [(name, name, None) for name in runtimes]
    if stored is not None:
        timed.append((f"{stored[0]} int8", stored[0], stored))
    for column, name, model in timed:
        stats = _runtime_ms(net, name, patch, t.repeats, t.warmup, row.threads, row, t.warn, t.policy, stored=model)
        if stats is not None:
            row.cpu_ms_runtimes[column], row.cpu_ms_runtimes_iqr[column] = stats.median_ms, stats.iqr_ms
            _verdict(row, column, stats)


def _stored_int8(mf: ModelFolder, fold) -> tuple | None:
    """(runtime, options, stored model) of an INT8 runtime folder's fold (``export --int8``), else None."""
    if not mf.int8:
        return None
    return mf.runtime[0], mf.runtime[1], mf.load_checkpoint(fold).get("runtime_model")


def _time_on_gpu(row: FoldEfficiency, net: torch.nn.Module, patch: Sequence[int], dev: torch.device, compile: bool,
                 bf16: bool, t: _Timing) -> None:
    """The GPU latencies of ``row`` (eager in float32; compiled with ``compile``) and its memory peak (MB)."""
    row.gpu_name = torch.cuda.get_device_name(dev)
    _put(row, "gpu_ms_eager", measure_latency_stats(net, patch, dev, t.repeats, t.warmup, **t.policy))  # float32
    _put(row, "gpu_ms_compiled", _compiled(row, net, patch, dev, bf16, t) if compile else None)
    row.gpu_peak_mb = peak_gpu_memory_mb(net, patch, dev, bf16=bf16)


def measure_model_folder(path: str | os.PathLike | ModelFolder, folds: Sequence | None = None, *,
                         device: str = "cpu", repeats: int = 10, warmup: int = 2, threads: int | None = None,
                         compile: bool = True, cpu: bool = True, bf16: bool = True, label: str | None = None,
                         warn: Callable[[str], None] | None = _warn_stderr,
                         runtimes: Sequence[str] | None = None, policy: TimingPolicy | None = None,
                         load: LoadSource | None = None,
                         clock: Callable[[], float] | None = None) -> list[FoldEfficiency]:
    """Measure every chosen fold (None: all trained folds) of a model folder.

    ``device`` 'cpu' times on the CPU only; 'cuda' (or 'auto' with a GPU) times on the GPU and, unless
    ``cpu=False``, on the CPU too. ``compile=False`` skips the ``torch.compile`` timings (compiling a 3D U-Net takes
    a while). ``bf16`` applies to the compiled GPU timing and the GPU memory peak only. A failed compile is
    recorded as None plus a note, reported via ``warn`` (default: one line on stderr), and never aborts the
    measurement. ``runtimes``: the deployment runtimes (:func:`check_runtimes`) timed on the CPU next to PyTorch
    (each fold converted in memory, as ``nnunet-prune export --runtime`` would write it); None: every installed one.
    Latencies: :mod:`nnunet_prune.core.timing` (``policy``, ``load``, ``clock`` as there; ``repeats`` runs at least);
    one
    not comparable goes to ``FoldEfficiency.latency_not_comparable`` with why, and is said via ``warn``.

    Raises:
        NnUNetPruneError: bad repeats, warmup or threads, an unknown device or runtime, a runtime not installed.
    """
    runtimes = check_runtimes(runtimes)
    dev = resolve_device(device)
    if repeats < 1 or warmup < 0:
        raise NnUNetPruneError(f"--repeats must be at least 1 and --warmup at least 0 (got {repeats}, {warmup}).")
    if threads is not None and threads < 1:
        raise NnUNetPruneError(f"--threads must be at least 1 (got {threads}).")
    mf, chosen = _folder_and_folds(path, folds)
    t = _Timing(repeats, warmup, threads, warn, label or mf.path.name,
                {"policy": policy or TimingPolicy(repeats=repeats), "load": load, "clock": clock})
    rows = []
    for fold in chosen:
        net = mf.load_network(fold)
        row = _cost_row(mf, fold, net, t)
        row.load_average = load_average()
        if cpu or dev.type == "cpu":
            _time_on_cpu(row, net, mf.patch_size, compile, runtimes, t, _stored_int8(mf, fold))
        if dev.type == "cuda":
            _time_on_gpu(row, net, mf.patch_size, dev, compile, bf16, t)
        for message in timing_warnings(row) if warn is not None else []:
            warn(message)
        rows.append(row)
        del net
    return rows


def _folder_and_folds(path: str | os.PathLike | ModelFolder, folds: Sequence | None) -> tuple[ModelFolder, list]:
    """The model folder (opened and checked unless it is one already) and the folds to measure."""
    if not isinstance(path, ModelFolder):
        mf = open_model_folders([path], folds)[0]
        return mf, mf.folds
    mf = path
    chosen = mf.folds if folds is None else [parse_fold(f) for f in folds]
    if any(f not in mf.folds for f in chosen):
        mf = ModelFolder.open(mf.path, folds, mf.checkpoint_name)  # checks the folds exist
    return mf, chosen


def check_runtimes(names: Sequence[str] | None) -> list[str]:
    """The deployment runtimes to time: ``names`` checked (known, installed, not ``torch-compile``, which is the
    compiled column), or every installed one for None.

    Raises:
        NnUNetPruneError: an unknown runtime, or one whose package is not installed (says what to install).
    """
    from nnunet_prune.core.runtime_specs import check_timed_runtimes
    from nnunet_prune.networks import runtime as runtimes

    out = check_timed_runtimes(names)  # the checks that import nothing (`nnunet-prune report` runs them first)
    for name in out if names is not None else []:
        runtimes.require_runtime(name)  # a named runtime whose package is installed but does not import
    return out


def _verdict(row: FoldEfficiency, key: str, stats: LatencyStats | None) -> None:
    """Record a latency's verdict and load reading on ``row`` (under ``key``)."""
    if stats is None:
        return
    if stats.not_comparable:
        row.latency_not_comparable[key] = stats.not_comparable
    if stats.other_cores is not None:
        row.other_cores = max(row.other_cores or 0.0, stats.other_cores)


def _runtime_ms(net: torch.nn.Module, name: str, patch: Sequence[int], repeats: int, warmup: int, threads: int,
                row: FoldEfficiency, warn: Callable[[str], None] | None,
                timing: dict | None = None, stored: tuple | None = None) -> LatencyStats | None:
    """CPU latency of ``net`` run by runtime ``name`` with ``threads`` threads (``timing``: policy, load and clock
    of :func:`measure_latency_stats`; ``stored``: (runtime, options, blob) of a fold's stored model, run as its folder
    runs it); None plus a note if it fails."""
    from nnunet_prune.networks.runtime import RuntimeNetwork, clear_executors

    try:
        if stored is not None:
            wrapped = RuntimeNetwork.from_stored(net, name, {**stored[1], "threads": threads}, stored[2])
        else:
            wrapped = RuntimeNetwork.around(net, name, patch, {"threads": threads})
        return measure_latency_stats(wrapped, patch, torch.device("cpu"), repeats, warmup, threads=threads,
                                     **(timing or {}))
    except Exception as e:  # an operator the runtime lacks must not cost the other numbers
        note = f"{name} failed for {row.model} fold {row.fold} ({_first_line(e)})"
        row.notes.append(note)
        if warn is not None:
            warn(note + f"; {name} latency left empty.")
        return None
    finally:
        clear_executors()  # one fold's session is not needed again


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


def _ratio(value: float | None, base: float | None, less: str = "fewer", more: str = "more") -> str:
    """A change as users quote it: '78x fewer (-98.7 %)', '1.9x faster (-47.4 %)', '1.2x more (+20.0 %)', 'same'."""
    if value is None or not base:
        return "-"
    change = value / base - 1
    if abs(change) < 0.005:
        return "same"
    if value <= 0:
        return f"none ({change:+.1%})".replace("%", " %")
    factor = base / value if change < 0 else value / base
    shown = f"{factor:.3g}" if factor < 100 else f"{factor:.0f}"
    return f"{shown}x {less if change < 0 else more} ({change:+.1%})".replace("%)", " %)")


def _latency(median: float | None, iqr: float | None, not_comparable: str | None = None) -> str:
    """'95.1 ±1.6': median and half the interquartile range; '5361 ±792 (n/c)' for a timing that is not
    comparable."""
    if median is None:
        return "-"
    return (_num(median) + ("" if iqr is None else f" ±{_num(iqr / 2)}")
            + (f" ({NOT_COMPARABLE})" if not_comparable else ""))


FASTER = ("faster", "slower")


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _fastest_cpu(row: FoldEfficiency) -> str:
    """'openvino (2.3x eager)': the fastest CPU runtime and its speed-up over PyTorch eager."""
    best = row.fastest_cpu
    if best is None:
        return "-"
    if row.cpu_not_comparable():  # a ranking of timings that do not count is no result
        return NOT_COMPARABLE
    times = row.cpu_latencies()
    if best == "pytorch" or row.cpu_ms_eager is None:
        return best
    return f"{best} ({row.cpu_ms_eager / times[best]:.3g}x eager)"


def _latency_of(prefix: str) -> Callable[[FoldEfficiency], str]:
    """The cell of latency ``prefix`` (e.g. ``cpu_ms_eager``): median ±half the IQR, '(n/c)' if not comparable."""
    return lambda r: _latency(getattr(r, prefix), getattr(r, prefix + "_iqr"), r.not_comparable(prefix))


def _dice(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def classes(rows: Sequence[FoldEfficiency]) -> list[str]:
    """The label names of every row's per-class Dice, in order of first appearance."""
    return list(dict.fromkeys(c for r in rows for c in (r.dice_per_class or {})))


def class_notes(rows: Sequence[FoldEfficiency]) -> list[str]:
    """Plain notes on the classes a model fold did not learn, which its foreground mean hides (one note per class
    no fold learned): :func:`nnunet_prune.tools.class_dice.class_notes`, the same words as the demo and the benchmark,
    with every model fold as one model."""
    from nnunet_prune.tools.class_dice import class_notes as notes

    return notes({f"{r.model} fold {r.fold}": r.dice_per_class for r in rows if r.dice_per_class},
                 advice="train longer")


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
        ("CPU ms", _latency_of("cpu_ms_eager"), "cpu_ms_eager"),
        ("CPU ms compiled", _latency_of("cpu_ms_compiled"), "cpu_ms_compiled"),
        *((f"CPU ms {name}", lambda r, n=name: _latency(r.cpu_ms_runtimes.get(n), r.cpu_ms_runtimes_iqr.get(n),
                                                         r.not_comparable(n)),
           None) for name in dict.fromkeys(n for r in rows for n in r.cpu_ms_runtimes)),
        ("Fastest on CPU", _fastest_cpu, None),
        ("GPU ms", _latency_of("gpu_ms_eager"), "gpu_ms_eager"),
        ("GPU ms compiled", _latency_of("gpu_ms_compiled"), "gpu_ms_compiled"),
        ("GPU peak (MB)", lambda r: _num(r.gpu_peak_mb), "gpu_peak_mb"),
        ("Dice", lambda r: _dice(r.dice), None),  # always: missing Dice is news
        *((f"Dice {c}", lambda r, c=c: _dice((r.dice_per_class or {}).get(c)), None) for c in classes(rows)),
    ]
    b = {a: base(a) for a in ("parameters", "macs", "cpu_ms_eager", "cpu_ms_compiled", "gpu_ms_eager",
                              "gpu_ms_compiled", "dice")}
    base_nc = {k: any(r.not_comparable(k) for r in first) for k in LATENCY_WORDS}

    def faster(key: str) -> Callable[[FoldEfficiency], str]:
        """The change of a latency against the first model's, or 'n/c' where either timing does not count."""
        return lambda r: (NOT_COMPARABLE if getattr(r, key) is not None and (r.not_comparable(key) or base_nc[key])
                          else _ratio(getattr(r, key), b[key], *FASTER))

    columns += [
        ("Params vs first", lambda r: _ratio(r.parameters, b["parameters"]), "parameters"),
        ("MACs vs first", lambda r: _ratio(r.macs, b["macs"]), "macs"),
        ("CPU ms vs first", faster("cpu_ms_eager"), "cpu_ms_eager"),
        ("CPU compiled vs first", faster("cpu_ms_compiled"), "cpu_ms_compiled"),
        ("GPU ms vs first", faster("gpu_ms_eager"), "gpu_ms_eager"),
        ("GPU compiled vs first", faster("gpu_ms_compiled"), "gpu_ms_compiled"),
        ("Dice vs first", lambda r: "-" if r.dice is None or b["dice"] is None else f"{r.dice - b['dice']:+.4f}",
         "dice"),
    ]
    if len({r.model for r in rows}) < 2:  # relative to itself says nothing
        columns = [c for c in columns if not c[0].endswith("vs first")]
    columns = [c for c in columns if c[2] is None or any(getattr(r, c[2]) is not None for r in rows)]
    if len({name for r in rows for name in r.cpu_latencies()}) < 2:  # one way of running: no choice to show
        columns = [c for c in columns if c[0] != "Fastest on CPU"]
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


def format_markdown(rows: Sequence[FoldEfficiency], end_to_end: Sequence | None = None,
                    settings: Sequence | None = None) -> str:
    """The report as a Markdown document: the table, what the numbers mean, the end-to-end prediction times
    (:mod:`nnunet_prune.tools.report.end_to_end`, if measured), the settings against Dice
    (:mod:`nnunet_prune.tools.report.settings`, if measured) and any measurement notes."""
    headers, cells = _table(rows)
    lines = ["# nnunet-prune efficiency report", ""]
    if headers:
        lines.append("| " + " | ".join(headers) + " |")
        lines.append("|" + "|".join(":---" if i < 2 else "---:" for i in range(len(headers))) + "|")
        lines += ["| " + " | ".join(c) + " |" for c in cells]
    lines += ["", "MACs: multiply-accumulates for one patch (batch 1, inference path without deep supervision), "
                  "counted exactly by PyTorch's flop counter. Latency: median milliseconds per patch (batch 1); CPU "
                  "and GPU eager in float32, compiled = `torch.compile` (on GPU with CUDA graphs + bf16), 'CPU ms "
                  "onnxruntime' / 'openvino': the fold converted to ONNX and run by that runtime (float32, same "
                  "threads; what `nnunet-prune export --runtime` deploys); "
                  "'±' is half the interquartile range of the timed runs; each latency is timed until its median "
                  "is known to ±5 % (at most 5x the repeats or 30 s), and one measured on a busy machine or whose "
                  f"median stays unknown is marked '({NOT_COMPARABLE})': not comparable, so ratios and 'Fastest' "
                  f"built on it read '{NOT_COMPARABLE}' (why: Notes). "
                  "Dice: foreground mean of nnU-Net's validation (`fold_k/validation/summary.json`), and per "
                  "class ('Dice <label>')."
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
    loads = [r.load_average for r in rows if r.load_average is not None]
    if loads:
        setup.append(f"load average before timing: {min(loads):.2f}-{max(loads):.2f} on {os.cpu_count()} cores")
    others = [r.other_cores for r in rows if r.other_cores is not None]
    if others:
        setup.append(f"cores other processes used while timing: up to {max(others):.1f}")
    setup.append(f"PyTorch {torch.__version__}")
    lines += ["", "; ".join(setup) + "."]
    patches = dict.fromkeys(f"{r.model}: {r.trainer}, configuration {r.configuration}, patch "
                            f"{'x'.join(map(str, r.patch_size))} (`{r.path}`)" for r in rows)
    lines += ["", "Models:", "", *(f"- {p}" for p in patches)]
    if end_to_end:
        from nnunet_prune.tools.report.end_to_end import format_end_to_end

        lines += ["", "## End to end: nnUNetv2_predict", "", *format_end_to_end(end_to_end)]
        staged = [r.stages for r in end_to_end if getattr(r, "stages", None) is not None]
        if staged:
            from nnunet_prune.tools.report.stages import format_stages

            lines += ["", "## Where the time goes: the same prediction stage by stage", "", *format_stages(staged)]
    if settings:
        from nnunet_prune.tools.report.settings import format_settings

        lines += ["", "## Settings against Dice: the validation cases", "", *format_settings(settings)]
    notes = [*class_notes(rows), *(n for r in rows for n in [*r.notes, *timing_warnings(r)])]
    if notes:
        lines += ["", "Notes:", "", *(f"- {n}" for n in notes)]
    return "\n".join(lines) + "\n"


def _records(rows: Sequence[FoldEfficiency]) -> list[dict]:
    """Flat dicts for the CSV: patch size as '128x128', one 'dice_<label>' column per label; 'latency_comparable'
    (False when any latency of the fold is not) and 'latency_not_comparable' (which and why); 'fastest_cpu' is
    empty where the CPU timings cannot be ranked."""
    out = []
    for r in rows:
        d = asdict(r)
        d["patch_size"] = "x".join(map(str, r.patch_size))
        d["notes"] = "; ".join(r.notes)
        per_class = d.pop("dice_per_class") or {}
        d.update({f"dice_{k}": v for k, v in per_class.items()})
        for name in d.pop("cpu_ms_runtimes"):
            d[f"cpu_ms_{name}"] = r.cpu_ms_runtimes[name]
            d[f"cpu_ms_{name}_iqr"] = r.cpu_ms_runtimes_iqr.get(name)
        d.pop("cpu_ms_runtimes_iqr")
        d["fastest_cpu"] = None if r.cpu_not_comparable() else r.fastest_cpu
        d["latency_comparable"] = not r.latency_not_comparable
        d["latency_not_comparable"] = "; ".join(f"{LATENCY_WORDS.get(k, k)}: {v}"
                                                for k, v in r.latency_not_comparable.items())
        out.append(d)
    return out


def plot_dice_vs_macs(rows: Sequence[FoldEfficiency], file: str | os.PathLike) -> bool:
    """Scatter validation Dice against GMACs per patch (log x, plain decimal ticks), one marker per model/fold. The
    Dice axis spans at least :data:`~nnunet_prune.core.plotting.MIN_DICE_SPAN` (differences of a few thousandths do not
    fill the plot) and the plot says that the Dice spread between training runs is not measured (one run per model).
    Fold labels are placed where they cover no other label or marker. Models on the same spot (an export and its
    source share GMACs and Dice) are drawn side by side and named in a note under the plot; rows without Dice are
    named in a note too. Returns False (and writes nothing) when no row has a Dice.

    Drawn in its own style with the object-oriented API (no pyplot): the caller's backend and rcParams (e.g. a
    global seaborn font scale) neither leak in nor are changed."""
    points = [r for r in rows if r.dice is not None]
    if not points:
        return False
    import textwrap

    from nnunet_prune.core.plotting import new_figure, noise_text, plot_style, save

    def folds_text(folds) -> str:
        folds = list(dict.fromkeys(str(f) for f in folds))
        return f"fold{'s' if len(folds) > 1 else ''} {', '.join(folds)}"

    # points that would hide each other: same GMACs (to 0.1 %) and Dice (to 1e-4)
    spots: dict[tuple[float, float], list[FoldEfficiency]] = {}
    for r in points:
        spots.setdefault((round(math.log10(max(r.gmacs, 1e-12)), 3), round(r.dice, 4)), []).append(r)
    shared: dict[tuple[str, ...], list[str]] = {}  # models drawn side by side -> their folds there
    for spot in spots.values():
        names = tuple(dict.fromkeys(r.model for r in spot))
        if len(names) > 1:
            shared.setdefault(names, []).extend(str(r.fold) for r in spot)
    notes = [noise_text(None, what="training runs of a model") + "."]
    notes += [f"Side by side (same GMACs and Dice): {' = '.join(names)} ({folds_text(folds)})"
              for names, folds in shared.items()]
    missing: dict[str, list[str]] = {}
    for r in rows:
        if r.dice is None:
            missing.setdefault(r.model, []).append(str(r.fold))
    if missing:
        notes.append("Not drawn, no validation Dice: "
                     + "; ".join(f"{m} ({folds_text(f)})" for m, f in missing.items()))

    with plot_style():
        fig = new_figure(figsize=(8, 4.8), layout="constrained")
        ax = fig.add_subplot()
        _draw_dice_vs_macs(ax, points, list(spots.values()))
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0, frameon=False, title="model")
        text = "\n".join(textwrap.fill(n, 110, subsequent_indent="    ") for n in notes)
        ax.annotate(text, (0, 0), xycoords=("axes fraction", ax.xaxis.label), xytext=(0, -8),
                    textcoords="offset points", ha="left", va="top", fontsize=7.5, color="0.25")
        _label_spots(ax, list(spots.values()))
        save(fig, file)
    return True


def _draw_dice_vs_macs(ax, points: list[FoldEfficiency], spots: list[list[FoldEfficiency]]) -> None:
    """The markers (models sharing a spot side by side), the legend entries and the axes of
    :func:`plot_dice_vs_macs`."""
    from matplotlib import colormaps
    from matplotlib.transforms import offset_copy

    from nnunet_prune.core.plotting import dice_limits, readable_log_axis

    models = list(dict.fromkeys(r.model for r in points))
    markers = "osD^vP*Xh<>"
    colors = colormaps["tab10"]
    for spot in spots:
        names = list(dict.fromkeys(r.model for r in spot))
        for r in spot:
            i = models.index(r.model)
            dx = (names.index(r.model) - (len(names) - 1) / 2) * 9  # points, so every model stays visible
            ax.scatter([r.gmacs], [r.dice], marker=markers[i % len(markers)], color=colors(i % 10), s=45,
                       zorder=3, edgecolors="white", linewidths=0.6,
                       transform=offset_copy(ax.transData, fig=ax.figure, x=dx, y=0, units="points"))
    for i, model in enumerate(models):  # legend entries (the points above carry offsets)
        ax.scatter([], [], marker=markers[i % len(markers)], color=colors(i % 10), s=45, label=model)
    ax.set_xscale("log")
    gmacs = [r.gmacs for r in points]
    ax.set_xlim(min(gmacs) / 1.6, max(gmacs) * 1.6)  # room for the side-by-side markers and the labels
    readable_log_axis(ax, "x")
    ax.set_ylim(*dice_limits([r.dice for r in points]))
    ax.set_xlabel("GMACs per patch (log scale)")
    ax.set_ylabel("validation Dice (foreground mean)")
    ax.set_title("Validation Dice vs compute (f = fold)")
    ax.grid(True, which="both", alpha=0.3)


def _label_spots(ax, spots: list[list[FoldEfficiency]]) -> None:
    """'f0,1' next to every spot of :func:`plot_dice_vs_macs`, placed where it covers no other label or marker."""
    from nnunet_prune.core.plotting import place_labels

    xy = [(spot[0].gmacs, spot[0].dice) for spot in spots]
    texts = ["f" + ",".join(dict.fromkeys(str(r.fold) for r in spot)) for spot in spots]
    width = max(len(set(r.model for r in spot)) for spot in spots)
    place_labels(ax, xy, texts, fontsize=7, marker_pt=4 + 4.5 * (width - 1), color="0.3")


def write_report(rows: Sequence[FoldEfficiency], out_dir: str | os.PathLike,
                 end_to_end: Sequence | None = None, settings: Sequence | None = None) -> dict[str, Path]:
    """Write ``report.csv``, ``report.md`` (with ``settings`` rows of
    :func:`nnunet_prune.tools.report.settings.measure_settings`, their table too), (when any row has a Dice)
    ``dice_vs_macs.png`` and (with ``end_to_end`` rows of
    :func:`nnunet_prune.tools.report.end_to_end.measure_end_to_end`) ``end_to_end.csv`` into ``out_dir``; returns the
    written paths by kind ('csv', 'markdown', 'plot', 'end_to_end')."""
    import pandas as pd

    out = Path(out_dir).expanduser()
    check_writable_files(out, OUTPUT_FILES, TOOL)
    out.mkdir(parents=True, exist_ok=True)
    written = {"csv": out / "report.csv", "markdown": out / "report.md"}
    pd.DataFrame(_records(rows)).to_csv(written["csv"], index=False)
    written["markdown"].write_text(format_markdown(rows, end_to_end, settings))
    (out / "end_to_end.csv").unlink(missing_ok=True)  # an earlier run's (checked above to be this tool's own)
    if end_to_end:
        written["end_to_end"] = out / "end_to_end.csv"
        pd.DataFrame([{**asdict(r), "seconds_per_image": r.seconds_per_image} for r in end_to_end]).to_csv(
            written["end_to_end"], index=False)
    if plot_dice_vs_macs(rows, out / "dice_vs_macs.png"):
        written["plot"] = out / "dice_vs_macs.png"
    record_files(out, TOOL, written.values())
    return written
