"""The benchmark as a plan of jobs, for a cluster (``--executor slurm``) or a script (``--executor commands``): one
planning job, a training job per method and fold (a method that starts from or learns from the dense model after
every dense fold; magnitude after the sweep of the dense model), a prediction job per method that is exported or
predicts a test set, a measurement job per method. Every job runs ``nnunet-prune benchmark-step -o OUT STEP``,
which does exactly that step of the local benchmark (:meth:`BenchmarkJobs.run`) with its own state file; once every
job is done, the local benchmark run in the same folder reuses everything and writes the same table."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, fields
from pathlib import Path

from nnunet_prune import NnUNetPruneError
from nnunet_prune.tools.benchmark.benchmark import Benchmark
from nnunet_prune.tools.benchmark.measure import stored_measurement
from nnunet_prune.tools.benchmark.methods import DENSE, MethodSpec
from nnunet_prune.tools.benchmark.rows import MethodResult
from nnunet_prune.tools.benchmark.settings import JOB_STEPS, STATE, BenchmarkSettings
from nnunet_prune.tools.benchmark.state import RunState
from nnunet_prune.tools.cluster.graph import Job, JobGraph, carried_environment
from nnunet_prune.tools.commands import package_command
from nnunet_prune.tools.runner import StepFailed, StepRunner

#: the benchmark's folder of its jobs' files (ledger, records, logs, step times, the script)
JOBS = "jobs"
PLAN = "plan"


def stored_settings(out: Path) -> BenchmarkSettings:
    """The settings a benchmark planned as jobs stored in ``out`` (its state's ``run_settings``).

    Raises:
        NnUNetPruneError: ``out`` holds no benchmark planned as jobs."""
    data = RunState(out / STATE).load().get("run_settings")
    if not data:
        raise NnUNetPruneError(f"{out} holds no benchmark planned as jobs (no run_settings in {out / STATE}): "
                               f"run `nnunet-prune benchmark ... -o {out} --executor slurm|commands` first.")
    known = {f.name for f in fields(BenchmarkSettings)}
    return BenchmarkSettings(**{k: v for k, v in data.items() if k in known})


class BenchmarkJobs:
    """The jobs of ``bench`` (a :class:`~nnunet_prune.tools.benchmark.benchmark.Benchmark` whose inputs were
    checked): :meth:`graph` plans them, :meth:`run` does one of them (in the job)."""

    def __init__(self, bench: Benchmark):
        self.bench, self.s = bench, bench.s

    def save_settings(self) -> None:
        """Store the whole settings in the benchmark's state (``run_settings``), for the jobs."""
        self.bench.state.load()
        self.bench.state.save(run_settings=asdict(self.s), settings=self.s.identity())

    def _steps(self) -> list[tuple[Job, Callable[[], None]]]:
        """(job, what it does) of every step, in an order where each comes after what it needs."""
        b, s, out = self.bench, self.s, self.bench.out
        b.use_seed(s.seed)

        def job(name: str, kind: str, after: list[str], done: bool) -> Job:
            return Job(name, kind, tuple(package_command("benchmark-step", "-o", str(out), name)), tuple(after),
                       done)

        steps = [(job(PLAN, "planning", [], b.pipeline.planned(b.methods)), b.plan)]
        for seed in s.seed_list():
            b.use_seed(seed)
            pipe, p = b.pipeline, f"seed {seed}: "
            dense_folds = [f"{p}{DENSE} train fold {f}" for f in s.folds] if DENSE in s.methods else []
            for m in b.methods:
                after = [PLAN] + (dense_folds if m.needs_dense else []) + ([p + "magnitude sweep"] if m.magnitude
                                                                            else [])
                trains = [f"{p}{m.name} train fold {f}" for f in s.folds]
                steps += [(job(t, "training", after, pipe.trained(m, f)), self._train(seed, m, f))
                          for t, f in zip(trains, s.folds)]
                if m.name == DENSE and any(x.magnitude for x in b.methods):
                    steps.append((job(p + "magnitude sweep", "prediction", trains,
                                      (pipe.layout.sweep / "sweep.json").is_file()), self._sweep(seed)))
                last = trains
                if m.export or s.test_images or s.int8:
                    steps.append((job(f"{p}{m.name} predict", "prediction", trains, pipe.finished(m)),
                                  self._finish(seed, m)))
                    last = [f"{p}{m.name} predict"]
                measured = stored_measurement(MethodResult(m.name, m.label, m.trainer, m.plans),
                                              b.measurement_file(m), s, pipe.measured_folder(m))
                steps.append((job(f"{p}{m.name} measure", "measurement", last, measured), self._measure(seed, m)))
        return steps

    def _train(self, seed: int, m: MethodSpec, fold) -> Callable[[], None]:
        return lambda: self._at(seed).train_method(m, [fold])

    def _sweep(self, seed: int) -> Callable[[], None]:
        return lambda: self._at(seed).sweep()

    def _finish(self, seed: int, m: MethodSpec) -> Callable[[], None]:
        return lambda: self._at(seed).finish_method(m)

    def _measure(self, seed: int, m: MethodSpec) -> Callable[[], None]:
        def measure():
            self._at(seed).finish_method(m)  # all reused: the row gets the test set's Dice first
            self.bench.measure(m)
        return measure

    def _at(self, seed: int):
        self.bench.use_seed(seed)
        return self.bench.pipeline

    def graph(self) -> JobGraph:
        """The plan: every step as a :class:`~nnunet_prune.tools.cluster.graph.Job` (``done`` where its result is
        there), run in the output folder with the variables of the benchmark's environment."""
        b = self.bench
        return JobGraph([j for j, _ in self._steps()], carried_environment(b.user_env), b.out,
                        f"nnunet-prune benchmark of {len(b.methods)} method(s) on {self.s.dataset} "
                        f"{self.s.configuration}, folds {self.s.folds}, seeds {self.s.seed_list()}: output {b.out}")

    def run(self, name: str) -> None:
        """Do step ``name`` here, its step times in its own state file (``jobs/steps/<step>.json``), no command
        appended to ``commands.sh`` (the job's log holds it), and nothing else of the folder written.

        Raises:
            NnUNetPruneError: no such step, or the step failed (StepFailed)."""
        steps = dict((j.name, (j, act)) for j, act in self._steps())
        if name not in steps:
            raise NnUNetPruneError(f"No step {name!r} in this benchmark; its steps: {', '.join(steps)}.")
        job, act = steps[name]
        self.bench.state = RunState(self.bench.out / JOB_STEPS / f"{job.slug}.json", tool=None)
        self.bench.state.load()  # a requeued job adds to the times of its earlier attempts
        self.bench.commands_file = None
        try:
            act()
        finally:  # also when Slurm's signal interrupts it: a requeued training adds to the time so far
            self.bench.state.save()

    def collect(self) -> Path:
        """Once no job is queued or running: the local benchmark in the same folder, reusing what the jobs did and
        running nothing (a step no job finished is its method's failure: "rerun the command to resubmit"); writes
        the table like the local executor and returns ``benchmark.md``.

        Raises:
            NnUNetPruneError: a check of the benchmark failed, or planning is not done."""
        self.bench.runner_class = CollectRunner
        self.bench.measure_here = False
        return self.bench.run()


class CollectRunner(StepRunner):
    """The runner of :meth:`BenchmarkJobs.collect`: every step it is asked to run was not done by its job."""

    def run(self, method: str, step: str, cmd, extra_env=None) -> None:
        """Refuse: the step is the cluster's to do.

        Raises:
            StepFailed: always, saying how to resubmit it."""
        raise StepFailed(f"{step} was not done by its cluster job (its record: {JOBS}/records/); rerun the command "
                         f"to resubmit it")
