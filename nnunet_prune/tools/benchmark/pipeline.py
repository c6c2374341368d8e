"""The steps a method goes through, shared by the benchmark and the demo (its preset): plan what is missing, train
every fold with stock ``nnUNetv2_train``, export where the method is measured exported, predict the held-out images
with stock nnU-Net and score them with ``nnUNetv2_evaluate_folder`` (the one Dice source: its ``summary.json``), and
the magnitude-pruning sweep of the dense model (``nnunet-prune sweep``). Every command runs through one
:class:`~nnunet_prune.tools.runner.StepRunner`; each step is reused when its result exists (a rerun
continues), and its wall time goes to the run's :class:`~nnunet_prune.tools.benchmark.state.RunState`.

Where the files go is a :class:`Layout`; what is said at each step, a :class:`Narrator` (the benchmark's progress
lines here; the demo's headings in :mod:`nnunet_prune.tools.benchmark.demo_text`).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from nnunet_prune.nnunet.seeding import SEED_VAR
from nnunet_prune.tools.benchmark.methods import DENSE, DISTILL_VAR, TEACHER_VAR, MethodSpec, method_spec
from nnunet_prune.tools.benchmark.rows import MethodResult
from nnunet_prune.tools.benchmark.settings import BenchmarkSettings
from nnunet_prune.tools.benchmark.state import RunState
from nnunet_prune.tools.commands import console_script, package_command
from nnunet_prune.tools.quiet import quiet_environment
from nnunet_prune.tools.runner import StepFailed, StepRunner


@dataclass(frozen=True)
class Layout:
    """Where one run's files go: ``root`` is the output folder (the benchmark's ``OUT``, the demo's working folder),
    ``run`` this run's folder (``OUT/seed_<S>``; the demo: the working folder itself). Its nnU-Net results folder,
    predictions, exports, sweep and logs live in ``run``; planning logs and the sweep's inputs in ``root``."""

    root: Path
    run: Path
    dataset: str
    configuration: str

    @property
    def results(self) -> Path:
        """The run's own ``nnUNet_results`` (never the user's)."""
        return self.run / "nnUNet_results"

    def model_folder(self, m: MethodSpec) -> Path:
        """The method's trained model folder, ``<results>/<dataset>/<trainer>__<plans>__<configuration>``."""
        return self.results / self.dataset / f"{m.trainer}__{m.plans}__{self.configuration}"

    def predictions(self, m: MethodSpec, variant: str = "") -> Path:
        """The method's predictions of the held-out images, with nnU-Net's ``summary.json`` (``variant`` "int8": its
        INT8 folder's)."""
        return self.run / "predictions" / (f"{m.name}_{variant}" if variant else m.name)

    def exported(self, m: MethodSpec) -> Path:
        """The method's ``nnunet-prune export`` (methods measured exported)."""
        return self.run / "exported" / m.name

    def int8(self, m: MethodSpec) -> Path:
        """The method's INT8 folder (``nnunet-prune export --runtime openvino --int8``, with ``--int8``)."""
        return self.run / "int8" / m.name

    @property
    def sweep(self) -> Path:
        """The magnitude-pruning sweep of the dense model."""
        return self.run / "magnitude_sweep"

    @property
    def logs(self) -> Path:
        """Each step's output (``<method>.<step>.log``); planning's are in ``root/logs``."""
        return self.run / "logs"


def run_environment(user_env: Mapping[str, str], s: BenchmarkSettings, seed: int, results: Path,
                    **fixed: str) -> dict[str, str]:
    """The environment of a run's steps: the user's ``user_env`` (the warnings of :mod:`nnunet_prune.tools.quiet`
    filtered, ``NNUNET_PRUNE_DISABLE_HOOK`` dropped: the steps need this package's classes), the run's own
    ``nnUNet_results`` (``results``), the budget and seed of ``s`` / ``seed`` as ``NNUNET_PRUNE_*`` variables,
    unbuffered output, then ``fixed`` (a preset's own folders and switches); on the CPU ``nnUNet_n_proc_DA=0``
    unless it is set."""
    env = quiet_environment(user_env)
    env.update({
        "nnUNet_results": str(results), "PYTHONUNBUFFERED": "1",
        "NNUNET_PRUNE_EPOCHS": str(s.epochs), "NNUNET_PRUNE_ITERS_PER_EPOCH": str(s.iterations),
        "NNUNET_PRUNE_VAL_ITERS": str(s.val_iterations), SEED_VAR: str(seed), **fixed,
    })
    if s.device == "cpu":
        env.setdefault("nnUNet_n_proc_DA", "0")
    env.pop("NNUNET_PRUNE_DISABLE_HOOK", None)
    return env


