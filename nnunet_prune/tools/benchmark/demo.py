"""``nnunet-prune demo``: the whole package on demo data, with stock nnU-Net commands, in one working folder.

Steps (each a stock nnU-Net console script or a command of this package, run as a subprocess with its output
streamed): create the dataset; plan and preprocess with nnU-Net's default planner and with ``LUnetPlanner``
(which reuses the default plan's data); train the default network, LUnet and Sauron briefly on the CPU;
export the Sauron model slim; predict the held-out images with ``nnUNetv2_predict``; run the magnitude-pruning
sweep on the default model; print and save a table of parameters, MACs, held-out Dice (mean and per class, with
plain notes on classes a model did not learn) and wall times.

Every training is seeded (``--seed``, default :data:`DEFAULT_SEED`, passed as ``NNUNET_PRUNE_SEED``): two runs
with the same seed on the same machine give the same Dice; another seed shows how much of a difference is chance.
Each step's heading says where the demo is and how long it still takes (:mod:`nnunet_prune.tools.benchmark.progress`),
and
a slow or busy machine gets a suggestion for a smaller ``--epochs`` / ``--iterations``.

The training budget is tiny (:data:`~nnunet_prune.tools.benchmark.progress.MEASURED_MINUTES` minutes in all on
:data:`~nnunet_prune.tools.benchmark.progress.MEASURED_ON`), so the numbers show the mechanics and the size/speed
trade-offs,
not what these methods reach with nnU-Net's full 1000-epoch schedule.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from nnunet_prune import NnUNetPruneError
from nnunet_prune.nnunet.seeding import SEED_VAR, check_seed
from nnunet_prune.tools.benchmark.progress import ProgressEstimate, budget_scale, busy_machine, plan_steps
from nnunet_prune.tools.class_dice import class_notes
from nnunet_prune.tools.commands import console_script, package_command
from nnunet_prune.tools.quiet import is_banner_line, quiet_environment

MARKER = ".nnunet_prune_demo"
TOOL = "demo"
DATASET_ID = 990
#: the seed of every demo training unless --seed says otherwise
DEFAULT_SEED = 0

#: Sauron's schedule compressed for a run of a few epochs (the paper's: tau_max 0.3, kappa 15, rho 5, tau from 0)
DEMO_SAURON = "tau_init=0.25,tau_max=0.3,kappa=3,rho=2,stat_batches=8"


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

    ``model_folder`` is the trained folder (the exported one after :meth:`Demo.export`); ``macs`` per patch (batch 1);
    ``checkpoint_mb`` the size of fold 0's checkpoint in MB (1e6 bytes); ``dice`` the held-out foreground mean Dice
    and ``dice_per_class`` the Dice per label name; ``train_seconds`` / ``predict_seconds`` wall times in seconds;
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


class Demo:
    """The demo in one working folder: nnU-Net's raw, preprocessed and results folders live in ``workdir``, and every
    step runs as a subprocess with those folders and the :class:`DemoBudget` in its environment.

    ``dataset`` is "synthetic" or "lits117" (``lits_wheel``: a local copy of its data wheel); ``sweep`` and ``sauron``
    switch the magnitude-pruning sweep and the Sauron model on or off; ``seed`` seeds every training
    (``NNUNET_PRUNE_SEED``). :meth:`run_all` runs everything.

    Raises:
        NnUNetPruneError: ``seed`` is not a whole number from 0 to 2**32 - 1.
    """

    def __init__(self, workdir: str | os.PathLike, dataset: str = "synthetic", budget: DemoBudget | None = None,
                 sweep: bool = True, sauron: bool = True, lits_wheel: str | None = None, seed: int = DEFAULT_SEED):
        self.seed = check_seed(seed, "--seed")
        self.progress: ProgressEstimate | None = None
        self.workdir = Path(workdir).expanduser().resolve()
        self.dataset = dataset
        self.budget = budget or DemoBudget()
        self.do_sweep, self.do_sauron = sweep, sauron
        self.lits_wheel = lits_wheel
        self.rows: list[ModelRow] = []
        self.timings: dict[str, float] = {}
        self.env = quiet_environment(os.environ)  # nnU-Net's imports warn of what the user cannot change
        self.env.update({
            "nnUNet_raw": str(self.workdir / "nnUNet_raw"),
            "nnUNet_preprocessed": str(self.workdir / "nnUNet_preprocessed"),
            "nnUNet_results": str(self.workdir / "nnUNet_results"),
            "nnUNet_def_n_proc": str(min(2, os.cpu_count() or 1)),
            "nnUNet_compile": "f",
            "PYTHONUNBUFFERED": "1",
            "NNUNET_PRUNE_EPOCHS": str(self.budget.epochs),
            "NNUNET_PRUNE_ITERS_PER_EPOCH": str(self.budget.iterations),
            "NNUNET_PRUNE_VAL_ITERS": str(self.budget.val_iterations),
            SEED_VAR: str(self.seed),
        })
        self.env.pop("NNUNET_PRUNE_DISABLE_HOOK", None)

    # ------------------------------------------------------------------ helpers
    def prepare_workdir(self) -> None:
        """Create the working folder with its marker and nnU-Net folders, after removing an earlier demo's files.

        Raises:
            NnUNetPruneError: the folder is not empty and was not made by the demo, an earlier demo there was killed
                before it recorded its files, or it holds files the earlier demo did not record.
        """
        from nnunet_prune.core.outputs import read_manifest, remove_owned

        if self.workdir.exists() and any(self.workdir.iterdir()):
            if not (self.workdir / MARKER).is_file():
                raise NnUNetPruneError(f"{self.workdir} exists, is not empty and was not made by the demo; "
                                       f"choose another --workdir (nothing was touched).")
            if read_manifest(self.workdir) is None:
                raise NnUNetPruneError(f"{self.workdir} is the working folder of a demo run that was killed before "
                                       f"it recorded its files, so the demo cannot prove everything in it is its "
                                       f"own. Nothing was touched: delete it yourself, or choose another --workdir.")
            remove_owned(self.workdir, TOOL)  # only files the earlier demo recorded; anything else stops it
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / MARKER).write_text("working folder of `nnunet-prune demo`; safe to delete\n")
        self.record()
        for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
            Path(self.env[k]).mkdir()

    def record(self) -> None:
        """Record every file now in the working folder as the demo's own (what a rerun may delete)."""
        from nnunet_prune.core.outputs import record_files

        if self.workdir.is_dir():
            record_files(self.workdir, TOOL)

    def step(self, title: str, key: str | None = None) -> float:
        """Print a step's heading, with where the demo is and the time left when :attr:`progress` plans step ``key``
        (e.g. ``[step 4 of 12 (model 1 of 3), about 4 min left]``), and return its start time
        (``time.perf_counter()``, seconds)."""
        now = time.perf_counter()
        where = ""
        if self.progress is not None and key is not None and self.progress.has(key):
            where = f"[{self.progress.begin(key, now)}] "
        print(f"\n==> {where}{title}", flush=True)
        return now

    def run(self, cmd: list[str], extra_env: dict | None = None, quiet_prefixes=("{'data_identifier'",)) -> None:
        """Run ``cmd`` in the working folder with the demo's environment (plus ``extra_env``), streaming its output
        indented; lines starting with ``quiet_prefixes``, progress-bar redraws and nnU-Net's banners
        (:func:`nnunet_prune.tools.quiet.is_banner_line`) are left out.

        Raises:
            NnUNetPruneError: the command exits with a non-zero code; the message holds its last 40 lines of output.
            KeyboardInterrupt: SIGINT ended the command (Ctrl-C reaches the step and this process alike).
        """
        env = {**self.env, **(extra_env or {})}
        printable = shlex.join([Path(cmd[0]).name, *cmd[1:]])  # quoted: paths with spaces paste as they are
        print(f"    $ {printable}", flush=True)
        proc = subprocess.Popen(cmd, env=env, cwd=self.workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        tail = []
        for raw in proc.stdout:
            # a progress bar redraws itself with carriage returns: keep only its last state, not one line per redraw
            line = raw.decode("utf-8", "replace").rstrip("\r\n").split("\r")[-1].rstrip()
            tail = (tail + [line])[-40:]
            if line and not line.lstrip().startswith(quiet_prefixes) and not is_banner_line(line):
                print(f"    | {line[:160]}", flush=True)
        if proc.wait() in (-signal.SIGINT, 128 + signal.SIGINT):  # Ctrl-C reached the step first: not a failure
            raise KeyboardInterrupt
        if proc.returncode != 0:
            raise NnUNetPruneError(f"`{printable}` failed (exit code {proc.returncode}). Last output:\n"
                                   + "\n".join(tail))

    @property
    def dataset_name(self) -> str:
        """The demo dataset's folder name in nnUNet_raw (``Dataset990_<name>``); the dataset must exist."""
        raw = Path(self.env["nnUNet_raw"])
        return next(p.name for p in raw.iterdir() if p.name.startswith(f"Dataset{DATASET_ID:03d}_"))

    # ------------------------------------------------------------------ steps
    def create_dataset(self) -> None:
        """Step: write the demo dataset (ID 990) with ``nnunet-prune dataset`` (synthetic: 2D, 20 training and 5 test
        cases)."""
        t = self.step(f"Creating the {self.dataset} dataset", "dataset")
        cmd = package_command("dataset", self.dataset, "-d", str(DATASET_ID))
        if self.dataset == "synthetic":
            cmd += ["--dim", "2", "--cases", "20", "--test-cases", "5"]
        elif self.lits_wheel:
            cmd += ["--wheel", self.lits_wheel]
        self.run(cmd)
        self.timings["dataset"] = time.perf_counter() - t

    def plan(self) -> None:
        """Step: plan and preprocess 2d with nnU-Net's default planner, then plan with ``LUnetPlanner`` (which reuses
        the preprocessed data)."""
        t = self.step("Planning and preprocessing: nnU-Net default planner (2d)", "plan default")
        n = self.env["nnUNet_def_n_proc"]
        self.run([console_script("nnUNetv2_plan_and_preprocess"), "-d", str(DATASET_ID), "-c", "2d", "-np", n,
                  "-npfp", n])
        self.timings["plan default"] = time.perf_counter() - t
        t = self.step("Planning: LUnetPlanner (constant width 32; reuses the preprocessed data)", "plan LUnet")
        self.run([console_script("nnUNetv2_plan_and_preprocess"), "-d", str(DATASET_ID), "-c", "2d", "-pl",
                  "LUnetPlanner", "-np", n, "-npfp", n])
        self.timings["plan LUnet"] = time.perf_counter() - t

    def train(self, name: str, trainer: str, plans: str = "nnUNetPlans", extra_env: dict | None = None) -> ModelRow:
        """Step: train fold 0 of the 2d configuration with ``trainer`` and ``plans`` on the CPU (``nnUNetv2_train``);
        returns the model's new :class:`ModelRow` (``name``: its label in the table), also added to :attr:`rows`."""
        t = self.step(f"Training {name}: nnUNetv2_train {DATASET_ID} 2d 0 -tr {trainer} -p {plans} "
                      f"({self.budget.epochs} epochs x {self.budget.iterations} iterations, CPU, seed {self.seed})",
                      f"train {name}")
        self.run([console_script("nnUNetv2_train"), str(DATASET_ID), "2d", "0", "-tr", trainer, "-p", plans, "-device",
                  "cpu"], {"nnUNet_n_proc_DA": "0", **(extra_env or {})})
        self._check_speed(f"train {name}")
        folder = Path(self.env["nnUNet_results"]) / self.dataset_name / f"{trainer}__{plans}__2d"
        row = ModelRow(name, trainer, plans, str(folder), train_seconds=time.perf_counter() - t)
        self.rows.append(row)
        return row

    def export(self, row: ModelRow) -> None:
        """Step: export ``row``'s model folder slim (``nnunet-prune export``) into ``exported/`` and point ``row`` at
        the export."""
        t = self.step(f"Exporting {row.name} as a slim model folder", f"export {row.name}")
        out = self.workdir / "exported" / Path(row.model_folder).name
        self.run(package_command("export", row.model_folder, "-o", str(out)))
        row.model_folder = str(out)
        self.timings[f"export {row.name}"] = time.perf_counter() - t

    def predict(self, row: ModelRow) -> None:
        """Step: predict the held-out images with fold 0 of ``row``'s model folder
        (``nnUNetv2_predict_from_modelfolder``) into ``predictions/<name>``; stores the wall time (s) in ``row``."""
        t = self.step(f"Predicting the held-out images with {row.name} (stock nnUNetv2_predict_from_modelfolder)",
                      f"predict {row.name}")
        out = self.workdir / "predictions" / row.name
        self.run([console_script("nnUNetv2_predict_from_modelfolder"), "-i", str(self.images_ts), "-o", str(out), "-m",
                  row.model_folder, "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1",
                  "--disable_progress_bar"])
        row.predict_seconds = time.perf_counter() - t

    def sweep(self, row: ModelRow) -> dict:
        """Step: magnitude-pruning sweep of ``row`` (fold 0, held-out images and labels) into ``magnitude_sweep/``;
        returns its report (sweep.json)."""
        t = self.step(f"Magnitude-pruning sweep of {row.name} (proxy Dice on the held-out images)", "sweep")
        out = self.workdir / "magnitude_sweep"
        self.run(package_command("sweep", row.model_folder, "-i", str(self.images_ts), "--labels", str(self.labels_ts),
                                 "-o", str(out), "-f", "0"))
        self.timings["sweep"] = time.perf_counter() - t
        return json.loads((out / "sweep.json").read_text())

    @property
    def images_ts(self) -> Path:
        """The demo dataset's held-out images (imagesTs)."""
        return Path(self.env["nnUNet_raw"]) / self.dataset_name / "imagesTs"

    @property
    def labels_ts(self) -> Path:
        """The demo dataset's held-out labels (labelsTs)."""
        return Path(self.env["nnUNet_raw"]) / self.dataset_name / "labelsTs"

    def measure(self) -> None:
        """Parameters, MACs, checkpoint size, CPU latency per patch and held-out Dice of every model."""
        import torch

        from nnunet_prune.core.latency import measure_latencies
        from nnunet_prune.core.stats import count_macs, count_parameters
        from nnunet_prune.nnunet.modelfolder import ModelFolder, label_names
        from nnunet_prune.tools.dice import dice_per_case, foreground_mean

        self.threads = torch.get_num_threads()

        os.environ.update({k: self.env[k] for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")})
        nets: dict[tuple, dict] = {}  # patch size -> {model: network}: timed together, interleaved
        for row in self.rows:
            mf = ModelFolder.open(row.model_folder, [0])
            net = mf.load_network(0)
            nets.setdefault(tuple(mf.patch_size), {})[row.name] = net
            row.parameters, row.macs = count_parameters(net), count_macs(net, mf.patch_size)
            row.checkpoint_mb = mf.checkpoint_bytes(0) / 1e6
            self.patch_size = list(mf.patch_size)
            rw = mf.plans_manager.image_reader_writer_class()
            ending = mf.dataset_json["file_ending"]
            pred_dir = self.workdir / "predictions" / row.name
            ref, pred = {}, {}
            for f in sorted(self.labels_ts.glob(f"*{ending}")):
                case = f.name[:-len(ending)]
                ref[case] = rw.read_seg(str(f))[0][0]
                pred[case] = rw.read_seg(str(pred_dir / f.name))[0][0]
            labels = mf.label_manager.foreground_labels
            row.dice, per_class = foreground_mean(dice_per_case(ref, pred, labels))
            names = label_names(mf.dataset_json)
            row.dice_per_class = {names.get(k, k): v for k, v in per_class.items()}
        for patch, group in nets.items():  # one pass of each model per round: drift hits all of them alike
            timings = measure_latencies(group, patch, "cpu", repeats=10, warmup=2, threads=self.threads)
            for row in self.rows:
                stats = timings.stats.get(row.name)
                if stats is not None:
                    row.cpu_ms_per_patch, row.cpu_ms_iqr = stats.median_ms, stats.iqr_ms
                    row.cpu_ms_not_comparable = stats.not_comparable

    def _columns(self) -> tuple[list[str], list[list[str]]]:
        from nnunet_prune.tools.report.efficiency import _latency, _ratio

        base = self.rows[0]
        classes = list(base.dice_per_class)
        patch = "x".join(map(str, getattr(self, "patch_size", [])))
        headers = ["model", "parameters", "GMAC/patch", "MACs vs default", "checkpoint",
                   f"CPU ms/patch ({patch}, {getattr(self, 'threads', '?')} thr.)", "Dice",
                   *[f"Dice {c}" for c in classes], "train", "predict"]
        cells = []
        for r in self.rows:
            cells.append([r.name, f"{r.parameters / 1e6:.3f} M", f"{r.macs / 1e9:.3f}",
                          "-" if r is base else _ratio(r.macs, base.macs), f"{r.checkpoint_mb:.1f} MB",
                          _latency(r.cpu_ms_per_patch, r.cpu_ms_iqr, r.cpu_ms_not_comparable), f"{r.dice:.3f}",
                          *[f"{r.dice_per_class.get(c, float('nan')):.2f}" for c in classes],
                          f"{r.train_seconds:.0f} s", f"{r.predict_seconds:.0f} s"])
        return headers, cells

    def table(self) -> str:
        """The results as a Markdown table (demo_results.md)."""
        headers, cells = self._columns()
        lines = ["| " + " | ".join(headers) + " |", "|---|" + "---:|" * (len(headers) - 1)]
        lines += ["| " + " | ".join(c) + " |" for c in cells]
        return "\n".join(lines)

    def text_table(self) -> str:
        """The results as an aligned plain-text table for the terminal (two blocks, each under 110 characters)."""
        headers, cells = self._columns()
        split = 6  # size and speed | accuracy and wall time

        def block(cols: list[int]) -> list[str]:
            widths = [max(len(headers[i]), *(len(c[i]) for c in cells)) for i in cols]
            fmt = lambda vals: "  ".join(v.ljust(w) if i == 0 else v.rjust(w)  # noqa: E731
                                         for i, (v, w) in enumerate(zip(vals, widths, strict=True)))
            return [fmt([headers[i] for i in cols]), "  ".join("-" * w for w in widths),
                    *(fmt([c[i] for i in cols]) for c in cells)]

        return "\n".join(block(list(range(split))) + [""] + block([0, *range(split, len(headers))]))

    def notes(self, sweep: dict | None) -> list[str]:
        """Plain words for what the numbers cannot show on their own: classes a model did not learn or lost against
        the default network (:func:`~nnunet_prune.tools.class_dice.class_notes`), what the sweep's zeros do."""
        out = class_notes({r.name: r.dice_per_class for r in self.rows}, reference=self.rows[0].name,
                          advice="train longer (--epochs)")
        if sweep and sweep.get("critical_point"):
            out.append("The sweep's zeroed weights shrink the checkpoint (export --magnitude-tau) but give no "
                       "speed-up: dense convolutions do the same work on zeros.")
        unfit = [r for r in self.rows if r.cpu_ms_not_comparable]
        if unfit:
            out.append(f"CPU ms marked (n/c) are not comparable between the models ({unfit[0].cpu_ms_not_comparable}"
                       f"): do not read a speed-up from them; rerun `nnunet-prune report` on a quiet machine.")
        return out

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

    def start_progress(self) -> None:
        """Plan the steps (:attr:`progress`) for these options and say when the machine is busy already."""
        models = ["nnU-Net default", "LUnet"] + ["Sauron"] * self.do_sauron
        b = self.budget
        self.progress = ProgressEstimate(plan_steps(models, ["Sauron"] * self.do_sauron, self.do_sweep,
                                                    budget_scale(b.epochs, b.iterations, b.val_iterations)))
        busy = busy_machine()
        if busy:
            print(self.progress.advice(busy, b.epochs, b.iterations), flush=True)

    def _check_speed(self, key: str) -> None:
        """After training step ``key``: on a slow machine (:meth:`ProgressEstimate.slow_step`), the advice, once."""
        if self.progress is None or not self.progress.has(key):
            return
        self.progress.finish(time.perf_counter())
        slow = self.progress.slow_step(key)
        if slow:
            print(self.progress.advice(slow, self.budget.epochs, self.budget.iterations), flush=True)

    def _run_steps(self, start: float) -> Path:
        self.start_progress()
        self.create_dataset()
        self.plan()
        dense = self.train("nnU-Net default", "nnUNetTrainerBudget")
        self.train("LUnet", "nnUNetTrainerBudget", "nnUNetLUnetPlans")
        if self.do_sauron:
            sauron = self.train("Sauron", "nnUNetTrainerSauron", extra_env={"NNUNET_PRUNE_SAURON": DEMO_SAURON})
            self.export(sauron)
        for row in self.rows:
            self.predict(row)
        sweep = self.sweep(dense) if self.do_sweep else None
        t = self.step("Measuring parameters, MACs, CPU latency and held-out Dice", "measure")
        self.measure()
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
        """The results as text: budget, table (Markdown, or aligned plain text with ``markdown=False``), notes, the
        sweep's critical point (``sweep``: its report, or None) and the total wall time ``total`` (seconds)."""
        lines = [f"# nnunet-prune demo ({self.dataset} data, 2d, fold 0)", "",
                 f"Training budget: {self.budget.epochs} epochs x {self.budget.iterations} iterations on the CPU "
                 f"(nnU-Net's default is 1000 x 250): the numbers show mechanics and trade-offs, not final accuracy. "
                 f"Seed {self.seed} (--seed): a rerun with it gives the same Dice; another seed shows how much of a "
                 f"difference between models is chance.",
                 "", self.table() if markdown else self.text_table(), "",
                 "CPU ms/patch: one patch, batch 1, the models timed interleaved, median of at least 10 runs (± "
                 "half the interquartile range). Dice: "
                 "held-out test cases, foreground mean and per class.", ""]
        notes = self.notes(sweep)
        if notes:
            lines += [("- " if markdown else "* ") + n for n in notes] + [""]
        if sweep:
            crit = sweep["critical_point"]
            lines.append("Magnitude-pruning sweep of the default model (proxy Dice = pruned vs unpruned predictions):")
            if crit:
                lines.append(f"critical point tau = {crit['tau']:.4g}: {crit['sparsity']:.1%} of the weights zeroed at "
                             f"proxy Dice {crit['proxy_dice']:.3f} (threshold {sweep['threshold']}); no speed-up "
                             f"from zeros alone; details in magnitude_sweep/summary.md.")
            else:
                lines.append(f"no tau kept the proxy Dice >= {sweep['threshold']}; see magnitude_sweep/summary.md.")
            lines.append("")
        lines.append(f"Total wall time: {total / 60:.1f} min. Working folder: {self.workdir}")
        return "\n".join(lines) + "\n"
