"""A plan of jobs on Slurm: :class:`Submission` submits what is neither finished nor queued (through submitit, one
job per step, ``afterok`` on the jobs it needs), prints the queue, waits with a line per finished job, and on a rerun
collects what finished, resubmits what failed or vanished and never submits a step twice while it is queued or
running (``jobs.json``, the ledger, records every job id). Before the first job: every check of
:func:`~.slurm.check_slurm`, and a probe job that proves the compute nodes see the folder and run this Python
(:meth:`Submission.probe`)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

from nnunet_prune import NnUNetPruneError
from nnunet_prune.tools.cluster.graph import Job, JobGraph
from nnunet_prune.tools.cluster.job import CommandJob, JobRecord
from nnunet_prune.tools.cluster.slurm import (
    ACTIVE_STATES,
    REQUEUE_SIGNAL,
    SIGNAL_DELAY_S,
    SlurmOptions,
    check_slurm,
    partition_time,
    queue,
    require_commands,
    slurm_command,
    time_minutes,
)

#: seconds the probe job may take before the jobs are submitted behind it (they then run only if it succeeds)
PROBE_WAIT_S = 120


def active_steps(folder: Path) -> list[str]:
    """The steps of the ledger in ``folder`` whose job is queued or running ([] without a ledger, or where Slurm's
    commands are not there to ask)."""
    try:
        ledger = json.loads((Path(folder) / "jobs.json").read_text())
    except (OSError, ValueError):
        return []
    if shutil.which("squeue") is None:
        return []
    known = queue(e["job_id"] for e in ledger.values())
    return [n for n, e in ledger.items() if known.get(e["job_id"], ("", ""))[0] in ACTIVE_STATES]


class Submission:
    """The jobs of ``plan()`` (called again for each look: which jobs are done is read from the files) on Slurm, with
    ``options``; its files in ``folder`` (``jobs.json``, ``records/``, ``logs/``, ``submitit/``); ``say``: one line
    per event; ``visible``: further folders the jobs read (nnU-Net's), checked from a node by :meth:`probe`."""

    def __init__(self, plan: Callable[[], JobGraph], folder: Path, options: SlurmOptions,
                 say: Callable[[str], None], visible: Sequence[Path] = ()):
        self.plan, self.folder, self.options, self.say = plan, Path(folder), options, say
        self.visible = [str(p) for p in visible]  # what the probe job checks a node sees, besides ``folder``
        self.ledger_file = self.folder / "jobs.json"

    # ------------------------------------------------------------------ what is where
    def ledger(self) -> dict:
        """Step name -> {job_id, kind, submitted, previous: earlier job ids} of every job submitted so far."""
        try:
            return json.loads(self.ledger_file.read_text())
        except (OSError, ValueError):
            return {}

    def _save(self, ledger: dict) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.ledger_file.with_name("jobs.json.tmp")
        tmp.write_text(json.dumps(ledger, indent=2))
        tmp.replace(self.ledger_file)

    def record(self, job: Job) -> JobRecord:
        """The record the job writes (its attempts)."""
        return JobRecord(self.folder / "records" / f"{job.slug}.json")

    def states(self) -> tuple[JobGraph, dict[str, tuple[str, str]]]:
        """The plan and, step name -> (state, detail): a Slurm state of a queued or running job (``PENDING``,
        ``RUNNING``, ...; detail: Slurm's reason), ``done`` (its result is there), ``new`` (never submitted), or
        ``failed`` (detail: how it ended, from Slurm and the job's record). Slurm is asked before the files are
        read, so a job that ends in between is done, never failed; a job still in the queue is not done yet.

        Raises:
            NnUNetPruneError: ``squeue`` failed."""
        ledger = self.ledger()
        known = queue(e["job_id"] for e in ledger.values())
        graph = self.plan()
        out = {}
        for job in graph.jobs:
            entry = ledger.get(job.name)
            if entry is not None and known.get(entry["job_id"], ("", ""))[0] in ACTIVE_STATES:
                out[job.name] = known[entry["job_id"]]
            elif job.done:
                out[job.name] = ("done", "")
            elif entry is None:
                out[job.name] = ("new", "")
            else:
                state = known.get(entry["job_id"], ("gone from the queue", ""))[0]
                attempts = self.record(job).read().get("attempts", [])
                last = attempts[-1] if attempts else {}
                detail = (f"job {entry['job_id']} {state.lower()}" + (f", {len(attempts)} attempt(s)" if attempts
                                                                      else ", never started")
                          + (f": {last.get('detail')}" if last.get("detail") else ""))
                out[job.name] = ("failed", detail)
        return graph, out

    # ------------------------------------------------------------------ submitting
    def submit(self) -> list[tuple[str, str]]:
        """Submit every job that is neither done nor queued/running (failed or vanished ones again), in the plan's
        order, each after the jobs it needs that are not done; returns (step, job id) of those submitted.

        Raises:
            NnUNetPruneError: a check failed (:func:`~.slurm.check_slurm`, :meth:`probe`; nothing was submitted),
                another command is submitting in the same folder, or sbatch refused a job (those submitted before
                it are named and recorded: a rerun goes on from there)."""
        require_commands()
        pending = self.plan().kinds()
        if not pending:
            return []
        check_slurm(self.options, pending)  # before anything is written
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / "jobs.lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise NnUNetPruneError(f"Another nnunet-prune command is submitting the jobs of {self.folder} right "
                                       f"now; run this one again when it is done.") from None
            return self._submit_locked()

    def _submit_locked(self) -> list[tuple[str, str]]:
        graph, states = self.states()
        todo = [j for j in graph.jobs if states[j.name][0] in ("new", "failed")]
        if not todo:
            return []
        gate = self.probe()
        ledger = self.ledger()
        submitted: list[tuple[str, str]] = []
        for job in todo:
            after = [ledger[a]["job_id"] for a in job.after if states[a][0] != "done" and a in ledger]
            if gate and not after:
                after = [gate]
            try:
                job_id = self._submit_one(graph, job, after)
            except NnUNetPruneError as e:
                done = ", ".join(f"{n} (job {i})" for n, i in submitted) or "none"
                raise NnUNetPruneError(f"{e} Submitted before it: {done}; rerun the command to submit the rest.") \
                    from None
            entry = ledger.get(job.name, {})
            ledger[job.name] = {"job_id": job_id, "kind": job.kind, "after": after,
                                "submitted": time.strftime("%Y-%m-%d %H:%M:%S"),
                                "previous": entry.get("previous", []) + ([entry["job_id"]] if entry else [])}
            self._save(ledger)
            states[job.name] = ("PENDING", "")
            submitted.append((job.name, job_id))
        return submitted

    def _submit_one(self, graph: JobGraph, job: Job, after: list[str]) -> str:
        import submitit

        options = self.options.options(job.kind)
        limit = options.pop("time", None) or partition_time(self.options.partition(job.kind))
        extra = {**options, "time": limit, "signal": f"{REQUEUE_SIGNAL}@{SIGNAL_DELAY_S}", "requeue": True,
                 "kill-on-invalid-dep": "yes"}
        if after:
            extra["dependency"] = "afterok:" + ":".join(after)
        executor = submitit.SlurmExecutor(folder=self.folder / "submitit", max_num_timeout=self.options.max_requeues)
        executor.update_parameters(
            job_name=f"nnunet-prune:{job.slug}"[:100], time=time_minutes(str(limit)) or 525600,
            signal_delay_s=SIGNAL_DELAY_S, stderr_to_stdout=True, additional_parameters=extra,
            setup=[f"export SUBMITIT_PREEMPT_SIGNAL={REQUEUE_SIGNAL}"])
        command = CommandJob(job.name, job.slug, job.command, graph.env, graph.cwd, self.folder / "logs",
                             self.record(job).path, self.options.max_requeues)
        try:
            return executor.submit(command).job_id
        except Exception as e:  # noqa: BLE001 -- submitit raises FailedJobError, CalledProcessError, ...
            said = " ".join(str(e).split())[-600:]
            raise NnUNetPruneError(f"sbatch refused the job {job.name!r}: {said}.") from None

    def probe(self, wait_s: float = PROBE_WAIT_S) -> str | None:
        """A job (with the training jobs' options but a 5-minute limit) that proves a compute node sees ``folder``
        and the ``visible`` folders and runs this Python with this package: it reads a token written here and
        writes it back. Returns None when it succeeded within ``wait_s`` seconds, else its job id
        (still queued: every job then starts after it, ``afterok``, so nothing runs where the folder is not seen).

        Raises:
            NnUNetPruneError: it ran and failed (the folder is not on a shared filesystem, or this Python cannot run
                there), with what it said."""
        probes = self.folder / "probe"
        probes.mkdir(parents=True, exist_ok=True)
        token = uuid.uuid4().hex
        ask, answer, log = probes / f"{token}.ask", probes / f"{token}.seen", probes / f"{token}.out"
        ask.write_text(token)
        code = (f"import pathlib, sys, nnunet_prune; a = pathlib.Path({str(ask)!r}); "
                f"gone = [p for p in {self.visible!r} if not pathlib.Path(p).is_dir()]; "
                f"gone and sys.exit('not visible on this node: ' + ', '.join(gone)); "
                f"pathlib.Path({str(answer)!r}).write_text(a.read_text())")
        opts = {k: v for k, v in self.options.options("training").items() if k != "time"}  # where trainings run
        cmd = ["sbatch", "--parsable", "--job-name=nnunet-prune:probe", "--time=5", f"--output={log}",
               *[f"--{k}" if v is True else f"--{k}={v}" for k, v in opts.items()], "--wrap",
               f"{sys.executable} -c {json.dumps(code)}"]
        proc = slurm_command(cmd)
        if proc.returncode != 0:
            raise NnUNetPruneError(f"sbatch refused the probe job: {proc.stderr.strip()}")
        job_id = proc.stdout.strip().split(";")[0]
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            state = queue([job_id]).get(job_id, ("gone", ""))[0]
            if state not in ACTIVE_STATES or answer.is_file():
                if not answer.is_file():
                    time.sleep(1)  # the file may arrive late on a network filesystem
                said = log.read_text(errors="replace").strip()[-800:] if log.is_file() else ""
                seen = answer.is_file()
                for f in (ask, answer, log):  # the probe's own files; its folder too when they were all in it
                    f.unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    probes.rmdir()
                if seen:
                    return None
                where = "it wrote nothing into " + str(probes) if not said else "it said: " + said
                raise NnUNetPruneError(
                    f"The probe job {job_id} ({state.lower()}) could not read and write {probes} with "
                    f"{sys.executable}; {where}. The output folder (and nnU-Net's folders) must be on a filesystem the "
                    f"compute nodes share, and this Python environment must be installed where they see it. Nothing "
                    f"else was submitted.")
            time.sleep(1)
        self.say(f"the probe job {job_id} has not run yet: every job waits for it (afterok)")
        return job_id

    # ------------------------------------------------------------------ following
    def summary(self) -> list[str]:
        """The jobs as ``squeue`` shows them (job id, state, kind, step, reason), done and failed ones counted.

        Raises:
            NnUNetPruneError: ``squeue`` failed."""
        graph, states = self.states()
        ledger = self.ledger()
        rows = [("JOBID", "STATE", "KIND", "STEP", "REASON")]
        for job in graph.jobs:
            state, detail = states[job.name]
            if state not in ("done", "new", "failed"):
                rows.append((ledger[job.name]["job_id"], state, job.kind, job.name,
                             "" if detail in ("None", "") else detail))
        counts = {k: sum(s == k for s, _ in states.values()) for k in ("done", "failed", "new")}
        width = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = ["  ".join(r[i].ljust(width[i]) for i in range(4)) + "  " + r[4] for r in rows] if len(rows) > 1 \
            else []
        lines.append(f"{len(rows) - 1} queued or running, {counts['done']} done, {counts['failed']} failed, "
                     f"{counts['new']} not submitted (of {len(graph.jobs)} steps)")
        return lines

    def wait(self, poll_s: float = 30.0, tries: int = 10) -> dict[str, tuple[str, str]]:
        """Until no job is queued or running: a line per job that finishes (or fails); returns the final states.
        A look at the queue that fails is said and tried again at the next poll.

        Raises:
            NnUNetPruneError: ``tries`` looks in a row failed."""
        seen = {n for n, (s, _) in self.states()[1].items() if s in ("done", "failed")}
        failures = 0
        while True:
            try:
                graph, states = self.states()
                failures = 0
            except NnUNetPruneError as e:
                failures += 1
                if failures >= tries:
                    raise
                self.say(f"could not look at the queue ({e}); trying again in {poll_s:.0f} s")
                time.sleep(poll_s)
                continue
            ledger = self.ledger()
            for job in graph.jobs:
                state, detail = states[job.name]
                if state in ("done", "failed") and job.name not in seen:
                    seen.add(job.name)
                    job_id = ledger.get(job.name, {}).get("job_id", "?")
                    self.say(f"{job.name}: done (job {job_id})" if state == "done"
                             else f"{job.name}: FAILED ({detail})")
            if not any(s not in ("done", "failed", "new") for s, _ in states.values()):
                return states
            time.sleep(poll_s)
