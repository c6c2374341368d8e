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
checkpoint size, CPU latency in PyTorch and every installed deployment runtime; GPU latency and memory on CUDA).

The methods are those registered (:mod:`.methods`, derived from :data:`nnunet_prune.nnunet.benchmarked.BENCHMARKED`)
and their distilled rows (``<method>_distill``: the same method learning from the dense model of the seed);
their steps are the shared :class:`~nnunet_prune.tools.benchmark.pipeline.Pipeline` (the demo is a preset of it),
every command through one :class:`~nnunet_prune.tools.runner.StepRunner`; this module orchestrates the
seeds, the parallel methods, failures and Ctrl-C, and the outputs (:mod:`.tables`, :mod:`.pareto`).

Outputs in ``OUT``: ``benchmark.csv`` and ``benchmark.md`` (one row per method, sorted by MACs; Dice per class),
``pareto.png`` (Dice against MACs, latency and parameters, the Pareto front drawn), ``maps/<method>.png`` (each
pruning method's width or branch map, first seed), ``commands.sh`` (every command exactly as run, with its
environment), ``seed_<S>/logs/`` (each step's output) and ``benchmark_state.json`` (the budget, the step wall times,
the measurements per seed). A rerun with the same options reuses every finished step and continues an interrupted
training with ``--c`` (Ctrl-C is reported as an interruption, not as a failure); a failed method is reported in
the table with its error and does not stop the others.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

from nnunet_prune import NnUNetPruneError
from nnunet_prune.tools.benchmark import tables
from nnunet_prune.tools.benchmark.measure import measure_int8, measure_method, store_measurement, stored_measurement
from nnunet_prune.tools.benchmark.methods import DENSE, METHOD_NAMES, METHODS, MethodSpec, method_spec, table_order
from nnunet_prune.tools.benchmark.pareto import dice_noise, pareto_front, plot_pareto
from nnunet_prune.tools.benchmark.pipeline import Layout, Narrator, Pipeline, run_environment
from nnunet_prune.tools.benchmark.rows import MEAN_FIELDS, MethodResult, aggregate_rows
from nnunet_prune.tools.benchmark.settings import JOB_STEPS, STATE, TOOL, BenchmarkSettings, check_inputs
from nnunet_prune.tools.benchmark.state import RunState
from nnunet_prune.tools.runner import INTERRUPTED_CODES, StepFailed, StepInterrupted, StepRunner

#: the names this module has always offered (the benchmark's pieces now live in the modules beside it)
__all__ = ["DENSE", "INTERRUPTED_CODES", "MEAN_FIELDS", "METHODS", "METHOD_NAMES", "STATE", "TOOL",
           "Benchmark", "BenchmarkSettings", "MethodResult", "MethodSpec", "StepFailed", "StepInterrupted",
           "aggregate_rows", "dice_noise", "method_spec", "pareto_front", "plot_pareto"]