class Narrator:
    """What the benchmark says at each step: one line each, through ``say`` (the benchmark's, with the time since
    its start). The demo's narrator says the same events as headings with its progress."""

    def __init__(self, say: Callable[[str], None], settings: BenchmarkSettings):
        self.say, self.s = say, settings

    def planning(self, planner: str | None, plans: str, preprocess_only: bool = False) -> None:
        """Planning with ``planner`` (None: nnU-Net's default) starts, or preprocessing with existing plans."""
        if preprocess_only:
            self.say(f"preprocessing {self.s.configuration} with the existing {plans}")
        elif planner is None:
            self.say(f"planning and preprocessing {self.s.dataset} {self.s.configuration} (nnU-Net's default "
                     f"planner)")
        else:
            self.say(f"planning {plans} ({planner}; reuses the default plans' data)")

    def training(self, m: MethodSpec, fold, how: str) -> None:
        """Fold ``fold`` of ``m`` starts ``how`` ("training", "continuing", "validating")."""
        self.say(f"{m.name}: {how} fold {fold} ({m.trainer}, {m.plans}, {self.s.epochs} x {self.s.iterations})")

    def reused(self, m: MethodSpec, fold) -> None:
        """Fold ``fold`` of ``m`` was trained by an earlier run."""
        self.say(f"{m.name}: fold {fold} already trained (reused)")

    def trained(self, m: MethodSpec, fold, seconds: float) -> None:
        """Fold ``fold`` of ``m`` is trained, in ``seconds`` in all."""
        self.say(f"{m.name}: fold {fold} done ({seconds:.0f} s)")

    def exporting(self, m: MethodSpec) -> None:
        """``m``'s export starts."""
        self.say(f"{m.name}: exporting (nnunet-prune export) before measuring")

    def predicting(self, m: MethodSpec, script: str) -> None:
        """``m``'s prediction of the held-out images starts (with console script ``script``)."""
        self.say(f"{m.name}: predicting the test images ({script}, folds {self.s.folds})")

    def quantizing(self, m: MethodSpec) -> None:
        """``m``'s INT8 export (with its Dice check) starts."""
        self.say(f"{m.name}: INT8 export (OpenVINO; kept within a Dice drop of {self.s.max_dice_drop})")

    def sweeping(self, m: MethodSpec) -> None:
        """The magnitude-pruning sweep of ``m`` (the dense model) starts."""
        self.say("magnitude: sweep of the dense model")


