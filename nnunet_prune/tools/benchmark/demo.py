"""``nnunet-prune demo``: the whole package on demo data, with stock nnU-Net commands, in one working folder.

The demo is a preset of the benchmark: its dataset (created by ``nnunet-prune dataset``), budget, three methods
(the default network, LUnet and Sauron, exported slim) and the magnitude-pruning sweep, run through the benchmark's
:class:`~nnunet_prune.tools.benchmark.pipeline.Pipeline` and its one subprocess runner, with the output streamed.
Steps: create the dataset; plan and preprocess with nnU-Net's default planner and with ``LUnetPlanner`` (which
reuses the default plan's data); for each model, train it briefly on the CPU (``nnUNetv2_train``), export Sauron
slim, predict the held-out images with stock nnU-Net and score them with ``nnUNetv2_evaluate_folder`` (the Dice of
the table: its ``summary.json``, as in the benchmark); run the magnitude-pruning sweep on the default model
(``nnunet-prune sweep``); print and save a table of parameters, MACs, CPU latency, held-out Dice (mean and per
class, with plain notes on classes a model did not learn) and wall times.

Every training is seeded (``--seed``, default :data:`DEFAULT_SEED`, passed as ``NNUNET_PRUNE_SEED``): two runs
with the same seed on the same machine give the same Dice; another seed shows how much of a difference is chance.
Each step's heading says where the demo is and how long it still takes (:mod:`nnunet_prune.tools.benchmark.progress`),
and a slow or busy machine gets a suggestion for a smaller ``--epochs`` / ``--iterations``.

The training budget is tiny (:data:`~nnunet_prune.tools.benchmark.progress.MEASURED_MINUTES` minutes in all on
:data:`~nnunet_prune.tools.benchmark.progress.MEASURED_ON`), so the numbers show the mechanics and the size/speed
trade-offs, not what these methods reach with nnU-Net's full 1000-epoch schedule.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from nnunet_prune import NnUNetPruneError
from nnunet_prune.nnunet.seeding import check_seed
from nnunet_prune.tools.benchmark.demo_text import DemoNarrator, DemoReport
from nnunet_prune.tools.benchmark.methods import MethodSpec, method_spec
from nnunet_prune.tools.benchmark.pipeline import Layout, Pipeline, run_environment
from nnunet_prune.tools.benchmark.progress import ProgressEstimate, budget_scale, busy_machine, plan_steps
from nnunet_prune.tools.benchmark.rows import MethodResult
from nnunet_prune.tools.benchmark.settings import BenchmarkSettings
from nnunet_prune.tools.benchmark.state import RunState
from nnunet_prune.tools.commands import package_command
from nnunet_prune.tools.runner import StepRunner

TOOL = "demo"
DATASET_ID = 990
#: the seed of every demo training unless --seed says otherwise
DEFAULT_SEED = 0

#: Sauron's schedule compressed for a run of a few epochs (the paper's: tau_max 0.3, kappa 15, rho 5, tau from 0)
DEMO_SAURON = "tau_init=0.25,tau_max=0.3,kappa=3,rho=2,stat_batches=8"


def demo_methods(sauron: bool = True) -> list[MethodSpec]:
    """The demo's models: the benchmark's ``dense``, ``lunet`` (labelled "LUnet") and, with ``sauron``, ``sauron``
    with the compressed schedule :data:`DEMO_SAURON`, exported slim (measured and predicted from its export)."""
    out = [method_spec("dense"), replace(method_spec("lunet"), label="LUnet")]
    if sauron:
        out.append(replace(method_spec("sauron"), export=True, env=(("NNUNET_PRUNE_SAURON", DEMO_SAURON),)))
    return out


@dataclass
class DemoBudget:
    """Training budget of every demo model: ``epochs`` epochs of ``iterations`` training and ``val_iterations``
    validation iterations each (passed to the trainers as ``NNUNET_PRUNE_*`` variables)."""

    epochs: int = 10
    iterations: int = 25
    val_iterations: int = 4


@dataclass
class ModelRow:
    """One demo model and its measurements: a row of the results table.

    ``model_folder`` is the folder measured (the exported one for an exported model); ``macs`` per patch (batch 1);
    ``checkpoint_mb`` the size of fold 0's checkpoint in MB (1e6 bytes); ``dice`` the held-out foreground mean Dice
    and ``dice_per_class`` the Dice per label name (nnU-Net's ``summary.json``; None where nnU-Net gives NaN);
    ``train_seconds`` / ``predict_seconds`` wall times in seconds (prediction and its evaluation);
    ``cpu_ms_per_patch`` the median CPU latency per patch (ms, batch 1) and ``cpu_ms_iqr`` its interquartile range (ms).
    """

    name: str
    trainer: str
    plans: str
    model_folder: str
    parameters: int = 0
    macs: int = 0
    checkpoint_mb: float = 0.0
    dice: float | None = None
    dice_per_class: dict = field(default_factory=dict)
    train_seconds: float = 0.0
    predict_seconds: float = 0.0
    cpu_ms_per_patch: float | None = None
    cpu_ms_iqr: float | None = None
    #: why the latency is not comparable (:mod:`nnunet_prune.core.timing`: a busy machine, runs that do not agree)
    cpu_ms_not_comparable: str | None = None


class DemoLayout(Layout):
    """The demo's files, as they always were: predictions under the model's label, the export under the trained
    folder's name."""

    def predictions(self, m: MethodSpec) -> Path:
        """``predictions/<label>``."""
        return self.run / "predictions" / m.label

    def exported(self, m: MethodSpec) -> Path:
        """``exported/<trainer>__<plans>__<configuration>``."""
        return self.run / "exported" / self.model_folder(m).name


class Demo:
    """The demo in one working folder: nnU-Net's raw, preprocessed and results folders live in ``workdir``, and every
    step runs through the benchmark's pipeline with those folders and the :class:`DemoBudget` in its environment.

    ``dataset`` is "synthetic" or "lits117" (``lits_wheel``: a local copy of its data wheel); ``sweep`` and ``sauron``
    switch the magnitude-pruning sweep and the Sauron model on or off; ``seed`` seeds every training
    (``NNUNET_PRUNE_SEED``). :meth:`run_all` runs everything.

    Raises:
        NnUNetPruneError: ``seed`` is not a whole number from 0 to 2**32 - 1.
    """

    #: the runner of every step's command (a test may run something else)
    runner_class: type[StepRunner] = StepRunner

    def __init__(self, workdir: str | os.PathLike, dataset: str = "synthetic", budget: DemoBudget | None = None,
                 sweep: bool = True, sauron: bool = True, lits_wheel: str | None = None, seed: int = DEFAULT_SEED):
        self.seed = check_seed(seed, "--seed")
        self.workdir = Path(workdir).expanduser().resolve()
        self.dataset = dataset
        self.budget = budget or DemoBudget()
        self.do_sweep, self.do_sauron = sweep, sauron
        self.lits_wheel = lits_wheel
        self.methods = demo_methods(sauron)
        self.rows: list[ModelRow] = []
        self.timings: dict[str, float] = {}
        b = self.budget
        #: the benchmark's settings of the demo (the dataset's name is known once it is created)
        self.settings = BenchmarkSettings(
            dataset=f"Dataset{DATASET_ID:03d}", configuration="2d", folds=[0], methods=[m.name for m in self.methods],
            epochs=b.epochs, iterations=b.iterations, val_iterations=b.val_iterations, device="cpu", seed=self.seed)
        folders = {k: str(self.workdir / k) for k in ("nnUNet_raw", "nnUNet_preprocessed")}
        env = run_environment(os.environ, self.settings, self.seed, self.workdir / "nnUNet_results", **folders,
                              nnUNet_def_n_proc=str(min(2, os.cpu_count() or 1)), nnUNet_compile="f",
                              nnUNet_n_proc_DA="0")
        self.narrator = DemoNarrator(self.settings, self.methods)
        self.runner = self.runner_class(env, self.workdir, echo=self.narrator.say)
        self.threads: int | str = "?"
        self.patch_size: list[int] = []

    @property
    def env(self) -> dict[str, str]:
        """The environment of every step (nnU-Net's folders in the working folder, the budget, the seed)."""
        return self.runner.env

    @property
    def progress(self) -> ProgressEstimate | None:
        """Where the demo is (:meth:`start_progress`; None before)."""
        return self.narrator.progress

    # ------------------------------------------------------------------ the working folder
    def prepare_workdir(self) -> None:
        """Create the working folder with its manifest and nnU-Net folders, after removing an earlier demo's files.

        Raises:
            NnUNetPruneError: the folder is not empty and was not made by the demo (its manifest says who made it),
                or it holds files the earlier demo did not record.
        """
        from nnunet_prune.core.outputs import made_by, remove_owned

        if self.workdir.exists() and any(self.workdir.iterdir()):
            if not made_by(self.workdir, TOOL):
                raise NnUNetPruneError(f"{self.workdir} exists, is not empty and was not made by the demo (no "
                                       f"manifest of the demo there); choose another --workdir (nothing was "
                                       f"touched).")
            remove_owned(self.workdir, TOOL)  # only files the earlier demo recorded; anything else stops it
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.record()  # the manifest, at once: from now on the folder is recognisably the demo's
        for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
            Path(self.env[k]).mkdir()

    def record(self) -> None:
        """Record every file now in the working folder as the demo's own (what a rerun may delete)."""
        from nnunet_prune.core.outputs import record_files

        if self.workdir.is_dir():
            record_files(self.workdir, TOOL)

    @property
    def dataset_name(self) -> str:
        """The demo dataset's folder name in nnUNet_raw (``Dataset990_<name>``); the dataset must exist."""
        raw = Path(self.env["nnUNet_raw"])
        return next(p.name for p in raw.iterdir() if p.name.startswith(f"Dataset{DATASET_ID:03d}_"))

    @property
    def images_ts(self) -> Path:
        """The demo dataset's held-out images (imagesTs)."""
        return Path(self.env["nnUNet_raw"]) / self.dataset_name / "imagesTs"

    @property
    def labels_ts(self) -> Path:
        """The demo dataset's held-out labels (labelsTs)."""
        return Path(self.env["nnUNet_raw"]) / self.dataset_name / "labelsTs"

    # ------------------------------------------------------------------ steps
    def start_progress(self) -> None:
        """Plan the steps (:attr:`progress`) for these options and say when the machine is busy already."""
        labels = [m.label for m in self.methods]
        b = self.budget
        self.narrator.progress = ProgressEstimate(plan_steps(labels, [m.label for m in self.methods if m.export],
                                                             self.do_sweep,
                                                             budget_scale(b.epochs, b.iterations, b.val_iterations)))
        busy = busy_machine()
        if busy:
            self.narrator.say(self.progress.advice(busy, b.epochs, b.iterations))

    def create_dataset(self) -> None:
        """Step: write the demo dataset (ID 990) with ``nnunet-prune dataset`` (synthetic: 2D, 20 training and 5 test
        cases)."""
        self.narrator.heading(f"Creating the {self.dataset} dataset", "dataset")
        cmd = package_command("dataset", self.dataset, "-d", str(DATASET_ID))
        if self.dataset == "synthetic":
            cmd += ["--dim", "2", "--cases", "20", "--test-cases", "5"]
        elif self.lits_wheel:
            cmd += ["--wheel", self.lits_wheel]
        self.runner.run("dataset", "create", cmd)

    def pipeline(self) -> Pipeline:
        """The benchmark's pipeline on the created dataset, its held-out images as the test set: the demo's layout
        (:class:`DemoLayout`), runner and headings, exports predicted from (the model measured is the model
        scored), the state in memory (a rerun starts again)."""
        self.settings.dataset = self.dataset_name
        self.settings.test_images, self.settings.test_labels = str(self.images_ts), str(self.labels_ts)
        dataset_json = json.loads((self.images_ts.parent / "dataset.json").read_text())
        rows = {m.name: MethodResult(m.name, m.label, m.trainer, m.plans, seed=self.seed) for m in self.methods}
        layout = DemoLayout(self.workdir, self.workdir, self.settings.dataset, self.settings.configuration)
        return Pipeline(self.settings, layout, self.runner, RunState(None, TOOL), self.narrator, rows, dataset_json,
                        predict_exports=True)

    def measure(self) -> None:
        """Parameters, MACs, checkpoint size and CPU latency per patch of every model (timed interleaved:
        :func:`~nnunet_prune.tools.benchmark.measure.measure_interleaved`), into :attr:`rows`."""
        from nnunet_prune.tools.benchmark.measure import measure_interleaved

        numbers, info = measure_interleaved({r.name: Path(r.model_folder) for r in self.rows})
        for row in self.rows:
            for k, v in numbers[row.name].items():
                setattr(row, k, v)
        self.threads, self.patch_size = info["threads"], info["patch_size"]

    # ------------------------------------------------------------------ all
    def run_all(self) -> Path:
        """Run every step (see the module docstring), print the summary and write demo_results.md and
        demo_results.json into the working folder; returns the path of demo_results.md.

        The files in the working folder are recorded as the demo's own at the end, also after a failure or Ctrl-C.

        Raises:
            NnUNetPruneError: the working folder cannot be used (:meth:`prepare_workdir`), a console script is missing,
                or a step failed.
            KeyboardInterrupt: Ctrl-C (said in one line: the demo does not continue, a rerun starts again).
        """
        start = time.perf_counter()
        self.prepare_workdir()
        try:
            return self._run_steps(start)
        except KeyboardInterrupt:
            where = f" in step '{self.progress.current}'" if self.progress and self.progress.current else ""
            print(f"\nInterrupted{where}. The demo does not continue where it stopped: rerun `nnunet-prune demo` "
                  f"(same options) to start again; it replaces its own working folder.", flush=True)
            raise
        finally:
            self.record()  # also after a failure or Ctrl-C: the files of the steps that ran are the demo's

    def _run_steps(self, start: float) -> Path:
        self.start_progress()
        self.create_dataset()
        pipeline = self.pipeline()
        pipeline.plan(self.methods)
        for m in self.methods:
            pipeline.run_method(m)
        sweep = pipeline.sweep() if self.do_sweep else None
        self.rows = [ModelRow(m.label, m.trainer, m.plans, str(pipeline.measured_folder(m)), dice=r.dice,
                              dice_per_class=r.dice_per_class, train_seconds=r.train_seconds,
                              predict_seconds=r.predict_seconds)
                     for m, r in zip(self.methods, pipeline.rows.values(), strict=True)]
        t = self.narrator.heading("Measuring parameters, MACs, CPU latency and held-out Dice", "measure")
        self.measure()
        self.timings = {k: v for k, v in self.progress.actual.items() if not k.startswith(("train ", "predict "))}
        self.timings["measure"] = time.perf_counter() - t
        total = time.perf_counter() - start
        print("\n" + self.summary(sweep, total, markdown=False))
        out = self.workdir / "demo_results.md"
        out.write_text(self.summary(sweep, total))
        (self.workdir / "demo_results.json").write_text(json.dumps(
            {"rows": [asdict(r) for r in self.rows], "timings": self.timings, "total_seconds": total,
             "budget": asdict(self.budget), "dataset": self.dataset, "seed": self.seed,
             "sweep_critical_point": sweep["critical_point"] if sweep else None}, indent=2))
        return out

    def summary(self, sweep: dict | None, total: float, markdown: bool = True) -> str:
        """The results as text (:meth:`DemoReport.summary`): budget, table (Markdown, or aligned plain text with
        ``markdown=False``), notes, the sweep's critical point (``sweep``: its report, or None) and the total wall
        time ``total`` (seconds)."""
        return DemoReport(self.rows, self.dataset, self.budget.epochs, self.budget.iterations, self.seed,
                          self.workdir, self.threads, self.patch_size).summary(sweep, total, markdown)