class Benchmark:
    """A benchmark in the output folder ``output`` (see the module docstring); :meth:`run` does everything.

    ``log`` receives one line per event (default: print). :meth:`check` runs every input check before any work.
    The user's environment is read once, here; the steps get theirs from it (:func:`run_environment`).
    """

    #: the runner of every step's command (a test may run something else)
    runner_class: type[StepRunner] = StepRunner

    def __init__(self, settings: BenchmarkSettings, output: str | os.PathLike,
                 log: Callable[[str], None] | None = None):
        self.s = settings
        self.out = Path(output).expanduser().resolve()
        self.log = log or (lambda line: print(line, flush=True))
        self.methods = [method_spec(n) for n in table_order(settings.methods)]  # the dense model first
        self.user_env = dict(os.environ)
        self.seed = settings.seed  # the seed whose run is trained now (run_seed)
        #: the rows of the current seed (the table's rows, aggregated over the seeds, after the last run)
        self.rows = self.new_rows(self.seed)
        self.runs: dict[int, dict[str, MethodResult]] = {}  # seed -> that run's rows
        self.state = RunState(self.out / STATE, TOOL)
        self.commands_file: Path | None = self.out / "commands.sh"  # None in a cluster job (its log says it)
        self.measure_here = True  # False: only measurements stored by cluster jobs are used
        self.dataset_json: dict = {}
        self.pipeline: Pipeline | None = None  # the current seed's
        self._tag = ""  # "seed S: " before each progress line with several seeds
        self._stop = threading.Event()  # Ctrl-C: no step starts any more, a step that ends is "interrupted"
        self._dense_done = threading.Event()
        self._dense_ok = False
        self._start = time.perf_counter()

    def new_rows(self, seed: int) -> dict[str, MethodResult]:
        """Empty rows of every method for the run with seed ``seed``."""
        return {m.name: MethodResult(m.name, m.label, m.trainer, m.plans, seed=seed, distilled=m.distilled,
                                     student_of=m.student_of) for m in self.methods}

    def layout(self, seed: int) -> Layout:
        """Where the run with seed ``seed`` puts its files: ``OUT/seed_<S>`` (its nnUNet_results, predictions,
        exports, sweep and logs)."""
        return Layout(self.out, self.out / f"seed_{seed}", self.s.dataset, self.s.configuration)

    def model_folder(self, m: MethodSpec) -> Path:
        """The method's trained model folder in the current seed's results folder."""
        return self.layout(self.seed).model_folder(m)

    def check(self) -> None:
        """Every check that can be made before any work (:func:`~nnunet_prune.tools.benchmark.settings.
        check_inputs`); keeps the dataset's dataset.json.

        Raises:
            NnUNetPruneError: with what to change.
        """
        self.dataset_json = check_inputs(self.s, self.methods, self.out, self.user_env)

    def say(self, text: str) -> None:
        """One progress line with the time since the start."""
        elapsed = time.perf_counter() - self._start
        self.log(f"[{int(elapsed // 60):3d}:{int(elapsed % 60):02d}] {self._tag}{text}")

    # ------------------------------------------------------------------ the runs
    def runner(self, seed: int, log_dir: Path, note_prefix: str) -> StepRunner:
        """The runner of the steps of seed ``seed``'s run (its results folder and seed in the environment), their
        logs in ``log_dir``, every command in ``commands.sh``."""
        env = run_environment(self.user_env, self.s, seed, self.layout(seed).results)
        return self.runner_class(env, self.out, log_dir=log_dir, commands=self.commands_file,
                                 note_prefix=note_prefix, stop=self._stop)

    def new_pipeline(self, seed: int, rows: dict[str, MethodResult]) -> Pipeline:
        """The steps of seed ``seed``'s run, filling ``rows``; planning logs in ``OUT/logs``."""
        layout = self.layout(seed)
        return Pipeline(self.s, layout, self.runner(seed, layout.logs, f"seed {seed}, "), self.state,
                        Narrator(self.say, self.s), rows, self.dataset_json, prefix=f"seed {seed}: ",
                        plan_runner=self.runner(seed, self.out / "logs", ""))

    def plan(self) -> None:
        """Plan (and preprocess) what is missing (:meth:`Pipeline.plan`), with the first seed's environment."""
        self.new_pipeline(self.s.seed, self.rows).plan(self.methods)

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
        record_files(self.out, TOOL, [])  # the manifest at once: from now on the folder is recognisably a benchmark
        self.state.load()
        self.state.merge_steps(sorted((self.out / JOB_STEPS).glob("*.json")))  # the step times of cluster jobs
        self.state.data["settings"] = json.loads(json.dumps(self.s.identity()))
        self.state.data.setdefault("steps", {})
        self.state.data.pop("interrupted", None)
        try:
            with open(self.out / "commands.sh", "a") as f:
                f.write(f"# nnunet-prune benchmark, {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
            self._save_state()
            seeds = self.s.seed_list()
            self.say(f"benchmark of {len(self.methods)} method(s) on {self.s.dataset} {self.s.configuration}, folds "
                     f"{self.s.folds}, {self.s.epochs} epochs x {self.s.iterations} iterations, "
                     + (f"seed {seeds[0]}" if len(seeds) == 1 else f"{len(seeds)} seeds ({seeds[0]}-{seeds[-1]})")
                     + f", device {self.s.device}, " + (f"{self.s.jobs} job(s) at a time" if self.s.executor == "local"
                                                        else f"steps run by {self.s.executor} jobs")
                     + f"; output {self.out}")
            self.plan()
            for seed in seeds:
                self.run_seed(seed)
            self._tag = ""
            self.rows = {m.name: aggregate_rows({s: self.runs[s][m.name] for s in seeds}) for m in self.methods}
            self.state.data["total_seconds"] = round(time.perf_counter() - self._start, 1)
            self._save_state()
            return self.write()
        except KeyboardInterrupt:
            self._stop.set()
            self._tag = ""
            self.state.data["interrupted"] = time.strftime("%Y-%m-%d %H:%M:%S")
            self._save_state()
            self.say("interrupted; rerun the same command to continue (finished steps are reused, an interrupted "
                     "training continues with --c)")
            raise
        finally:
            record_files(self.out, TOOL, [p for p in self.out.rglob("*")
                                          if p.is_file() and "nnUNet_results" not in p.parts])

    def run_seed(self, seed: int) -> None:
        """The run of every method with seed ``seed`` in ``OUT/seed_<seed>``: train (``jobs`` methods at a time;
        the dense model first, the methods that start or learn from it wait for it), export, predict and evaluate,
        then measure one at a time; its rows go to :attr:`runs`.

        Raises:
            KeyboardInterrupt: Ctrl-C (the steps that were running end as "interrupted")."""
        self.use_seed(seed)
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
                self.measure(m)
            except Exception as e:  # noqa: BLE001
                self.rows[m.name].status, self.rows[m.name].error = "failed", f"measuring: {e}"
            self._save_state()

    def run_method(self, m: MethodSpec) -> None:
        """Train (after the dense model where needed), export, predict and evaluate one method; a failure is
        recorded in its row, never raised. Ctrl-C (:class:`StepInterrupted`, or any step after it) marks the row
        "interrupted", stops the benchmark (no step starts any more) and is raised on.

        Raises:
            KeyboardInterrupt: the method's step was interrupted."""
        row = self.rows[m.name]
        try:
            if self._stop.is_set():
                raise StepInterrupted(f"{m.name}: not started (interrupted)")
            if m.needs_dense:  # starts from it or learns from it
                self._dense_done.wait()
                if self._stop.is_set():
                    raise StepInterrupted(f"{m.name}: not started (interrupted)")
                if not self._dense_ok:
                    raise StepFailed("needs the dense model, whose training failed")
            self.pipeline.train_method(m)
            if m.name == DENSE:
                self._dense_ok = True
                self._dense_done.set()
            self.pipeline.finish_method(m)
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

    def use_seed(self, seed: int) -> None:
        """Make seed ``seed``'s run the current one: its empty rows (in :attr:`runs`) and its pipeline."""
        self.seed = seed
        self.rows = self.runs[seed] = self.new_rows(seed)
        self.pipeline = self.new_pipeline(seed, self.rows)

    def measurement_file(self, m: MethodSpec) -> Path:
        """Where the current seed's measurement of ``m`` is stored (``seed_<S>/measurements/<method>.json``)."""
        return self.pipeline.layout.run / "measurements" / f"{m.name}.json"

    def measure(self, m: MethodSpec) -> None:
        """Parameters, MACs, checkpoint size, latencies (and validation Dice without a test set) of a trained method
        (its export where it is measured exported), averaged over its folds; its map picture copied to ``maps/``
        (first seed): :func:`~nnunet_prune.tools.benchmark.measure.measure_method`. Stored in
        :meth:`measurement_file` and reused from there with the same folds, device, repeats, runtimes and
        checkpoints.

        Raises:
            StepFailed: nothing stored and :attr:`measure_here` is False (collecting what cluster jobs did)."""
        row, file, measured = self.rows[m.name], self.measurement_file(m), self.pipeline.measured_folder(m)
        if stored_measurement(row, file, self.s, measured):
            self.say(f"{m.name}: measured before (reused: {file.relative_to(self.out)})")
            return
        if not self.measure_here:
            raise StepFailed(f"not measured by its cluster job ({file.relative_to(self.out)} is missing); rerun the "
                             f"command to resubmit it")
        self.say(f"{m.name}: measuring (parameters, MACs, latency)")
        before = asdict(row)
        measure_method(row, self.pipeline.layout.model_folder(m), measured,
                       self.s, maps=self.out / "maps" if self.seed == self.s.seed else None, name=m.name)
        if self.s.int8:
            measure_int8(row, self.pipeline.layout.int8(m), self.s)
        if self.s.executor == "slurm":
            import socket

            row.notes.append(f"latency measured on node {socket.gethostname()} (a Slurm job): compare it with "
                             f"latencies measured on the same kind of node")
        store_measurement(row, before, file, self.s, measured)

    def _save_state(self) -> None:
        self.state.save(rows={k: asdict(v) for k, v in self.rows.items()},
                        runs={str(seed): {k: asdict(v) for k, v in rows.items()} for seed, rows in self.runs.items()})

    # ------------------------------------------------------------------ outputs
    def sorted_rows(self) -> list[MethodResult]:
        """Rows that worked sorted by MACs (then parameters), failed ones last; a distilled row right after its
        student method's row when both worked or both did not (each student shown with and without its teacher),
        else in its own place."""
        ok = [r for r in self.rows.values() if r.status == "ok" and r.macs is not None]
        rest = [r for r in self.rows.values() if r not in ok]
        out = []
        for group in (sorted(ok, key=lambda r: (r.macs, r.parameters or 0)), rest):
            names = {r.name for r in group}
            follow = {r.student_of: r for r in group if r.student_of in names}  # one distilled row per student
            for r in group:
                if r not in follow.values():
                    out += [r] + ([follow[r.name]] if r.name in follow else [])
        return out

    def write(self) -> Path:
        """``benchmark.csv``, ``benchmark.md`` (:mod:`.tables`) and ``pareto.png`` (:mod:`.pareto`); returns the
        Markdown file."""
        rows = self.sorted_rows()
        classes = tables.classes_of(rows)  # the dataset's label order
        tables.write_csv(rows, classes, self.out / "benchmark.csv")
        md = self.out / "benchmark.md"
        md.write_text(tables.markdown(self.s, rows, classes, self.rows.get(DENSE), self.methods, self.state.data))
        try:
            plot_pareto(rows, self.out / "pareto.png")
        except Exception as e:  # noqa: BLE001 -- a picture must not cost the table
            self.say(f"could not draw pareto.png: {type(e).__name__}: {e}")
        self.say(f"wrote {md}, benchmark.csv, pareto.png")
        return md