class Pipeline:
    """The steps of one run (one seed) of the methods in ``rows`` (name -> its row, filled here: wall times, the
    test set's Dice, tau) with ``settings``; ``dataset_json`` is the dataset's. Commands run through ``runner``
    (planning through ``plan_runner``, default: ``runner``); ``prefix`` starts this run's step names in ``state``
    (the benchmark: ``seed S: ``). ``predict_exports``: a method measured exported is predicted from its export
    too (the demo), else from its trained folder (the benchmark).
    """

    def __init__(self, settings: BenchmarkSettings, layout: Layout, runner: StepRunner, state: RunState,
                 narrator: Narrator, rows: Mapping[str, MethodResult], dataset_json: dict, *, prefix: str = "",
                 plan_runner: StepRunner | None = None, predict_exports: bool = False):
        self.s, self.layout, self.runner, self.state, self.narrate = settings, layout, runner, state, narrator
        self.rows, self.dataset_json, self.prefix = rows, dataset_json, prefix
        self.plan_runner = plan_runner or runner
        self.predict_exports = predict_exports
        self._sweep_lock = threading.Lock()

    @property
    def env(self) -> dict[str, str]:
        """The environment of the run's steps (the runner's)."""
        return self.runner.env

    def key(self, step: str) -> str:
        """The state's name of a step of this run, e.g. ``seed 0: dense predict``."""
        return self.prefix + step

    def run_method(self, m: MethodSpec) -> None:
        """Every step of one method but the measurement: :meth:`train_method`, then :meth:`finish_method`.

        Raises:
            StepFailed, StepInterrupted: a step failed or was interrupted (the caller decides what that means)."""
        self.train_method(m)
        self.finish_method(m)

    def train_method(self, m: MethodSpec, folds: Sequence | None = None) -> None:
        """Train ``m``'s folds (``folds``: only those) with its variables (:meth:`method_env`: the magnitude method
        after the dense model's sweep)."""
        self.train(m, self.method_env(m), folds)

    def trained(self, m: MethodSpec, fold) -> bool:
        """Whether fold ``fold`` of ``m`` is trained and validated (a rerun reuses it)."""
        fd = self.layout.model_folder(m) / f"fold_{fold}"
        return (fd / "checkpoint_final.pth").is_file() and (fd / "validation" / "summary.json").is_file()

    def finished(self, m: MethodSpec) -> bool:
        """Whether :meth:`finish_method` has nothing left to do for ``m`` (its export, its test-set summary)."""
        int8 = self.layout.int8(m)
        return (not m.export or (self.layout.exported(m) / "plans.json").is_file()) and \
            (not self.s.test_images or (self.layout.predictions(m) / "summary.json").is_file()) and \
            (not self.s.int8 or _refusal(int8).is_file() or (int8 / "plans.json").is_file()
             and (not self.s.test_images or (self.layout.predictions(m, "int8") / "summary.json").is_file()))

    def planned(self, methods: Sequence[MethodSpec]) -> bool:
        """Whether :meth:`plan` has nothing left to do for ``methods``."""
        default, planners = _missing_plans(Path(self.env["nnUNet_preprocessed"]) / self.s.dataset,
                                           self.s.configuration, methods)
        return default is None and not planners

    def finish_method(self, m: MethodSpec) -> None:
        """After the training: export ``m`` where it is measured exported, predict and evaluate the held-out images
        (with a test set)."""
        if m.export:
            self.export(m)
        if self.s.test_images:
            self.predict(m)
        if self.s.int8:
            self.quantize(m)

    def method_env(self, m: MethodSpec) -> dict[str, str]:
        """The variables ``m``'s trainings get on top of the run's: its spec's, the dense model it starts from,
        the dense model as the teacher of a distilled row (``NNUNET_PRUNE_TEACHER``; the user's
        ``NNUNET_PRUNE_DISTILL``, in the run's environment, gives its settings), distillation switched off for every
        other row where the user set ``NNUNET_PRUNE_DISTILL`` (which would switch it on for every trainer), the
        sweep's tau for the magnitude method (the user's other magnitude settings kept)."""
        extra = dict(m.env)
        dense = str(self.layout.model_folder(method_spec(DENSE)))
        if m.from_dense:
            extra["NNUNET_PRUNE_DENSE_MODEL"] = dense
        if m.distilled:
            extra[TEACHER_VAR] = dense
        elif self.env.get(DISTILL_VAR, "").strip() and DISTILL_VAR not in extra:
            extra[DISTILL_VAR] = "0"  # the row's name promises no teacher
        if m.magnitude:  # the user's variable parsed, its tau replaced; the rest kept
            from nnunet_prune.methods.magnitude import MagnitudeSettings as Magnitude

            self.rows[m.name].tau = tau = self.sweep_tau()
            own = Magnitude.parse_env(self.env.get(Magnitude.ENV_VAR, ""))
            extra[Magnitude.ENV_VAR] = ",".join([f"tau={tau:.6g}", *(f"{k}={v}" for k, v in own.items()
                                                                       if k != "tau")])
        return extra

    # ------------------------------------------------------------------ planning
    def plan(self, methods: Sequence[MethodSpec]) -> None:
        """Plan (and preprocess) what is missing: the default plans' data of the configuration, then the plans of
        ``methods``' planners (which reuse that data). Existing plans are never overwritten."""
        n = self.env.get("nnUNet_def_n_proc", str(min(8, os.cpu_count() or 1)))
        script = console_script("nnUNetv2_plan_and_preprocess")
        default, planners = _missing_plans(Path(self.env["nnUNet_preprocessed"]) / self.s.dataset,
                                           self.s.configuration, methods)
        if default == "plan":
            self.narrate.planning(None, "nnUNetPlans")
            with self.state.timed("plan default"):
                self.plan_runner.run("plans", "default", [script, "-d", self.s.dataset_id, "-c",
                                                          self.s.configuration, "-np", n, "-npfp", n])
        elif default == "preprocess":
            self.narrate.planning(None, "nnUNetPlans", preprocess_only=True)
            with self.state.timed("preprocess default"):
                self.plan_runner.run("plans", "preprocess", [
                    console_script("nnUNetv2_preprocess"), "-d", self.s.dataset_id, "-plans_name",
                    "nnUNetPlans", "-c", self.s.configuration, "-np", n])
        for planner, plans in planners:
            self.narrate.planning(planner, plans)
            with self.state.timed(f"plan {planner}"):
                self.plan_runner.run("plans", planner, [script, "-d", self.s.dataset_id, "-c", self.s.configuration,
                                                        "-pl", planner, "-np", n, "-npfp", n])

    # ------------------------------------------------------------------ training
    def train(self, m: MethodSpec, extra_env: Mapping[str, str] | None = None, folds: Sequence | None = None) -> None:
        """Train every fold of ``m`` (``folds``: only those; reused when finished and validated; continued with
        ``--c`` when interrupted, the time so far counted); its training seconds go to its row."""
        row = self.rows[m.name]
        for fold in self.s.folds if folds is None else folds:
            fd = self.layout.model_folder(m) / f"fold_{fold}"
            key = self.key(f"{m.name} train fold {fold}")
            if self.trained(m, fold):
                self.narrate.reused(m, fold)
                row.train_seconds += self.state.seconds(key) or 0.0
                continue
            cmd = [console_script("nnUNetv2_train"), self.s.dataset_id, self.s.configuration, str(fold), "-tr",
                   m.trainer, "-p", m.plans, "-device", self.s.device]
            how = "training"
            if (fd / "checkpoint_final.pth").is_file():
                cmd, how = cmd + ["--val"], "validating"
            elif (fd / "checkpoint_latest.pth").is_file():
                cmd, how = cmd + ["--c"], "continuing"
            self.narrate.training(m, fold, how)
            start = time.perf_counter()
            try:
                self.runner.run(m.name, f"train_fold_{fold}", cmd, extra_env)
            except KeyboardInterrupt:  # the time so far counts when the rerun continues this training with --c
                self.state.add_seconds(key, time.perf_counter() - start, resumed=how != "training")
                raise
            seconds = self.state.add_seconds(key, time.perf_counter() - start, resumed=how != "training")
            row.train_seconds += seconds
            self.narrate.trained(m, fold, seconds)

    def export(self, m: MethodSpec) -> Path:
        """``nnunet-prune export`` of ``m``'s trained folds into :meth:`Layout.exported` (reused when there);
        returns the export."""
        out = self.layout.exported(m)
        if not (out / "plans.json").is_file():
            self.narrate.exporting(m)
            with self.state.timed(self.key(f"{m.name} export")):
                self.runner.run(m.name, "export", package_command(
                    "export", str(self.layout.model_folder(m)), "-o", str(out), "-f", *map(str, self.s.folds)))
        return out

    def measured_folder(self, m: MethodSpec) -> Path:
        """The model folder ``m`` is measured from: its export where it is measured exported, else its trained
        folder."""
        return self.layout.exported(m) if m.export else self.layout.model_folder(m)

    # ------------------------------------------------------------------ prediction and evaluation
    def predict(self, m: MethodSpec) -> None:
        """Predict the test images with ``m``'s folds (stock ``nnUNetv2_predict``; an export with
        ``nnUNetv2_predict_from_modelfolder``) and score them with ``nnUNetv2_evaluate_folder``; reused when its
        ``summary.json`` exists. The row gets the wall time and nnU-Net's Dice (foreground mean and per class)."""
        out = self.layout.predictions(m)
        row = self.rows[m.name]
        cmd = self._predict_command(m, out)
        summary, row.predict_seconds = self._predict_and_evaluate(m, "predict", cmd, out)
        from nnunet_prune.tools.report.efficiency import dice_from_summary

        row.dice, per_class = dice_from_summary(summary, self.dataset_json)
        row.dice_per_class = per_class or {}
        row.dice_source = "test"

    def _predict_and_evaluate(self, m: MethodSpec, step: str, cmd: list[str], out: Path) -> tuple[dict, float]:
        """Run the prediction ``cmd`` into ``out`` and ``nnUNetv2_evaluate_folder`` on it (reused when its
        ``summary.json`` exists); returns (the summary, the wall seconds of both, recorded as ``<method> <step>``)."""
        summary, key = out / "summary.json", self.key(f"{m.name} {step}")
        if summary.is_file():
            return json.loads(summary.read_text()), self.state.seconds(key) or 0.0
        self.narrate.predicting(m, Path(cmd[0]).name)
        start = time.perf_counter()
        self.runner.run(m.name, step, cmd)
        self.runner.run(m.name, step.replace("predict", "evaluate"), [
            console_script("nnUNetv2_evaluate_folder"), self.s.test_labels, str(out), "-djfile",
            str(out / "dataset.json"), "-pfile", str(out / "plans.json"), "-o", str(summary), "-np",
            self.env.get("nnUNet_def_n_proc", "2")])
        return json.loads(summary.read_text()), self.state.add_seconds(key, time.perf_counter() - start)

    def quantize(self, m: MethodSpec) -> None:
        """With ``--int8``: ``nnunet-prune export --runtime openvino --int8`` of the folder ``m`` is measured from
        (kept only within ``max_dice_drop`` of its float Dice on the validation cases), then its Dice like the
        float model's: the test set predicted by the INT8 folder (``nnUNetv2_predict_from_modelfolder``, CPU) and
        evaluated, else its folds' validation Dice (the INT8 predictions the export checked). A refusal (no INT8 model
        holds the bound) is remembered (``int8/<method>.refused``) and goes to the row's ``int8_error``; so does any
        other failure of the export (retried on a rerun); the method itself stays ok."""
        out, row = self.layout.int8(m), self.rows[m.name]
        if _refusal(out).is_file():
            row.int8_error = _refusal(out).read_text().strip()
            return
        if not (out / "plans.json").is_file():
            self.narrate.quantizing(m)
            out.parent.mkdir(parents=True, exist_ok=True)
            cmd = package_command("export", str(self.measured_folder(m)), "-o", str(out), "--runtime", "openvino",
                                  "--int8", "--max-dice-drop", str(self.s.max_dice_drop), "-f",
                                  *map(str, self.s.folds))
            try:
                with self.state.timed(self.key(f"{m.name} int8")):
                    self.runner.run(m.name, "int8", cmd)
            except StepFailed as e:
                row.int8_error = str(e).split("ERROR: ")[-1][:400]
                if "INT8 refused" in str(e):
                    _refusal(out).parent.mkdir(parents=True, exist_ok=True)
                    _refusal(out).write_text(row.int8_error + "\n")
                return
        if self.s.test_images:
            pred = self.layout.predictions(m, "int8")
            cmd = [console_script("nnUNetv2_predict_from_modelfolder"), "-i", self.s.test_images, "-o", str(pred),
                   "-m", str(out), "-f", *map(str, self.s.folds), "-device", "cpu", "-npp", "1", "-nps", "1",
                   "--disable_progress_bar"]
            summary, _ = self._predict_and_evaluate(m, "int8_predict", cmd, pred)
            from nnunet_prune.tools.report.efficiency import dice_from_summary

            row.int8_dice = dice_from_summary(summary, self.dataset_json)[0]
        else:
            from nnunet_prune.nnunet.modelfolder import ModelFolder
            from nnunet_prune.tools.report.efficiency import read_dice

            folder = ModelFolder.open(out, self.s.folds)
            dices = [read_dice(folder, f)[0] for f in self.s.folds]
            row.int8_dice = sum(dices) / len(dices) if None not in dices else None

    def _predict_command(self, m: MethodSpec, out: Path) -> list[str]:
        folds = [*map(str, self.s.folds)]
        common = ["-i", self.s.test_images, "-o", str(out)]
        tail = ["-f", *folds, "-device", self.s.device, "-npp", "1", "-nps", "1", "--disable_progress_bar"]
        if m.export and self.predict_exports:
            return [console_script("nnUNetv2_predict_from_modelfolder"), *common, "-m",
                    str(self.layout.exported(m)), *tail]
        return [console_script("nnUNetv2_predict"), *common, "-d", self.s.dataset_id, "-c", self.s.configuration,
                "-tr", m.trainer, "-p", m.plans, *tail]

    # ------------------------------------------------------------------ the magnitude sweep
    def sweep(self) -> dict:
        """The magnitude-pruning sweep of the dense model (``nnunet-prune sweep``, resumable) on the test images,
        else on the folds' validation cases; returns its report (``sweep.json``)."""
        with self._sweep_lock:
            report = self.layout.sweep / "sweep.json"
            if not report.is_file():
                images, labels = self._sweep_inputs()
                dense = method_spec(DENSE)
                cmd = package_command("sweep", str(self.layout.model_folder(dense)), "-i", images, "--labels",
                                      labels, "-o", str(self.layout.sweep), "-f", *map(str, self.s.folds),
                                      "--device", self.s.device)
                if self.s.sweep_taus:
                    cmd += ["--taus", *map(str, self.s.sweep_taus)]
                self.narrate.sweeping(dense)
                with self.state.timed(self.key("magnitude sweep")):
                    self.runner.run("magnitude", "sweep", cmd)
            return json.loads(report.read_text())

    def sweep_tau(self) -> float:
        """The critical tau of :meth:`sweep`.

        Raises:
            StepFailed: the sweep failed or found no tau that keeps the proxy Dice."""
        crit = self.sweep().get("critical_point")
        if not crit:
            raise StepFailed(f"the sweep ({self.layout.sweep / 'sweep.json'}) found no tau that keeps the proxy Dice "
                             f"above its threshold: no magnitude model to train")
        return float(crit["tau"])

    def _sweep_inputs(self) -> tuple[str, str]:
        """The sweep's images and labels: the test set, else links to the folds' validation cases in
        ``root/sweep_inputs``."""
        if self.s.test_images:
            return self.s.test_images, self.s.test_labels
        pre = Path(self.env["nnUNet_preprocessed"]) / self.s.dataset
        splits = json.loads((pre / "splits_final.json").read_text())
        raw = Path(self.env["nnUNet_raw"]) / self.s.dataset
        ending = self.dataset_json["file_ending"]
        images, labels = self.layout.root / "sweep_inputs" / "images", self.layout.root / "sweep_inputs" / "labels"
        images.mkdir(parents=True, exist_ok=True)
        labels.mkdir(parents=True, exist_ok=True)
        for fold in self.s.folds:
            for case in splits[int(fold)]["val"]:
                for f in (raw / "imagesTr").glob(f"{case}_[0-9][0-9][0-9][0-9]{ending}"):
                    _link(images / f.name, f)
                _link(labels / f"{case}{ending}", raw / "labelsTr" / f"{case}{ending}")
        return str(images), str(labels)


