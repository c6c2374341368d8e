"""``nnunet-prune train-folds``: stock ``nnUNetv2_train`` for each fold of one trainer, here one fold after another,
on Slurm (a job per fold, requeued on its time limit or a preemption and continued with ``--c``), or written as a
script. Every fold's command is ``nnUNetv2_train D C F -tr T -p P ... --c``: nnU-Net continues from the fold's
latest checkpoint, or starts the training when there is none; a fold that is trained and validated is skipped."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from nnunet_prune.tools.cluster.graph import Job, JobGraph, carried_environment
from nnunet_prune.tools.commands import console_script

#: the folder of a model folder that holds train-folds' job files (ledger, records, logs, script)
JOBS = "nnunet_prune_jobs"


@dataclass
class FoldTraining:
    """What ``train-folds`` trains: the folds of ``trainer`` with ``plans`` on ``dataset`` / ``configuration``, on
    ``device``, with further ``nnUNetv2_train`` arguments ``extra`` (e.g. ``--npz``); ``folder``: the model folder
    (:func:`~nnunet_prune.nnunet.foldtraining.check_fold_training`)."""

    dataset: str
    configuration: str
    trainer: str
    plans: str
    folds: list
    device: str
    folder: Path
    extra: Sequence[str] = ()

    def trained(self, fold) -> bool:
        """Whether fold ``fold`` is trained and validated."""
        fd = self.folder / f"fold_{fold}"
        return (fd / "checkpoint_final.pth").is_file() and (fd / "validation" / "summary.json").is_file()

    def command(self, fold) -> list[str]:
        """The fold's ``nnUNetv2_train`` command (with ``--c``: continue or start)."""
        return [console_script("nnUNetv2_train"), self.dataset, self.configuration, str(fold), "-tr", self.trainer,
                "-p", self.plans, "-device", self.device, *self.extra, "--c"]

    def graph(self, env: Mapping[str, str] | None = None) -> JobGraph:
        """A training job per fold (``fold F``), none depending on another, run in the model folder (made by
        :func:`~nnunet_prune.nnunet.foldtraining.check_fold_training`'s caller before any job)."""
        env = os.environ if env is None else env
        jobs = [Job(f"fold {f}", "training", tuple(self.command(f)), (), self.trained(f)) for f in self.folds]
        return JobGraph(jobs, carried_environment(env), self.folder,
                        f"nnUNetv2_train of {self.trainer} / {self.plans} / {self.configuration} on {self.dataset}, "
                        f"folds {' '.join(map(str, self.folds))}: {self.folder}")


def train_here(graph: JobGraph, env: Mapping[str, str], say: Callable[[str], None]) -> None:
    """Run the pending jobs of ``graph`` here, one after another, their output streamed (the one subprocess runner).

    Raises:
        StepFailed: a fold's training failed (the folds after it are not started)."""
    from nnunet_prune.tools.runner import StepRunner

    runner = StepRunner({**env, **graph.env}, graph.cwd, echo=say)
    for job in graph.jobs:
        if job.done:
            say(f"{job.name}: trained and validated already (skipped)")
            continue
        say(f"{job.name}: training")
        runner.run(job.slug, "train", job.command)
        say(f"{job.name}: done")
