"""What runs inside a Slurm job: :class:`CommandJob` runs one job's command through the package's one subprocess
runner and records each attempt in the job's record (:class:`JobRecord`, a JSON file only the job writes). submitit
calls it on the node; when Slurm signals the time limit or a preemption (:data:`~.slurm.REQUEUE_SIGNAL`), submitit
calls :meth:`CommandJob.checkpoint`, which requeues the same command (it continues where the files say: nnU-Net's
``--c``) until :attr:`CommandJob.max_requeues` requeues were spent."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from nnunet_prune import NnUNetPruneError

#: exit codes of a command that a scheduler's signal ended: the requeue signal or SIGTERM (killed by it, or 128 + its
#: number), or 130 (``nnunet-prune benchmark-step`` turns both into an interruption)
SIGNALLED = (-signal.SIGUSR1, 128 + signal.SIGUSR1, -signal.SIGTERM, 128 + signal.SIGTERM, 128 + signal.SIGINT)
#: seconds a job waits, after its command ended by the requeue signal, for submitit's handler to requeue it
HANDLER_WAIT_S = 30


class JobRecord:
    """The record of one job (``<name>.json``): its name, command and attempts (Slurm job id, restart count, host,
    start and end times, outcome: ``running``, ``done``, ``failed``, ``requeued``, ``killed``: ended without a word,
    e.g. preempted with Slurm's own requeue). Written by the job only (a
    temporary file, then a rename); read by the submitting command."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def read(self) -> dict:
        """The record ({} when there is none or it cannot be read)."""
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def _write(self, data: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(self.path)

    def start(self, name: str, command: Sequence[str]) -> int:
        """A new attempt of job ``name`` begins here (the Slurm job id and restart count from the environment);
        returns its number (1, 2, ...)."""
        data = self.read() or {"name": name, "command": list(command), "attempts": []}
        if data["attempts"] and data["attempts"][-1]["outcome"] == "running":
            data["attempts"][-1].update(outcome="killed", detail="ended without a word: preempted, its node failed "
                                                                 "or it was killed (Slurm requeued it)")
        data["attempts"].append({"job_id": os.environ.get("SLURM_JOB_ID"), "host": socket.gethostname(),
                                 "restart_count": int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0),
                                 "started": time.strftime("%Y-%m-%d %H:%M:%S"), "outcome": "running"})
        self._write(data)
        return len(data["attempts"])

    def end(self, outcome: str, detail: str = "") -> None:
        """The current attempt ends with ``outcome`` (``done``, ``failed``, ``requeued``) and ``detail``."""
        data = self.read()
        if not data.get("attempts"):
            return
        last = data["attempts"][-1]
        if last["outcome"] != "running":
            return  # the requeue handler already said how it ended
        last.update(outcome=outcome, detail=detail[-2000:], ended=time.strftime("%Y-%m-%d %H:%M:%S"))
        self._write(data)

    def requeues(self) -> int:
        """How often the job was requeued so far."""
        return sum(a["outcome"] == "requeued" for a in self.read().get("attempts", []))


class CommandJob:
    """One job's command (``command``, run in ``cwd`` with the node's environment plus ``env``; its output in
    ``<logs>/<slug>.attemptN.log``), recorded in ``record`` (:class:`JobRecord`). A submitit checkpointable: Slurm's
    requeue signal requeues it (:meth:`checkpoint`) at most ``max_requeues`` times; its command is the same each
    time and continues from the files (a training with ``--c``).

    Raises (when called):
        NnUNetPruneError: the command failed (the job fails; jobs that need it are cancelled by Slurm), or the job
            was requeued more than ``max_requeues`` times."""

    def __init__(self, name: str, slug: str, command: Sequence[str], env: Mapping[str, str], cwd: Path,
                 logs: Path, record: Path, max_requeues: int):
        self.name, self.slug, self.command, self.env = name, slug, list(command), dict(env)
        self.cwd, self.logs, self.record, self.max_requeues = Path(cwd), Path(logs), Path(record), max_requeues

    def __call__(self) -> str:
        from nnunet_prune.tools.runner import StepFailed, StepInterrupted, StepRunner

        record = JobRecord(self.record)
        attempt = record.start(self.name, self.command)
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
        if restarts > self.max_requeues:
            message = f"{self.name}: requeued {restarts} times, more than --max-requeues {self.max_requeues}"
            record.end("failed", message)
            raise NnUNetPruneError(message)
        runner = StepRunner({**os.environ, **self.env}, self.cwd, log_dir=self.logs)
        try:
            runner.run(self.slug, f"attempt{attempt}", self.command)
        except (StepFailed, StepInterrupted) as e:
            if not any(f"exit code {c})" in str(e) or f"exit code {c};" in str(e) for c in SIGNALLED):
                record.end("failed", str(e))
                raise
            # the scheduler's signal reached this process too: submitit's handler requeues it (SystemExit) ...
            time.sleep(HANDLER_WAIT_S)
            # ... unless it was SIGTERM (a preemption or scancel: Slurm requeues or ends the job itself)
            record.end("killed", f"ended by the scheduler's signal ({e})")
            raise NnUNetPruneError(f"{self.name}: ended by the scheduler's signal") from None
        except BaseException as e:  # SystemExit from submitit's requeue handler, Ctrl-C, a kill
            record.end("failed", f"{type(e).__name__}: {e}")
            raise
        record.end("done")
        return "done"

    def checkpoint(self):
        """submitit's hook on the requeue signal: the same job again (its command continues from the files), or None
        (not requeued: the job fails) once ``max_requeues`` requeues were spent. The attempt is recorded as
        ``requeued`` either way it goes on."""
        import submitit

        record = JobRecord(self.record)
        spent = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
        if spent >= self.max_requeues:
            record.end("failed", f"signalled (time limit or preemption) after {spent} requeue(s): --max-requeues "
                                 f"{self.max_requeues} spent, not requeued")
            return None
        record.end("requeued", f"signalled (time limit or preemption); requeue {spent + 1} of at most "
                               f"{self.max_requeues}")
        return submitit.helpers.DelayedSubmission(self)
