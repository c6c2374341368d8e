"""``nnunet-prune benchmark``: every pruning method of this package on one dataset, one budget, one table.

Each method is trained by stock ``nnUNetv2_train`` in a subprocess with the same budget (``NNUNET_PRUNE_EPOCHS``,
``NNUNET_PRUNE_ITERS_PER_EPOCH``, ``NNUNET_PRUNE_VAL_ITERS``) and seed (``NNUNET_PRUNE_SEED``) into the benchmark's
own ``nnUNet_results`` folder (``OUT/seed_<S>/nnUNet_results``: a benchmark never trains into, reads from or
overwrites the user's trained models); with ``seeds`` > 1 every method is trained once per seed (S = seed, seed + 1,
...; each seed in its own ``OUT/seed_<S>/``) and the table gives the mean and standard deviation over the seeds;
planning uses the user's ``nnUNet_raw`` / ``nnUNet_preprocessed`` and this package's planners, and only creates
plans that do not exist yet. Then every model predicts the held-out images with stock ``nnUNetv2_predict`` and is
scored with nnU-Net's ``nnUNetv2_evaluate_folder`` (without a test set: the folds' validation ``summary.json``),
and :func:`nnunet_prune.tools.report.efficiency.measure_model_folder` measures it (parameters, MACs per patch,
checkpoint size,
CPU latency in PyTorch and every installed deployment runtime; GPU latency and memory on CUDA).

Outputs in ``OUT``: ``benchmark.csv`` and ``benchmark.md`` (one row per method, sorted by MACs; Dice per class),
``pareto.png`` (Dice against MACs, latency and parameters, the Pareto front drawn), ``maps/<method>.png`` (each
pruning method's width or branch map, first seed), ``commands.sh`` (every command exactly as run, with its
environment), ``seed_<S>/logs/`` (each step's output) and ``benchmark_state.json`` (the budget, the step wall times,
the measurements per seed). A rerun with the same options reuses every finished step and continues an interrupted
training with ``--c`` (Ctrl-C is reported as an interruption, not as a failure); a failed method is reported in
the table with its error and does not stop the others.
"""

from __future__ import annotations

import csv
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from nnunet_prune import NnUNetPruneError
from nnunet_prune.nnunet.seeding import SEED_VAR, check_seed
from nnunet_prune.tools.class_dice import class_notes, format_dice
from nnunet_prune.tools.commands import console_script, package_command
from nnunet_prune.tools.quiet import quiet_environment

TOOL = "benchmark"
MARKER = ".nnunet_prune_benchmark"
STATE = "benchmark_state.json"
DENSE = "dense"


@dataclass(frozen=True)
class MethodSpec:
    """One method of the benchmark: trained with ``trainer`` on plans ``plans`` (planned by ``planner``; None: the
    default plans). ``from_dense``: it starts from the benchmark's dense fold (``NNUNET_PRUNE_DENSE_MODEL``);
    ``magnitude``: its tau is the magnitude-pruning sweep's critical point on the dense model. ``export``: it is
    measured after ``nnunet-prune export`` (PSP-Seg: branches still masked at the end are deleted there, outputs
    unchanged). ``claim``: what the method's paper reports, to read the table against."""

    name: str
    label: str
    trainer: str
    plans: str = "nnUNetPlans"
    planner: str | None = None
    from_dense: bool = False
    magnitude: bool = False
    export: bool = False
    claim: str = ""


#: every method, in the order they are trained (the dense model first: others start from it)
METHODS: tuple[MethodSpec, ...] = (
    MethodSpec(DENSE, "nnU-Net default", "nnUNetTrainerBudget", claim="the reference"),
    MethodSpec("lunet", "LUnet 32", "nnUNetTrainerBudget", "nnUNetLUnetPlans", "LUnetPlanner",
               claim="LUnet: constant width 32, Dice on par with far fewer parameters"),
    MethodSpec("lunet16", "LUnet 16", "nnUNetTrainerBudget", "nnUNetLUnetPlans_16", "LUnetPlanner_16"),
    MethodSpec("lunet8", "LUnet 8", "nnUNetTrainerBudget", "nnUNetLUnetPlans_8", "LUnetPlanner_8"),
    MethodSpec("sauron", "Sauron", "nnUNetTrainerSauron", claim="Sauron: about -90 % MACs at similar Dice"),
    MethodSpec("stamp", "STAMP", "nnUNetTrainerSTAMP", claim="STAMP: gradual pruning, Dice kept"),
    MethodSpec("stamp_widestBlock", "STAMP widestBlock", "nnUNetTrainerSTAMP_widestBlock",
               claim="Lean U-Net: pruning the widest block is as good as STAMP"),
    MethodSpec("stamp_randomInBlock", "STAMP randomInBlock", "nnUNetTrainerSTAMP_randomInBlock"),
    MethodSpec("l1", "structured L1 (iterative)", "nnUNetTrainerStructuredL1_iterative", from_dense=True),
    MethodSpec("l2", "structured L2 (iterative)", "nnUNetTrainerStructuredL2_iterative", from_dense=True,
               claim="structured pruning study: iterative L2 keeps Dice up to 90 % of the filters removed"),
    MethodSpec("slimming", "network slimming (iterative)", "nnUNetTrainerStructuredSlimming_iterative",
               from_dense=True),
    MethodSpec("pspseg_s", "PSP-Seg-S", "nnUNetTrainerPSPSeg", "nnUNetPSPSegPlans_S", "PSPSegPlanner_S", export=True,
               claim="PSP-Seg-S: Dice on par with nnU-Net at 83-87 % fewer parameters"),
    MethodSpec("magnitude", "magnitude (critical tau)", "nnUNetTrainerMagnitude", from_dense=True, magnitude=True,
               claim="magnitude pruning: about 80 % sparsity at the critical tau"),
)
METHOD_NAMES = tuple(m.name for m in METHODS)


def method_spec(name: str) -> MethodSpec:
    """The :class:`MethodSpec` called ``name``.

    Raises:
        NnUNetPruneError: no method has that name (the message lists them)."""
    for m in METHODS:
        if m.name == name:
            return m
    raise NnUNetPruneError(f"Unknown benchmark method {name!r}. Methods: {', '.join(METHOD_NAMES)}.")


