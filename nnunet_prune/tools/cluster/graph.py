"""A plan of jobs: each job one command of a kind (planning, training, prediction, measurement) that needs other
jobs to have succeeded first (Slurm's ``afterok``), and whether its result is already there. The same plan is
submitted to Slurm (:mod:`.submission`) or written as an ordered shell script (:func:`write_script`, for LSF/PBS
sites and for people who submit by hand). Nothing here imports torch, nnU-Net or submitit."""

from __future__ import annotations

import shlex
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from nnunet_prune import NnUNetPruneError

#: the kinds of job, each with its own scheduler options (the common ones, then the kind's own)
KINDS = ("planning", "training", "prediction", "measurement")
#: variables a job takes from the environment of the command that planned it (nnU-Net's folders, this package's
#: settings), whatever the scheduler exports; the node's own variables (CUDA_VISIBLE_DEVICES, SLURM_*) stay
CARRIED_PREFIXES = ("nnUNet_", "NNUNET_PRUNE_")


def carried_environment(env: Mapping[str, str]) -> dict[str, str]:
    """The variables of ``env`` a job carries (:data:`CARRIED_PREFIXES`)."""
    return {k: v for k, v in sorted(env.items()) if k.startswith(CARRIED_PREFIXES)}


@dataclass(frozen=True)
class Job:
    """One job: ``name`` (unique in its graph, e.g. ``seed 0: dense train fold 0``), its ``kind`` (:data:`KINDS`),
    the ``command`` it runs (argv), the names of the jobs it needs first (``after``), whether its result exists
    (``done``: it is not run again), and where its output goes (``log``)."""

    name: str
    kind: str
    command: tuple[str, ...]
    after: tuple[str, ...] = ()
    done: bool = False
    log: Path | None = None

    @property
    def slug(self) -> str:
        """The name as a file name (``seed_0-dense_train_fold_0``)."""
        return "".join(c if c.isalnum() or c in "-_." else "_" for c in self.name.replace(": ", "-"))


@dataclass
class JobGraph:
    """The jobs of one plan in an order where every job comes after those it needs; ``env``: the variables every job
    carries (:func:`carried_environment`), ``cwd``: where the commands run, ``title``: what the plan is (a line)."""

    jobs: list[Job]
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path = Path(".")
    title: str = ""

    def __post_init__(self):
        seen: set[str] = set()
        for job in self.jobs:
            if job.kind not in KINDS:
                raise ValueError(f"job {job.name!r}: unknown kind {job.kind!r} (one of {', '.join(KINDS)})")
            missing = [a for a in job.after if a not in seen]
            if job.name in seen or missing:
                raise ValueError(f"job {job.name!r}: " + (f"needs {missing}, which do not come before it"
                                                         if missing else "named twice"))
            seen.add(job.name)

    def __getitem__(self, name: str) -> Job:
        for job in self.jobs:
            if job.name == name:
                return job
        raise NnUNetPruneError(f"No job {name!r} in this plan; its jobs: {', '.join(j.name for j in self.jobs)}.")

    def pending(self) -> list[Job]:
        """The jobs whose result is not there yet, in order."""
        return [j for j in self.jobs if not j.done]

    def kinds(self) -> list[str]:
        """The kinds of the pending jobs, in :data:`KINDS` order."""
        wanted = {j.kind for j in self.pending()}
        return [k for k in KINDS if k in wanted]


def _number(graph: JobGraph) -> dict[str, int]:
    return {j.name: i + 1 for i, j in enumerate(graph.pending())}


def script_text(graph: JobGraph, footer: Sequence[Sequence[str]] = ()) -> str:
    """The pending jobs of ``graph`` as a bash script that runs them one after another (``set -e``: it stops at the
    first failure; rerun it, finished steps are reused), each under a comment that numbers it, names its kind and the
    jobs it needs (``after``), for a scheduler's dependencies; ``footer``: commands (argv) run after every job."""
    numbers = _number(graph)
    lines = ["#!/usr/bin/env bash", f"# {graph.title}", f"# written by nnunet-prune, {time.strftime('%Y-%m-%d %H:%M')}"
             f": {len(numbers)} job(s) in an order that respects their dependencies.",
             "#", "# Run it as it is (one job after another), or submit each job to your scheduler with the jobs",
             "# it needs as dependencies, e.g. LSF: bsub -w 'done(job_3)'; PBS: qsub -W depend=afterok:<id>.",
             "# Every job may be run again: it reuses what is finished and continues a training with --c.",
             "set -euo pipefail", f"cd {shlex.quote(str(graph.cwd))}"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in graph.env.items()]
    for job in graph.pending():
        needs = [f"job_{numbers[a]}" for a in job.after if a in numbers]
        lines += ["", f"# job_{numbers[job.name]}: {job.name} ({job.kind}"
                  + (f"; after {', '.join(needs)})" if needs else ")"), shlex.join(job.command)]
    if footer:
        lines += ["", "# after every job"] + [shlex.join(c) for c in footer]
    return "\n".join(lines) + "\n"


def write_script(graph: JobGraph, path: Path, footer: Iterable[Sequence[str]] = ()) -> Path:
    """Write :func:`script_text` to ``path`` (executable); returns it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(script_text(graph, list(footer)))
    path.chmod(0o755)
    return path