def _link(link: Path, target: Path) -> None:
    """``link`` -> ``target`` unless it is there (another seed's sweep, a cluster job at the same time, made it)."""
    try:
        link.symlink_to(target)
    except FileExistsError:
        pass


def _refusal(int8: Path) -> Path:
    """The file that remembers that the INT8 export of a method was refused (its message)."""
    return int8.with_name(int8.name + ".refused")


def _missing_plans(pre: Path, configuration: str,
                   methods: Sequence[MethodSpec]) -> tuple[str | None, list[tuple[str, str]]]:
    """In the dataset's preprocessed folder ``pre``: (what the default plans lack for ``configuration``: ``"plan"``
    (no nnUNetPlans.json), ``"preprocess"`` (no data of the configuration) or None; the (planner, plans) of
    ``methods`` not planned yet)."""
    default, need = pre / "nnUNetPlans.json", None
    if not default.is_file():
        need = "plan"
    else:
        cfg = json.loads(default.read_text())["configurations"].get(configuration, {})
        if not (pre / cfg.get("data_identifier", f"nnUNetPlans_{configuration}")).is_dir():
            need = "preprocess"
    return need, [(planner, plans) for planner, plans in sorted({(m.planner, m.plans) for m in methods
                                                                 if m.planner})
                  if not (pre / f"{plans}.json").is_file()]