@dataclass
class BenchmarkSettings:
    """What a benchmark run is: the dataset (name, e.g. ``Dataset117_LiTS117``), configuration, folds, methods, the
    budget (``epochs`` x ``iterations`` training iterations, ``val_iterations`` per epoch), the held-out images and
    labels (None: the folds' validation), the device, and the seeds: ``seeds`` trainings of every method, with seeds
    ``seed`` .. ``seed + seeds - 1``. Everything but ``methods``, ``jobs``, ``repeats``, ``runtimes`` and ``seeds``
    must match on a rerun in the same output folder (more seeds add runs; fewer use the first ones)."""

    dataset: str
    configuration: str
    folds: list
    methods: list[str]
    epochs: int = 20
    iterations: int = 20
    val_iterations: int = 5
    test_images: str | None = None
    test_labels: str | None = None
    device: str = "cpu"
    sweep_taus: list[float] | None = None
    jobs: int = 1
    repeats: int = 10
    runtimes: list[str] | None = None
    seed: int = 0
    seeds: int = 1

    def identity(self) -> dict:
        """The settings that define the results (a rerun must give the same)."""
        return {k: getattr(self, k) for k in ("dataset", "configuration", "folds", "epochs", "iterations",
                                              "val_iterations", "test_images", "test_labels", "device",
                                              "sweep_taus", "seed")}

    def seed_list(self) -> list[int]:
        """The seeds of the runs: ``seed``, ``seed + 1``, ... (``seeds`` of them)."""
        return [self.seed + i for i in range(self.seeds)]


@dataclass
class MethodResult:
    """One row of the table. Sizes are per patch (MACs, batch 1) and averaged over the folds; latencies are median
    ms per patch (batch 1); ``dice`` is the foreground mean on the test set (``dice_source`` "test") or the mean of
    the folds' validation Dice ("validation"); seconds are wall times of this method's steps (training summed over
    folds). A row of one seed has ``seed``; the table's row of several seeds (:func:`aggregate_rows`) has the mean
    over ``seeds`` of every number, ``dice_spread`` / ``dice_per_class_spread`` the sample standard deviation of
    the Dice over them (None with one seed) and ``dice_per_seed`` each seed's Dice. ``status``: "pending", "ok",
    "failed" (``error`` says why) or "interrupted" (Ctrl-C; a rerun continues it)."""

    name: str
    label: str
    trainer: str
    plans: str
    status: str = "pending"
    error: str | None = None
    parameters: float | None = None
    initial_parameters: float | None = None
    nonzero_parameters: float | None = None
    macs: float | None = None
    checkpoint_mb: float | None = None
    cpu_ms: float | None = None
    fastest_runtime: str | None = None
    fastest_ms: float | None = None
    #: why the latencies are not comparable (a busy machine, runs that do not agree: :mod:`nnunet_prune.core.timing`),
    #: None when they are; the table then prints 'n/c' for the fastest runtime and marks the latency
    latency_not_comparable: str | None = None
    threads: int | None = None
    gpu_ms: float | None = None
    gpu_ms_compiled: float | None = None
    gpu_peak_mb: float | None = None
    dice: float | None = None
    dice_per_class: dict = field(default_factory=dict)
    dice_source: str | None = None
    tau: float | None = None
    train_seconds: float = 0.0
    predict_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    map_png: str | None = None
    seed: int | None = None
    seeds: list[int] = field(default_factory=list)
    dice_spread: float | None = None
    dice_per_class_spread: dict = field(default_factory=dict)
    dice_per_seed: dict = field(default_factory=dict)


class StepFailed(NnUNetPruneError):
    """A step of one method failed; the message names the step and holds the end of its log."""


class StepInterrupted(KeyboardInterrupt):
    """A step ended by Ctrl-C (its command exited on SIGINT, or the benchmark is stopping): not a failure."""


#: exit codes of a command that SIGINT ended (killed by it, or a shell's 128 + 2)
INTERRUPTED_CODES = (-signal.SIGINT, 128 + signal.SIGINT)
#: fields of a row that are per-run numbers: the mean over the seeds in the table
MEAN_FIELDS = ("parameters", "initial_parameters", "nonzero_parameters", "macs", "checkpoint_mb", "cpu_ms",
               "fastest_ms", "gpu_ms", "gpu_ms_compiled", "gpu_peak_mb", "tau", "train_seconds", "predict_seconds")


def _mean(values: Sequence[float | None]) -> float | None:
    return statistics.fmean(values) if values and None not in values else None


def _sd(values: Sequence[float | None]) -> float | None:
    return statistics.stdev(values) if len(values) > 1 and None not in values else None


def aggregate_rows(runs: Mapping[int, MethodResult]) -> MethodResult:
    """One method's table row from its runs (seed -> row of that seed): over the runs that worked, the mean of every
    number (:data:`MEAN_FIELDS`, Dice and Dice per class) and the sample standard deviation of the Dice
    (``dice_spread``, ``dice_per_class_spread``; None with one run), each seed's Dice, the notes of every run;
    other fields from the first of them. A seed that failed is named in the notes; none worked: the first failure
    (or interruption) as it is."""
    seeds = sorted(runs)
    ok = [s for s in seeds if runs[s].status == "ok"]
    if not ok:
        first = runs[seeds[0]]
        return replace(first, seeds=[], notes=list(first.notes))
    rows = [runs[s] for s in ok]
    out = replace(rows[0], seed=None, seeds=ok, notes=[], dice_per_class=dict(rows[0].dice_per_class))
    for name in MEAN_FIELDS:
        setattr(out, name, _mean([getattr(r, name) for r in rows]))
    out.train_seconds, out.predict_seconds = out.train_seconds or 0.0, out.predict_seconds or 0.0
    out.dice, out.dice_spread = _mean([r.dice for r in rows]), _sd([r.dice for r in rows])
    classes = list(dict.fromkeys(c for r in rows for c in r.dice_per_class))
    per_class = {c: [r.dice_per_class.get(c) for r in rows] for c in classes}
    out.dice_per_class = {c: _mean(v) for c, v in per_class.items()}
    out.dice_per_class_spread = {c: _sd(v) for c, v in per_class.items()} if len(rows) > 1 else {}
    out.dice_per_seed = {s: runs[s].dice for s in ok}
    out.latency_not_comparable = next((r.latency_not_comparable for r in rows if r.latency_not_comparable), None)
    prefix = len(seeds) > 1
    notes = [f"seed {s}: {n}" if prefix else n for s in ok for n in runs[s].notes]
    notes += [f"seed {s} {runs[s].status}" + (f": {runs[s].error}" if runs[s].error else "")
              for s in seeds if s not in ok]
    out.notes = list(dict.fromkeys(notes))
    return out


