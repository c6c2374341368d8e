"""``nnunet-prune benchmark``: every pruning method of this package on one dataset, one budget, one table.

Each method is trained by stock ``nnUNetv2_train`` in a subprocess with the same budget (``NNUNET_PRUNE_EPOCHS``,
``NNUNET_PRUNE_ITERS_PER_EPOCH``, ``NNUNET_PRUNE_VAL_ITERS``) into the benchmark's own ``nnUNet_results`` folder
(``OUT/nnUNet_results``: a benchmark never trains into, reads from or overwrites the user's trained models);
planning uses the user's ``nnUNet_raw`` / ``nnUNet_preprocessed`` and this package's planners, and only creates
plans that do not exist yet. Then every model predicts the held-out images with stock ``nnUNetv2_predict`` and is
scored with nnU-Net's ``nnUNetv2_evaluate_folder`` (without a test set: the folds' validation ``summary.json``),
and :func:`nnunet_prune.report.measure_model_folder` measures it (parameters, MACs per patch, checkpoint size,
CPU latency in PyTorch and every installed deployment runtime; GPU latency and memory on CUDA).

Outputs in ``OUT``: ``benchmark.csv`` and ``benchmark.md`` (one row per method, sorted by MACs), ``pareto.png``
(Dice against MACs, latency and parameters, the Pareto front drawn), ``maps/<method>.png`` (each pruning method's
width or branch map), ``commands.sh`` (every command exactly as run, with its environment), ``logs/`` (each step's
output) and ``benchmark_state.json`` (the budget, the step wall times, the measurements). A rerun with the same
options reuses every finished step and continues an interrupted training with ``--c``; a failed method is
reported in the table with its error and does not stop the others.
"""

from __future__ import annotations