class Benchmark:
    """A benchmark in the output folder ``output`` (see the module docstring); :meth:`run` does everything.

    ``log`` receives one line per event (default: print). :meth:`check` runs every input check before any work.
    """

    def __init__(self, settings: BenchmarkSettings, output: str | os.PathLike,
                 log: Callable[[str], None] | None = None):
        self.s = settings
        self.out = Path(output).expanduser().resolve()
        self.log = log or (lambda line: print(line, flush=True))
        self.methods = [method_spec(n) for n in settings.methods]
        self.seed = settings.seed  # the seed whose run is trained now (run_seed)
        #: the rows of the current seed (the table's rows, aggregated over the seeds, after the last run)
        self.rows = self.new_rows(self.seed)
        self.runs: dict[int, dict[str, MethodResult]] = {}  # seed -> that run's rows
        self._tag = ""  # "seed S: " before each progress line with several seeds
        self._stop = threading.Event()  # Ctrl-C: no step starts any more, a step that ends is "interrupted"
        self.state: dict = {}
        self._lock = threading.Lock()
        self._dense_done = threading.Event()
        self._dense_ok = False
        self._sweep_lock = threading.Lock()
        self._start = time.perf_counter()

    def new_rows(self, seed: int) -> dict[str, MethodResult]:
        """Empty rows of every method for the run with seed ``seed``."""
        return {m.name: MethodResult(m.name, m.label, m.trainer, m.plans, seed=seed) for m in self.methods}

    @property
    def run_dir(self) -> Path:
        """The folder of the current seed's run, ``OUT/seed_<S>``: its nnUNet_results, predictions, exports, sweep
        and logs."""
        return self.out / f"seed_{self.seed}"

    @property
    def results_dir(self) -> Path:
        """The current seed's ``nnUNet_results`` (the benchmark's own, never the user's)."""
        return self.run_dir / "nnUNet_results"

    # ------------------------------------------------------------------ checks
    def check(self) -> None:
        """Every check that can be made before any work: nnU-Net's folders, the dataset, configuration, folds, the
        test images and labels, the output folder (new, empty, or an earlier benchmark with the same settings).

        Raises:
            NnUNetPruneError: with what to change.
        """
        from nnunet_prune.core.outputs import check_writable_files

        for var in ("nnUNet_raw", "nnUNet_preprocessed"):
            if not os.environ.get(var):
                raise NnUNetPruneError(f"{var} is not set: the benchmark plans and trains with nnU-Net's folders "
                                       f"(its trained models go to OUT/seed_<S>/nnUNet_results, not to "
                                       f"nnUNet_results).")
        raw = Path(os.environ["nnUNet_raw"]) / self.s.dataset
        if not (raw / "dataset.json").is_file():
            from nnunet_prune.nnunet.prechecks import dataset_listing

            raise NnUNetPruneError(f"{raw / 'dataset.json'} does not exist: is -d the right dataset? The benchmark "
                                   f"needs its raw data. {dataset_listing()}")
        self.dataset_json = json.loads((raw / "dataset.json").read_text())
        if self.s.epochs < 1 or self.s.iterations < 1 or self.s.val_iterations < 1:
            raise NnUNetPruneError("--epochs, --iters-per-epoch and --val-iters must be at least 1.")
        if self.s.jobs < 1 or self.s.repeats < 1:
            raise NnUNetPruneError("--jobs and --repeats must be at least 1.")
        if self.s.seeds < 1:
            raise NnUNetPruneError(f"--seeds {self.s.seeds}: give at least 1 (the number of trainings per method).")
        check_seed(self.s.seed, "--seed")
        check_seed(self.s.seed + self.s.seeds - 1, "--seed + --seeds - 1")
        if self.s.device not in ("cpu", "cuda"):
            raise NnUNetPruneError(f"--device must be cpu or cuda, not {self.s.device!r}.")
        if self.s.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise NnUNetPruneError("--device cuda: no CUDA device is available here. Use --device cpu.")
        from nnunet_prune.nnunet.modelfolder import parse_fold

        try:
            self.s.folds = [parse_fold(f) for f in self.s.folds]
        except (ValueError, NnUNetPruneError) as e:
            raise NnUNetPruneError(f"-f: {e}") from None
        if "all" in self.s.folds and not self.s.test_images:
            raise NnUNetPruneError("Fold 'all' has no validation cases: give --test-images and --test-labels, or "
                                   "train folds 0-4.")
        if bool(self.s.test_images) != bool(self.s.test_labels):
            raise NnUNetPruneError("Give both --test-images and --test-labels (nnU-Net's evaluation needs the "
                                   "labels), or neither (the folds' validation is used).")
        if self.s.test_images:
            self._check_test_set()
        from nnunet_prune.tools.report.efficiency import check_runtimes

        self.s.runtimes = check_runtimes(self.s.runtimes)  # known and installed, before any work
        if any(m.magnitude for m in self.methods) and DENSE not in self.s.methods:
            raise NnUNetPruneError("The magnitude method prunes the benchmark's dense model: add 'dense' to "
                                   "--methods.")
        if any(m.from_dense for m in self.methods) and DENSE not in self.s.methods:
            names = ", ".join(m.name for m in self.methods if m.from_dense)
            raise NnUNetPruneError(f"{names} start from the benchmark's dense model: add 'dense' to --methods.")
        self._check_plans()
        if self.out.exists() and not self.out.is_dir():
            raise NnUNetPruneError(f"-o {self.out} is a file; give a folder.")
        if self.out.is_dir() and any(self.out.iterdir()):
            if not (self.out / MARKER).is_file():
                raise NnUNetPruneError(f"-o {self.out} is not empty and holds no benchmark; choose a new or empty "
                                       f"folder (nothing was touched).")
            state = self._read_state()
            old = state.get("settings", {})
            mine = json.loads(json.dumps(self.s.identity()))
            differ = [k for k in mine if old.get(k) != mine[k]]
            if differ:
                detail = "; ".join(f"{k}: {old.get(k)!r} there, {mine[k]!r} now" for k in differ)
                raise NnUNetPruneError(f"-o {self.out} holds a benchmark with other settings ({detail}). Rerun it "
                                       f"with the same settings to continue it, or choose another -o.")
        check_writable_files(self.out, ("benchmark.md", "benchmark.csv", "pareto.png"), TOOL)

    def _check_test_set(self) -> None:
        from nnunet_prune.tools.sweep.magnitude import check_labels, list_cases

        images = Path(self.s.test_images).expanduser().resolve()
        labels = Path(self.s.test_labels).expanduser().resolve()
        try:
            cases = list_cases(images, self.dataset_json)
            check_labels(labels, list(cases), self.dataset_json["file_ending"])
        except NnUNetPruneError as e:
            raise NnUNetPruneError(str(e).replace(f"-i {images}", f"--test-images {images}")
                                   .replace("--labels", "--test-labels").replace("omit --test-labels",
                                                                                  "omit both")) from None
        self.s.test_images, self.s.test_labels = str(images), str(labels)

    def _check_plans(self) -> None:
        pre = Path(os.environ["nnUNet_preprocessed"]) / self.s.dataset
        for m in self.methods:
            file = pre / f"{m.plans}.json"
            if file.is_file():
                configs = json.loads(file.read_text()).get("configurations", {})
                if self.s.configuration not in configs:
                    raise NnUNetPruneError(
                        f"{file} exists but has no configuration {self.s.configuration!r} (it has "
                        f"{', '.join(configs)}). The benchmark does not overwrite plans: plan it yourself, e.g. "
                        f"nnUNetv2_plan_and_preprocess -d {self.s.dataset} -c {self.s.configuration}"
                        + (f" -pl {m.planner}" if m.planner else "") + ".")

    # ------------------------------------------------------------------ state
    def _read_state(self) -> dict:
        file = self.out / STATE
        if not file.is_file():
            return {}
        try:
            return json.loads(file.read_text())
        except ValueError:
            return {}

    def _save_state(self) -> None:
        from nnunet_prune.core.outputs import record_files

        with self._lock:
            self.state["rows"] = {k: asdict(v) for k, v in self.rows.items()}
            self.state["runs"] = {str(seed): {k: asdict(v) for k, v in rows.items()}
                                  for seed, rows in self.runs.items()}
            tmp = self.out / (STATE + ".tmp")
            tmp.write_text(json.dumps(self.state, indent=2, default=str))
            tmp.replace(self.out / STATE)
            record_files(self.out, TOOL, [self.out / STATE])

    def _key(self, step: str) -> str:
        """The state's name of a step of the current seed's run (its wall time), e.g. ``seed 0: dense predict``."""
        return f"seed {self.seed}: {step}"

    def _step_seconds(self, key: str, seconds: float | None = None) -> float | None:
        with self._lock:
            steps = self.state.setdefault("steps", {})
            if seconds is not None:
                steps[key] = round(seconds, 1)
            return steps.get(key)

    # ------------------------------------------------------------------ running commands
    @property
    def dataset_id(self) -> str:
        """The dataset's ID as nnU-Net's commands take it (``Dataset117_LiTS117`` -> ``117``)."""
        return self.s.dataset.split("_")[0].replace("Dataset", "").lstrip("0") or "0"

    def env(self, extra: dict | None = None) -> dict:
        """The environment of every step: the user's, with the benchmark's results folder and budget (and the
        warnings of :mod:`nnunet_prune.tools.quiet` filtered)."""
        env = quiet_environment(os.environ)
        env.update({
            "nnUNet_results": str(self.results_dir), "PYTHONUNBUFFERED": "1",
            "NNUNET_PRUNE_EPOCHS": str(self.s.epochs), "NNUNET_PRUNE_ITERS_PER_EPOCH": str(self.s.iterations),
            "NNUNET_PRUNE_VAL_ITERS": str(self.s.val_iterations), SEED_VAR: str(self.seed),
        })
        if self.s.device == "cpu":
            env.setdefault("nnUNet_n_proc_DA", "0")
        env.pop("NNUNET_PRUNE_DISABLE_HOOK", None)
        env.update(extra or {})
        return env

    def command(self, method: str, step: str, cmd: list[str], extra_env: dict | None = None) -> None:
        """Run ``cmd`` with :meth:`env` (plus ``extra_env``), its output into ``logs/<method>.<step>.log``, and append
        it to ``commands.sh`` (planning: ``OUT/logs/``; the rest: the current seed's ``logs/``).

        Raises:
            StepFailed: it exited with a non-zero code (the message holds its last lines).
            StepInterrupted: SIGINT ended it (Ctrl-C), or the benchmark is stopping after Ctrl-C (then it does not
                start)."""
        if self._stop.is_set():
            raise StepInterrupted(f"{method} {step}: not started (interrupted)")
        env = self.env(extra_env)
        shown = {k: env[k] for k in sorted(env) if k.startswith("NNUNET_PRUNE_") or k in ("nnUNet_results",)}
        shown.update(extra_env or {})
        line = " ".join(f"{k}={shlex.quote(v)}" for k, v in shown.items()) + " " + shlex.join(
            [Path(cmd[0]).name if cmd[0] != sys.executable else "python", *cmd[1:]])
        log = (self.out if method == "plans" else self.run_dir) / "logs" / f"{method}.{step}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with self._lock, open(self.out / "commands.sh", "a") as f:
            f.write(f"# {'' if method == 'plans' else f'seed {self.seed}, '}{method}: {step}\n{line}\n")
        with open(log, "w") as f:
            f.write(f"$ {line}\n")
            f.flush()
            code = subprocess.call(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, cwd=self.out)
        if code in INTERRUPTED_CODES or (code != 0 and self._stop.is_set()):
            raise StepInterrupted(f"{method} {step}: interrupted (exit code {code})")
        if code != 0:
            lines = [x for x in log.read_text(errors="replace").splitlines() if x.strip()]
            errors = [x for x in lines if x.startswith(("ERROR", "RuntimeError", "ValueError", "AssertionError"))
                      or "Error:" in x]
            tail = "; ".join((errors or lines)[-3:])[-600:]
            raise StepFailed(f"{step} failed (exit code {code}; log: {log}): {tail}")

    def say(self, text: str) -> None:
        """One progress line with the time since the start."""
        elapsed = time.perf_counter() - self._start
        self.log(f"[{int(elapsed // 60):3d}:{int(elapsed % 60):02d}] {self._tag}{text}")

    # ------------------------------------------------------------------ steps
    def model_folder(self, m: MethodSpec) -> Path:
        """The method's trained model folder in the benchmark's results folder."""
        return self.results_dir / self.s.dataset / f"{m.trainer}__{m.plans}__{self.s.configuration}"

    def plan(self) -> None:
        """Plan (and preprocess) what is missing: the default plans' data of the configuration, then the plans of
        this package's planners (which reuse that data). Existing plans are never overwritten."""
        pre = Path(os.environ["nnUNet_preprocessed"]) / self.s.dataset
        n = os.environ.get("nnUNet_def_n_proc", str(min(8, os.cpu_count() or 1)))
        default = pre / "nnUNetPlans.json"
        if not default.is_file():
            t = time.perf_counter()
            self.say(f"planning and preprocessing {self.s.dataset} {self.s.configuration} (nnU-Net's default planner)")
            self.command("plans", "default", [console_script("nnUNetv2_plan_and_preprocess"), "-d", self.dataset_id,
                                              "-c", self.s.configuration, "-np", n, "-npfp", n])
            self._step_seconds("plan default", time.perf_counter() - t)
        else:
            cfg = json.loads(default.read_text())["configurations"].get(self.s.configuration, {})
            data = pre / cfg.get("data_identifier", f"nnUNetPlans_{self.s.configuration}")
            if not data.is_dir():
                t = time.perf_counter()
                self.say(f"preprocessing {self.s.configuration} with the existing nnUNetPlans")
                self.command("plans", "preprocess", [console_script("nnUNetv2_preprocess"), "-d", self.dataset_id,
                                                     "-plans_name", "nnUNetPlans", "-c", self.s.configuration,
                                                     "-np", n])
                self._step_seconds("preprocess default", time.perf_counter() - t)
        for planner, plans in sorted({(m.planner, m.plans) for m in self.methods if m.planner}):
            if (pre / f"{plans}.json").is_file():
                continue
            t = time.perf_counter()
            self.say(f"planning {plans} ({planner}; reuses the default plans' data)")
            self.command("plans", planner, [console_script("nnUNetv2_plan_and_preprocess"), "-d", self.dataset_id, "-c",
                                            self.s.configuration, "-pl", planner, "-np", n, "-npfp", n])
            self._step_seconds(f"plan {planner}", time.perf_counter() - t)

    def train(self, m: MethodSpec, extra_env: dict | None = None) -> None:
        """Train every fold of ``m`` (reused when finished and validated; continued with ``--c`` when
        interrupted)."""
        folder = self.model_folder(m)
        row = self.rows[m.name]
        for fold in self.s.folds:
            fd = folder / f"fold_{fold}"
            key = self._key(f"{m.name} train fold {fold}")
            if (fd / "checkpoint_final.pth").is_file() and (fd / "validation" / "summary.json").is_file():
                self.say(f"{m.name}: fold {fold} already trained (reused)")
                row.train_seconds += self._step_seconds(key) or 0.0
                continue
            cmd = [console_script("nnUNetv2_train"), self.dataset_id, self.s.configuration, str(fold), "-tr", m.trainer,
                   "-p", m.plans, "-device", self.s.device]
            how = "training"
            if (fd / "checkpoint_final.pth").is_file():
                cmd, how = cmd + ["--val"], "validating"
            elif (fd / "checkpoint_latest.pth").is_file():
                cmd, how = cmd + ["--c"], "continuing"
            self.say(f"{m.name}: {how} fold {fold} ({m.trainer}, {m.plans}, {self.s.epochs} x {self.s.iterations})")
            t = time.perf_counter()
            try:
                self.command(m.name, f"train_fold_{fold}", cmd, extra_env)
            except KeyboardInterrupt:  # the time so far counts when the rerun continues this training with --c
                self._step_seconds(key, (self._step_seconds(key) or 0.0) * (how != "training")
                                   + time.perf_counter() - t)
                raise
            seconds = (self._step_seconds(key) or 0.0) * (how != "training") + time.perf_counter() - t
            self._step_seconds(key, seconds)
            row.train_seconds += seconds
            self.say(f"{m.name}: fold {fold} done ({seconds:.0f} s)")

    def sweep_tau(self) -> float:
        """The critical tau of the magnitude-pruning sweep of the dense model (``nnunet-prune sweep``, resumable),
        on the test images, else on the folds' validation cases.

        Raises:
            StepFailed: the sweep failed or found no tau that keeps the proxy Dice."""
        with self._sweep_lock:
            out = self.run_dir / "magnitude_sweep"
            report = out / "sweep.json"
            if not report.is_file():
                images, labels = self._sweep_inputs()
                cmd = package_command("sweep", str(self.model_folder(method_spec(DENSE))), "-i", images, "--labels",
                                      labels, "-o", str(out), "-f", *map(str, self.s.folds), "--device", self.s.device)
                if self.s.sweep_taus:
                    cmd += ["--taus", *map(str, self.s.sweep_taus)]
                self.say("magnitude: sweep of the dense model")
                t = time.perf_counter()
                self.command("magnitude", "sweep", cmd)
                self._step_seconds(self._key("magnitude sweep"), time.perf_counter() - t)
            crit = json.loads(report.read_text()).get("critical_point")
            if not crit:
                raise StepFailed(f"the sweep ({report}) found no tau that keeps the proxy Dice above its threshold: "
                                 f"no magnitude model to train")
            return float(crit["tau"])

    def _sweep_inputs(self) -> tuple[str, str]:
        if self.s.test_images:
            return self.s.test_images, self.s.test_labels
        pre = Path(os.environ["nnUNet_preprocessed"]) / self.s.dataset
        splits = json.loads((pre / "splits_final.json").read_text())
        raw = Path(os.environ["nnUNet_raw"]) / self.s.dataset
        ending = self.dataset_json["file_ending"]
        images, labels = self.out / "sweep_inputs" / "images", self.out / "sweep_inputs" / "labels"
        images.mkdir(parents=True, exist_ok=True)
        labels.mkdir(parents=True, exist_ok=True)
        for fold in self.s.folds:
            for case in splits[int(fold)]["val"]:
                for f in (raw / "imagesTr").glob(f"{case}_[0-9][0-9][0-9][0-9]{ending}"):
                    if not (images / f.name).exists():
                        (images / f.name).symlink_to(f)
                if not (labels / f"{case}{ending}").exists():
                    (labels / f"{case}{ending}").symlink_to(raw / "labelsTr" / f"{case}{ending}")
        return str(images), str(labels)

    def predict(self, m: MethodSpec) -> None:
        """Predict the test images with the method's folds (stock ``nnUNetv2_predict``) and score them with
        ``nnUNetv2_evaluate_folder``; reused when its summary.json exists."""
        out = self.run_dir / "predictions" / m.name
        summary = out / "summary.json"
        row = self.rows[m.name]
        if summary.is_file():
            row.predict_seconds = self._step_seconds(self._key(f"{m.name} predict")) or 0.0
        else:
            self.say(f"{m.name}: predicting the test images (nnUNetv2_predict, folds {self.s.folds})")
            t = time.perf_counter()
            n = os.environ.get("nnUNet_def_n_proc", "2")
            self.command(m.name, "predict", [
                console_script("nnUNetv2_predict"), "-i", self.s.test_images, "-o", str(out), "-d", self.dataset_id,
                "-c", self.s.configuration, "-tr", m.trainer, "-p", m.plans, "-f", *map(str, self.s.folds), "-device",
                self.s.device, "-npp", "1", "-nps", "1", "--disable_progress_bar"])
            self.command(m.name, "evaluate", [
                console_script("nnUNetv2_evaluate_folder"), self.s.test_labels, str(out), "-djfile",
                str(out / "dataset.json"), "-pfile", str(out / "plans.json"), "-o", str(summary), "-np", n])
            row.predict_seconds = time.perf_counter() - t
            self._step_seconds(self._key(f"{m.name} predict"), row.predict_seconds)
        from nnunet_prune.tools.report.efficiency import dice_from_summary

        row.dice, per_class = dice_from_summary(json.loads(summary.read_text()), self.dataset_json)
        row.dice_per_class = per_class or {}
        row.dice_source = "test"

    def run_method(self, m: MethodSpec) -> None:
        """Train (after the dense model where needed), predict and evaluate one method; a failure is recorded in
        its row, never raised. Ctrl-C (:class:`StepInterrupted`, or any step after it) marks the row "interrupted",
        stops the benchmark (no step starts any more) and is raised on.

        Raises:
            KeyboardInterrupt: the method's step was interrupted."""
        row = self.rows[m.name]
        try:
            if self._stop.is_set():
                raise StepInterrupted(f"{m.name}: not started (interrupted)")
            extra: dict = {}
            if m.from_dense:
                self._dense_done.wait()
                if self._stop.is_set():
                    raise StepInterrupted(f"{m.name}: not started (interrupted)")
                if not self._dense_ok:
                    raise StepFailed("needs the dense model, whose training failed")
                extra["NNUNET_PRUNE_DENSE_MODEL"] = str(self.model_folder(method_spec(DENSE)))
            if m.magnitude:
                row.tau = self.sweep_tau()
                own = [kv for kv in os.environ.get("NNUNET_PRUNE_MAGNITUDE", "").split(",")
                       if kv.strip() and not kv.strip().startswith("tau=")]
                extra["NNUNET_PRUNE_MAGNITUDE"] = ",".join([f"tau={row.tau:.6g}", *own])
            self.train(m, extra)
            if m.name == DENSE:
                self._dense_ok = True
                self._dense_done.set()
            if self.s.test_images:
                self.predict(m)
            row.status, row.error = "ok", None
        except KeyboardInterrupt:
            self._stop.set()
            row.status, row.error = "interrupted", None
            self.say(f"{m.name}: interrupted")
            raise
        except NnUNetPruneError as e:
            row.status, row.error = "failed", str(e)
            self.say(f"{m.name}: FAILED: {e}")
        except Exception as e:  # noqa: BLE001 -- one method's bug must not stop the others
            row.status, row.error = "failed", f"{type(e).__name__}: {e}"
            self.say(f"{m.name}: FAILED: {row.error}")
        finally:
            if m.name == DENSE:
                self._dense_done.set()
            self._save_state()

    def measure(self, m: MethodSpec) -> None:
        """Parameters, MACs, checkpoint size, latencies (and validation Dice without a test set) of a trained method,
        averaged over its folds; its map picture copied to ``maps/``."""
        from nnunet_prune.nnunet.modelfolder import ModelFolder
        from nnunet_prune.tools.report.efficiency import measure_model_folder, read_dice

        row = self.rows[m.name]
        folder = self.model_folder(m)
        measured = folder
        if m.export:
            measured = self.run_dir / "exported" / m.name
            if not (measured / "plans.json").is_file():
                self.say(f"{m.name}: exporting (nnunet-prune export) before measuring")
                t = time.perf_counter()
                self.command(m.name, "export", package_command("export", str(folder), "-o", str(measured), "-f",
                                                    *map(str, self.s.folds)))
                self._step_seconds(self._key(f"{m.name} export"), time.perf_counter() - t)
        notes: list[str] = []
        fold_rows = measure_model_folder(measured, self.s.folds, device=self.s.device, repeats=self.s.repeats,
                                         warmup=2, compile=self.s.device == "cuda", cpu=True,
                                         runtimes=self.s.runtimes, warn=notes.append)
        mean = lambda vals: (sum(vals) / len(vals)) if vals and None not in vals else None  # noqa: E731
        row.parameters = mean([r.parameters for r in fold_rows])
        row.nonzero_parameters = mean([r.nonzero_parameters for r in fold_rows])
        row.macs = mean([r.macs for r in fold_rows])
        row.checkpoint_mb = mean([r.checkpoint_bytes / 1e6 for r in fold_rows])
        row.cpu_ms = mean([r.cpu_ms_eager for r in fold_rows])
        row.threads = fold_rows[0].threads
        runtimes = {k for r in fold_rows for k in r.cpu_latencies()}
        per_runtime = {k: mean([r.cpu_latencies().get(k) for r in fold_rows]) for k in runtimes}
        per_runtime = {k: v for k, v in per_runtime.items() if v is not None}
        if per_runtime:
            row.fastest_runtime = min(per_runtime, key=per_runtime.get)
            row.fastest_ms = per_runtime[row.fastest_runtime]
        row.latency_not_comparable = next((r.not_comparable() for r in fold_rows if r.not_comparable()), None)
        row.gpu_ms = mean([r.gpu_ms_eager for r in fold_rows])
        row.gpu_ms_compiled = mean([r.gpu_ms_compiled for r in fold_rows])  # CUDA graphs + bf16
        row.gpu_peak_mb = mean([r.gpu_peak_mb for r in fold_rows])
        if row.dice_source is None:  # no test set: the validation of the trained folds
            trained = ModelFolder.open(folder, self.s.folds)
            dices = [read_dice(trained, f) for f in self.s.folds]
            row.dice = mean([d for d, _ in dices])
            classes = dices[0][1] or {}
            row.dice_per_class = {c: mean([(pc or {}).get(c) for _, pc in dices]) for c in classes}
            row.dice_source = "validation"
        row.notes = sorted(set(notes) | set(self._training_warnings(folder)))
        config = folder / f"fold_{self.s.folds[0]}" / "pruning_config.json"
        if config.is_file():
            initial = json.loads(config.read_text()).get("initial_parameters")
            row.initial_parameters = float(initial) if initial else None
        for name in ("pruning_widths.png", "branch_map.png"):
            picture = folder / f"fold_{self.s.folds[0]}" / name
            if picture.is_file() and self.seed == self.s.seed:  # the first seed's map
                target = self.out / "maps" / f"{m.name}.png"
                target.parent.mkdir(exist_ok=True)
                shutil.copyfile(picture, target)
                row.map_png = str(target.relative_to(self.out))

    def _training_warnings(self, folder: Path) -> list[str]:
        out = []
        for fold in self.s.folds:
            for log in sorted((folder / f"fold_{fold}").glob("training_log_*.txt")):
                for line in log.read_text(errors="replace").splitlines():
                    if "WARNING: " in line:
                        out.append(f"fold {fold}: " + line.split("WARNING: ", 1)[1].strip()[:300])
        return out

    # ------------------------------------------------------------------ all
    def run(self) -> Path:
        """Check, plan, then for each seed train (``jobs`` methods at a time), predict, evaluate and measure (one at
        a time); write the outputs (over several seeds: :func:`aggregate_rows`); returns the path of
        ``benchmark.md``.

        Raises:
            NnUNetPruneError: a check failed or planning failed (a method's failure is recorded in its row).
            KeyboardInterrupt: Ctrl-C; said in one line ("interrupted; rerun the same command to continue"), no row
                failed, the state saved: the same command continues."""
        from nnunet_prune.core.outputs import record_files

        self.check()
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / MARKER).write_text("output folder of `nnunet-prune benchmark`\n")
        self.state = self._read_state()
        self.state["settings"] = json.loads(json.dumps(self.s.identity()))
        self.state.setdefault("steps", {})
        self.state.pop("interrupted", None)
        try:
            with open(self.out / "commands.sh", "a") as f:
                f.write(f"# nnunet-prune benchmark, {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
            self._save_state()
            seeds = self.s.seed_list()
            self.say(f"benchmark of {len(self.methods)} method(s) on {self.s.dataset} {self.s.configuration}, folds "
                     f"{self.s.folds}, {self.s.epochs} epochs x {self.s.iterations} iterations, "
                     + (f"seed {seeds[0]}" if len(seeds) == 1 else f"{len(seeds)} seeds ({seeds[0]}-{seeds[-1]})")
                     + f", device {self.s.device}, {self.s.jobs} job(s) at a time; output {self.out}")
            self.plan()
            for seed in seeds:
                self.run_seed(seed)
            self._tag = ""
            self.rows = {m.name: aggregate_rows({s: self.runs[s][m.name] for s in seeds}) for m in self.methods}
            self.state["total_seconds"] = round(time.perf_counter() - self._start, 1)
            self._save_state()
            return self.write()
        except KeyboardInterrupt:
            self._stop.set()
            self._tag = ""
            self.state["interrupted"] = time.strftime("%Y-%m-%d %H:%M:%S")
            self._save_state()
            self.say("interrupted; rerun the same command to continue (finished steps are reused, an interrupted "
                     "training continues with --c)")
            raise
        finally:
            record_files(self.out, TOOL, [p for p in self.out.rglob("*")
                                          if p.is_file() and "nnUNet_results" not in p.parts])

    def run_seed(self, seed: int) -> None:
        """The run of every method with seed ``seed`` in ``OUT/seed_<seed>``: train (``jobs`` methods at a time;
        the dense model first, the methods that start from it wait for it), predict and evaluate, then measure one
        at a time; its rows go to :attr:`runs`.

        Raises:
            KeyboardInterrupt: Ctrl-C (the steps that were running end as "interrupted")."""
        self.seed = seed
        self.rows = self.runs[seed] = self.new_rows(seed)
        self._tag = f"seed {seed}: " if self.s.seeds > 1 else ""
        self._dense_done, self._dense_ok = threading.Event(), False
        if DENSE not in self.s.methods:
            self._dense_done.set()
        with ThreadPoolExecutor(max_workers=self.s.jobs) as pool:
            try:
                list(pool.map(self.run_method, self.methods))  # the dense model first: others wait for it
            except KeyboardInterrupt:
                self._stop.set()  # before the pool waits for the running steps: they end as interrupted
                raise
        for m in self.methods:
            if self.rows[m.name].status != "ok":
                continue
            try:
                self.say(f"{m.name}: measuring (parameters, MACs, latency)")
                self.measure(m)
            except Exception as e:  # noqa: BLE001
                self.rows[m.name].status, self.rows[m.name].error = "failed", f"measuring: {e}"
            self._save_state()

    # ------------------------------------------------------------------ outputs
    def sorted_rows(self) -> list[MethodResult]:
        """Rows that worked sorted by MACs (then parameters), failed ones last."""
        ok = sorted((r for r in self.rows.values() if r.status == "ok" and r.macs is not None),
                    key=lambda r: (r.macs, r.parameters or 0))
        return ok + [r for r in self.rows.values() if r not in ok]

    def write(self) -> Path:
        """``benchmark.csv``, ``benchmark.md`` and ``pareto.png``; returns the Markdown file."""
        rows = self.sorted_rows()
        classes = list(dict.fromkeys(c for r in rows for c in r.dice_per_class))  # the dataset's label order
        with open(self.out / "benchmark.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["method", "label", "trainer", "plans", "status", "parameters", "initial_parameters",
                        "nonzero_parameters", "macs_per_patch", "checkpoint_mb", "cpu_ms_pytorch", "fastest_runtime",
                        "fastest_ms", "gpu_ms", "gpu_ms_compiled_bf16", "gpu_peak_mb", "dice", "dice_spread",
                        *[f"dice_{c}" for c in classes], *[f"dice_{c}_spread" for c in classes],
                        "dice_source", "tau", "train_s", "predict_s", "seeds", "dice_per_seed", "error", "notes",
                        "latency_comparable", "latency_not_comparable"])
            for r in rows:  # unrounded
                w.writerow([r.name, r.label, r.trainer, r.plans, r.status, _fmt(r.parameters, "{:.0f}"),
                            _fmt(r.initial_parameters, "{:.0f}"), _fmt(r.nonzero_parameters, "{:.0f}"),
                            _fmt(r.macs, "{:.0f}"), _fmt(r.checkpoint_mb, "{}"), _fmt(r.cpu_ms, "{}"),
                            *_fastest_csv(r), _fmt(r.gpu_ms, "{}"),
                            _fmt(r.gpu_ms_compiled, "{}"), _fmt(r.gpu_peak_mb, "{}"), _fmt(r.dice, "{}"),
                            _fmt(r.dice_spread, "{}"), *[_fmt(r.dice_per_class.get(c), "{}") for c in classes],
                            *[_fmt(r.dice_per_class_spread.get(c), "{}") for c in classes], r.dice_source or "",
                            _fmt(r.tau, "{}"), f"{r.train_seconds:.1f}", f"{r.predict_seconds:.1f}",
                            " ".join(map(str, r.seeds)), " ".join(f"{k}:{v}" for k, v in r.dice_per_seed.items()),
                            r.error or "", " | ".join(r.notes), r.latency_not_comparable is None,
                            r.latency_not_comparable or ""])
        md = self.out / "benchmark.md"
        md.write_text(self.markdown(rows, classes))
        try:
            plot_pareto(rows, self.out / "pareto.png")
        except Exception as e:  # noqa: BLE001 -- a picture must not cost the table
            self.say(f"could not draw pareto.png: {type(e).__name__}: {e}")
        self.say(f"wrote {md}, benchmark.csv, pareto.png")
        return md

    def markdown(self, rows: list[MethodResult], classes: list[str]) -> str:
        """The table, the budget, the notes, the step wall times and the commands file, as Markdown."""
        dense = self.rows.get(DENSE)
        base = dense if dense is not None and dense.macs else None
        source = "test set (nnUNetv2_predict + nnUNetv2_evaluate_folder, folds ensembled)" if self.s.test_images \
            else "validation of each fold (nnU-Net's summary.json), mean over folds"
        threads = next((r.threads for r in rows if r.threads), None)
        seeds = self.s.seed_list()
        if len(seeds) > 1:
            source += (f". Dice cells: mean ± sample standard deviation over {len(seeds)} seeds ({seeds[0]}-"
                       f"{seeds[-1]}; every other number: the mean); a difference within about two standard "
                       f"deviations is noise")
        else:
            source += f"; seed {seeds[0]} (--seeds N repeats every method with N seeds and gives mean ± spread)"
        head = ["method", "parameters", "GMAC/patch", "MACs vs dense", "checkpoint", "CPU ms (PyTorch)",
                "fastest runtime", "Dice", *[f"Dice {c}" for c in classes], "train"]
        if self.s.device == "cuda":
            head[7:7] = ["GPU ms (eager / compiled bf16)", "GPU peak MB"]
        lines = [f"# nnunet-prune benchmark: {self.s.dataset} {self.s.configuration}", "",
                 f"Budget: {self.s.epochs} epochs x {self.s.iterations} iterations ({self.s.val_iterations} "
                 f"validation iterations per epoch) for every method, folds {', '.join(map(str, self.s.folds))}, "
                 f"device {self.s.device}. Dice: {source}. Latency: one patch, batch 1, median of at least "
                 f"{self.s.repeats} runs (more until the median is known) on {threads} CPU thread(s); 'fastest "
                 f"runtime' is the fastest of PyTorch and the installed deployment runtimes; '(n/c)': timed on a "
                 f"busy machine or runs that did not agree, not comparable (why: notes). Sorted by MACs.", "",
                 "| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
        for r in rows:
            if r.status != "ok":
                lines.append(f"| {r.label} | {r.status}: {(r.error or '').replace('|', '/')[:300]} |"
                             + " |" * (len(head) - 2))
                continue
            params = f"{r.parameters / 1e6:.3f} M" if r.parameters is not None else "-"
            if r.nonzero_parameters is not None and r.parameters and r.nonzero_parameters < 0.99 * r.parameters:
                params += f" ({1 - r.nonzero_parameters / r.parameters:.0%} zero)"
            cells = [r.label, params, _fmt(r.macs and r.macs / 1e9, "{:.3f}", "-"),
                     "-" if base is None or r is base else f"{r.macs / base.macs:.2f}x",
                     _fmt(r.checkpoint_mb, "{:.1f} MB", "-"), *_latency_cells(r),
                     format_dice(r.dice, r.dice_spread),
                     *[format_dice(r.dice_per_class.get(c), r.dice_per_class_spread.get(c)) for c in classes],
                     f"{r.train_seconds:.0f} s"]
            if self.s.device == "cuda":
                cells[7:7] = [f"{_fmt(r.gpu_ms, '{:.2f}', '-')} / {_fmt(r.gpu_ms_compiled, '{:.2f}', '-')}",
                              _fmt(r.gpu_peak_mb, "{:.0f}", "-")]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", "![Dice against MACs, latency and parameters](pareto.png)", ""]
        notes = class_notes({r.label: r.dice_per_class for r in rows if r.status == "ok"},
                            advice="train longer (--epochs)")
        for r in rows:
            if r.status == "ok" and r.initial_parameters and r.parameters and r.name != "magnitude" \
                    and r.parameters >= r.initial_parameters:
                notes.append(f"{r.label}: nothing was removed within this budget (its schedule did not reach a "
                             f"pruning step); its row is the unpruned network.")
            if r.tau is not None:
                notes.append(f"{r.label}: tau = {r.tau:.4g} from the sweep (magnitude_sweep/summary.md); zeros "
                             f"shrink a compressed checkpoint, not MACs or latency.")
            notes += [f"{r.label}: {n}" for n in r.notes]
            if r.map_png:
                notes.append(f"{r.label}: map of what was pruned: [{r.map_png}]({r.map_png})")
        if notes:
            lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
        claims = [f"- {m.label}: {m.claim}" for m in self.methods if m.claim and m.name != DENSE]
        if claims:
            lines += ["## The papers' claims, to read the table against", ""] + claims + [""]
        steps = self.state.get("steps", {})
        lines += ["## Wall time per step", "", "| step | seconds |", "|---|---:|"]
        lines += [f"| {k} | {v:.0f} |" for k, v in steps.items()]
        lines += ["", f"Sum of the steps: {sum(steps.values()) / 60:.1f} min (this run, reusing what was done: "
                      f"{self.state.get('total_seconds', 0) / 60:.1f} min, measurements included). Every command "
                      f"with its environment: commands.sh; each step's output: seed_<S>/logs/ (planning: logs/).",
                  ""]
        return "\n".join(lines)


def _fmt(value, pattern: str, missing: str = "") -> str:
    return missing if value is None else pattern.format(value)


def _latency_cells(r: MethodResult) -> list[str]:
    """The 'CPU ms (PyTorch)' and 'fastest runtime' cells: '46.1' and 'openvino 26.6 ms', or, where the timings
    are not comparable, '46.1 (n/c)' and 'n/c' (no "fastest" from timings that do not count)."""
    from nnunet_prune.core.timing import NOT_COMPARABLE

    if r.latency_not_comparable:
        return [_fmt(r.cpu_ms, "{:.1f} (" + NOT_COMPARABLE + ")", "-"), NOT_COMPARABLE]
    return [_fmt(r.cpu_ms, "{:.1f}", "-"),
            f"{r.fastest_runtime} {r.fastest_ms:.1f} ms" if r.fastest_runtime else "-"]


def _fastest_csv(r: MethodResult) -> list[str]:
    """The CSV's fastest_runtime and fastest_ms, empty where the timings are not comparable."""
    if r.latency_not_comparable:
        return ["", ""]
    return [r.fastest_runtime or "", _fmt(r.fastest_ms, "{}")]


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