import csv
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from nnunet_prune import NnUNetPruneError
from nnunet_prune.commands import console_script, package_command

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
    labels (None: the folds' validation) and the device. Everything but ``methods``, ``jobs``, ``repeats`` and
    ``runtimes`` must match on a rerun in the same output folder."""

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

    def identity(self) -> dict:
        """The settings that define the results (a rerun must give the same)."""
        return {k: getattr(self, k) for k in ("dataset", "configuration", "folds", "epochs", "iterations",
                                              "val_iterations", "test_images", "test_labels", "device",
                                              "sweep_taus")}


@dataclass
class MethodResult:
    """One row of the table. Sizes are per patch (MACs, batch 1) and averaged over the folds; latencies are median
    ms per patch (batch 1); ``dice`` is the foreground mean on the test set (``dice_source`` "test") or the mean of
    the folds' validation Dice ("validation"); seconds are wall times of this method's steps (training summed over
    folds)."""

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


class StepFailed(NnUNetPruneError):
    """A step of one method failed; the message names the step and holds the end of its log."""


class Benchmark:
    """A benchmark in the output folder ``output`` (see the module docstring); :meth:`run` does everything.

    ``log`` receives one line per event (default: print). :meth:`check` runs every input check before any work.
    """

    def __init__(self, settings: BenchmarkSettings, output: str | os.PathLike,
                 log: Callable[[str], None] | None = None):
        self.s = settings
        self.out = Path(output).expanduser().resolve()
        self.log = log or (lambda line: print(line, flush=True))
        self.results_dir = self.out / "nnUNet_results"
        self.methods = [method_spec(n) for n in settings.methods]
        self.rows = {m.name: MethodResult(m.name, m.label, m.trainer, m.plans) for m in self.methods}
        self.state: dict = {}
        self._lock = threading.Lock()
        self._dense_done = threading.Event()
        self._dense_ok = False
        self._sweep_lock = threading.Lock()
        self._start = time.perf_counter()

    # ------------------------------------------------------------------ checks
    def check(self) -> None:
        """Every check that can be made before any work: nnU-Net's folders, the dataset, configuration, folds, the
        test images and labels, the output folder (new, empty, or an earlier benchmark with the same settings).

        Raises:
            NnUNetPruneError: with what to change.
        """
        from nnunet_prune.outputs import check_writable_files

        for var in ("nnUNet_raw", "nnUNet_preprocessed"):
            if not os.environ.get(var):
                raise NnUNetPruneError(f"{var} is not set: the benchmark plans and trains with nnU-Net's folders "
                                       f"(its trained models go to OUT/nnUNet_results, not to nnUNet_results).")
        raw = Path(os.environ["nnUNet_raw"]) / self.s.dataset
        if not (raw / "dataset.json").is_file():
            raise NnUNetPruneError(f"{raw / 'dataset.json'} does not exist: is -d the right dataset?")
        self.dataset_json = json.loads((raw / "dataset.json").read_text())
        if self.s.epochs < 1 or self.s.iterations < 1 or self.s.val_iterations < 1:
            raise NnUNetPruneError("--epochs, --iters-per-epoch and --val-iters must be at least 1.")
        if self.s.jobs < 1 or self.s.repeats < 1:
            raise NnUNetPruneError("--jobs and --repeats must be at least 1.")
        if self.s.device not in ("cpu", "cuda"):
            raise NnUNetPruneError(f"--device must be cpu or cuda, not {self.s.device!r}.")
        if self.s.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise NnUNetPruneError("--device cuda: no CUDA device is available here. Use --device cpu.")
        from nnunet_prune.modelfolder import parse_fold

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
        from nnunet_prune.report import check_runtimes

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
        from nnunet_prune.sweep import check_labels, list_cases

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
        from nnunet_prune.outputs import record_files

        with self._lock:
            self.state["rows"] = {k: asdict(v) for k, v in self.rows.items()}
            tmp = self.out / (STATE + ".tmp")
            tmp.write_text(json.dumps(self.state, indent=2, default=str))
            tmp.replace(self.out / STATE)
            record_files(self.out, TOOL, [self.out / STATE])

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
        """The environment of every step: the user's, with the benchmark's results folder and budget."""
        env = dict(os.environ)
        env.update({
            "nnUNet_results": str(self.results_dir), "PYTHONUNBUFFERED": "1",
            "NNUNET_PRUNE_EPOCHS": str(self.s.epochs), "NNUNET_PRUNE_ITERS_PER_EPOCH": str(self.s.iterations),
            "NNUNET_PRUNE_VAL_ITERS": str(self.s.val_iterations),
        })
        if self.s.device == "cpu":
            env.setdefault("nnUNet_n_proc_DA", "0")
        env.pop("NNUNET_PRUNE_DISABLE_HOOK", None)
        env.update(extra or {})
        return env

    def command(self, method: str, step: str, cmd: list[str], extra_env: dict | None = None) -> None:
        """Run ``cmd`` with :meth:`env` (plus ``extra_env``), its output into ``logs/<method>.<step>.log``, and append
        it to ``commands.sh``.

        Raises:
            StepFailed: it exited with a non-zero code (the message holds its last lines)."""
        env = self.env(extra_env)
        shown = {k: env[k] for k in sorted(env) if k.startswith("NNUNET_PRUNE_") or k in ("nnUNet_results",)}
        shown.update(extra_env or {})
        line = " ".join(f"{k}={shlex.quote(v)}" for k, v in shown.items()) + " " + shlex.join(
            [Path(cmd[0]).name if cmd[0] != sys.executable else "python", *cmd[1:]])
        log = self.out / "logs" / f"{method}.{step}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with self._lock, open(self.out / "commands.sh", "a") as f:
            f.write(f"# {method}: {step}\n{line}\n")
        with open(log, "w") as f:
            f.write(f"$ {line}\n")
            f.flush()
            code = subprocess.call(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, cwd=self.out)
        if code != 0:
            lines = [x for x in log.read_text(errors="replace").splitlines() if x.strip()]
            errors = [x for x in lines if x.startswith(("ERROR", "RuntimeError", "ValueError", "AssertionError"))
                      or "Error:" in x]
            tail = "; ".join((errors or lines)[-3:])[-600:]
            raise StepFailed(f"{step} failed (exit code {code}; log: {log}): {tail}")

    def say(self, text: str) -> None:
        """One progress line with the time since the start."""
        elapsed = time.perf_counter() - self._start
        self.log(f"[{int(elapsed // 60):3d}:{int(elapsed % 60):02d}] {text}")

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
            key = f"{m.name} train fold {fold}"
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
            self.command(m.name, f"train_fold_{fold}", cmd, extra_env)
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
            out = self.out / "magnitude_sweep"
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
                self._step_seconds("magnitude sweep", time.perf_counter() - t)
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
        out = self.out / "predictions" / m.name
        summary = out / "summary.json"
        row = self.rows[m.name]
        if summary.is_file():
            row.predict_seconds = self._step_seconds(f"{m.name} predict") or 0.0
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
            self._step_seconds(f"{m.name} predict", row.predict_seconds)
        from nnunet_prune.report import dice_from_summary

        row.dice, per_class = dice_from_summary(json.loads(summary.read_text()), self.dataset_json)
        row.dice_per_class = per_class or {}
        row.dice_source = "test"

    def run_method(self, m: MethodSpec) -> None:
        """Train (after the dense model where needed), predict and evaluate one method; a failure is recorded in
        its row, never raised."""
        row = self.rows[m.name]
        try:
            extra: dict = {}
            if m.from_dense:
                self._dense_done.wait()
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
        from nnunet_prune.modelfolder import ModelFolder
        from nnunet_prune.report import measure_model_folder, read_dice

        row = self.rows[m.name]
        folder = self.model_folder(m)
        measured = folder
        if m.export:
            measured = self.out / "exported" / m.name
            if not (measured / "plans.json").is_file():
                self.say(f"{m.name}: exporting (nnunet-prune export) before measuring")
                t = time.perf_counter()
                self.command(m.name, "export", package_command("export", str(folder), "-o", str(measured), "-f",
                                                    *map(str, self.s.folds)))
                self._step_seconds(f"{m.name} export", time.perf_counter() - t)
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
            if picture.is_file():
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
        """Check, plan, train (``jobs`` methods at a time), predict, evaluate, measure (one at a time) and write the
        outputs; returns the path of ``benchmark.md``.

        Raises:
            NnUNetPruneError: a check failed or planning failed (a method's failure is recorded in its row)."""
        from nnunet_prune.outputs import record_files

        self.check()
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / MARKER).write_text("output folder of `nnunet-prune benchmark`\n")
        self.state = self._read_state()
        self.state["settings"] = json.loads(json.dumps(self.s.identity()))
        self.state.setdefault("steps", {})
        try:
            with open(self.out / "commands.sh", "a") as f:
                f.write(f"# nnunet-prune benchmark, {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
            self._save_state()
            self.say(f"benchmark of {len(self.methods)} method(s) on {self.s.dataset} {self.s.configuration}, folds "
                     f"{self.s.folds}, {self.s.epochs} epochs x {self.s.iterations} iterations, device "
                     f"{self.s.device}, {self.s.jobs} job(s) at a time; output {self.out}")
            self.plan()
            if DENSE not in self.s.methods:
                self._dense_done.set()
            with ThreadPoolExecutor(max_workers=self.s.jobs) as pool:
                list(pool.map(self.run_method, self.methods))  # the dense model first: others wait for it
            for m in self.methods:
                if self.rows[m.name].status != "ok":
                    continue
                try:
                    self.say(f"{m.name}: measuring (parameters, MACs, latency)")
                    self.measure(m)
                except Exception as e:  # noqa: BLE001
                    self.rows[m.name].status, self.rows[m.name].error = "failed", f"measuring: {e}"
                self._save_state()
            self.state["total_seconds"] = round(time.perf_counter() - self._start, 1)
            self._save_state()
            return self.write()
        finally:
            record_files(self.out, TOOL, [p for p in self.out.rglob("*")
                                          if p.is_file() and "nnUNet_results" not in p.parts])

    # ------------------------------------------------------------------ outputs
    def sorted_rows(self) -> list[MethodResult]:
        """Rows that worked sorted by MACs (then parameters), failed ones last."""
        ok = sorted((r for r in self.rows.values() if r.status == "ok" and r.macs is not None),
                    key=lambda r: (r.macs, r.parameters or 0))
        return ok + [r for r in self.rows.values() if r not in ok]

    def write(self) -> Path:
        """``benchmark.csv``, ``benchmark.md`` and ``pareto.png``; returns the Markdown file."""
        rows = self.sorted_rows()
        classes = sorted({c for r in rows for c in r.dice_per_class})
        with open(self.out / "benchmark.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["method", "label", "trainer", "plans", "status", "parameters", "initial_parameters",
                        "nonzero_parameters", "macs_per_patch", "checkpoint_mb", "cpu_ms_pytorch", "fastest_runtime",
                        "fastest_ms", "gpu_ms", "gpu_ms_compiled_bf16", "gpu_peak_mb", "dice",
                        *[f"dice_{c}" for c in classes],
                        "dice_source", "tau", "train_s", "predict_s", "error", "notes"])
            for r in rows:  # unrounded
                w.writerow([r.name, r.label, r.trainer, r.plans, r.status, _fmt(r.parameters, "{:.0f}"),
                            _fmt(r.initial_parameters, "{:.0f}"), _fmt(r.nonzero_parameters, "{:.0f}"),
                            _fmt(r.macs, "{:.0f}"), _fmt(r.checkpoint_mb, "{}"), _fmt(r.cpu_ms, "{}"),
                            r.fastest_runtime or "", _fmt(r.fastest_ms, "{}"), _fmt(r.gpu_ms, "{}"),
                            _fmt(r.gpu_ms_compiled, "{}"), _fmt(r.gpu_peak_mb, "{}"), _fmt(r.dice, "{}"),
                            *[_fmt(r.dice_per_class.get(c), "{}") for c in classes], r.dice_source or "",
                            _fmt(r.tau, "{}"), f"{r.train_seconds:.1f}", f"{r.predict_seconds:.1f}",
                            r.error or "", " | ".join(r.notes)])
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
        head = ["method", "parameters", "GMAC/patch", "MACs vs dense", "checkpoint", "CPU ms (PyTorch)",
                "fastest runtime", "Dice", *[f"Dice {c}" for c in classes], "train"]
        if self.s.device == "cuda":
            head[7:7] = ["GPU ms (eager / compiled bf16)", "GPU peak MB"]
        lines = [f"# nnunet-prune benchmark: {self.s.dataset} {self.s.configuration}", "",
                 f"Budget: {self.s.epochs} epochs x {self.s.iterations} iterations ({self.s.val_iterations} "
                 f"validation iterations per epoch) for every method, folds {', '.join(map(str, self.s.folds))}, "
                 f"device {self.s.device}. Dice: {source}. Latency: one patch, batch 1, median of "
                 f"{self.s.repeats} runs on {threads} CPU thread(s); 'fastest runtime' is the fastest of PyTorch and "
                 f"the installed deployment runtimes. Sorted by MACs.", "",
                 "| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
        for r in rows:
            if r.status != "ok":
                lines.append(f"| {r.label} | failed: {(r.error or '').replace('|', '/')[:300]} |"
                             + " |" * (len(head) - 2))
                continue
            params = f"{r.parameters / 1e6:.3f} M" if r.parameters is not None else "-"
            if r.nonzero_parameters is not None and r.parameters and r.nonzero_parameters < 0.99 * r.parameters:
                params += f" ({1 - r.nonzero_parameters / r.parameters:.0%} zero)"
            cells = [r.label, params, _fmt(r.macs and r.macs / 1e9, "{:.3f}", "-"),
                     "-" if base is None or r is base else f"{r.macs / base.macs:.2f}x",
                     _fmt(r.checkpoint_mb, "{:.1f} MB", "-"), _fmt(r.cpu_ms, "{:.1f}", "-"),
                     f"{r.fastest_runtime} {r.fastest_ms:.1f} ms" if r.fastest_runtime else "-",
                     _fmt(r.dice, "{:.3f}", "-"), *[_fmt(r.dice_per_class.get(c), "{:.3f}", "-") for c in classes],
                     f"{r.train_seconds:.0f} s"]
            if self.s.device == "cuda":
                cells[7:7] = [f"{_fmt(r.gpu_ms, '{:.2f}', '-')} / {_fmt(r.gpu_ms_compiled, '{:.2f}', '-')}",
                              _fmt(r.gpu_peak_mb, "{:.0f}", "-")]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", "![Dice against MACs, latency and parameters](pareto.png)", ""]
        notes = []
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
                      f"with its environment: commands.sh; each step's output: logs/.", ""]
        return "\n".join(lines)


def _fmt(value, pattern: str, missing: str = "") -> str:
    return missing if value is None else pattern.format(value)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats (cost no higher and Dice no lower, one of them strictly),
    sorted by cost; ``points`` are (cost, Dice)."""
    front = []
    for i, (c, d) in enumerate(points):
        if not any((c2 <= c and d2 >= d) and (c2 < c or d2 > d) for j, (c2, d2) in enumerate(points) if j != i):
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def plot_pareto(rows: Sequence[MethodResult], file: str | os.PathLike) -> bool:
    """``pareto.png``: Dice against MACs per patch, the fastest CPU latency and parameters, one panel each, every
    method a labelled point and the Pareto front a line. Returns False (no file) without two measured rows."""
    from nnunet_prune.plotting import new_figure, plot_style, save

    rows = [r for r in rows if r.status == "ok" and r.dice is not None and r.macs]
    if len(rows) < 2:
        return False
    axes_def = [("GMAC per patch", lambda r: r.macs / 1e9), ("CPU ms per patch (fastest runtime)",
                                                             lambda r: r.fastest_ms or r.cpu_ms),
                ("parameters (M)", lambda r: r.parameters / 1e6)]
    with plot_style():
        fig = new_figure(figsize=(15, 4.6), layout="constrained")
        for ax, (label, cost) in zip(fig.subplots(1, 3), axes_def):
            pts = [(cost(r), r.dice) for r in rows if cost(r) is not None]
            named = [r for r in rows if cost(r) is not None]
            for (x, y), r in zip(pts, named):
                ax.scatter([x], [y], s=30, zorder=3)
                ax.annotate(r.label, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
            front = pareto_front(pts)
            ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "k--", lw=1, zorder=2,
                    label="Pareto front")
            ax.set_xscale("log")
            ax.set_xlabel(label + " (log)")
            ax.set_ylabel("Dice (foreground mean)")
            ax.grid(True, alpha=0.3)
            ax.legend(loc="lower right", fontsize=7)
        fig.suptitle("nnunet-prune benchmark: Dice against cost")
        save(fig, str(file))
    return True
