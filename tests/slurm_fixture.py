"""A real single-node Slurm cluster for tests: the session-scoped fixture ``slurm``.

The fixture starts ``scripts/local-slurm.sh start DIR`` in a fresh short directory under /tmp (MUNGE's and Slurm's
socket paths must stay under ~100 bytes), yields a :class:`LocalSlurm` and stops the cluster and removes the directory
at the end of the session. Nothing is put into ``os.environ``: tests add ``slurm.env`` (``SLURM_CONF``) to the
environment of the commands they run, e.g. ``subprocess.run(["sbatch", ...], env={**os.environ, **slurm.env})``.

The cluster: one node, partitions ``debug`` (default, no time limit) and ``short`` (5 minutes), no accounting
(``sacct`` fails), ``scontrol requeue`` restarts a job about 12 s later; see the script's header.

Without Slurm and MUNGE (``sbatch``, ``slurmctld``, ``munged``), or when the cluster does not start (it needs root),
tests using the fixture are skipped, except under ``CI=true`` where they fail: CI must not skip them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "local-slurm.sh"
NOT_INSTALLED = ("Slurm is not installed: apt-get install slurm-wlm munge (or run .ci/run, which installs it); "
                 "see README, 'Tests with Slurm'")


def _which(name: str) -> str | None:
    """``name``'s path: PATH first, then the sbin directories a non-root PATH often lacks."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/local/sbin")


def _unavailable(message: str) -> None:
    """Skip the test, or fail it when the environment variable CI is ``true``."""
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


class LocalSlurm:
    """A running cluster of ``scripts/local-slurm.sh``, kept in ``dir``."""

    partitions = ["debug", "short"]
    """The cluster's partitions; ``debug`` is the default."""

    def __init__(self, directory: Path):
        self.dir = directory
        """The cluster's directory: slurm.conf, MUNGE's and Slurm's state, sockets and logs (``log/*.log``)."""
        self.conf = directory / "slurm.conf"
        """The cluster's slurm.conf."""
        self.env = {"SLURM_CONF": str(self.conf)}
        """What to add to a subprocess's environment to point Slurm's commands at this cluster."""

    def squeue(self) -> dict[str, tuple[str, str]]:
        """The jobs in the queue (pending, running, completing...): job id -> (state, reason), e.g.
        ``{"3": ("PENDING", "Dependency")}``."""
        proc = subprocess.run(["squeue", "-h", "-o", "%i|%T|%r"], env={**os.environ, **self.env},
                              capture_output=True, text=True, timeout=60, check=True)
        jobs = {}
        for line in proc.stdout.splitlines():
            job, state, reason = line.split("|", 2)
            jobs[job] = (state, reason)
        return jobs

    def wait_idle(self, timeout: float = 60) -> None:
        """Wait until the queue is empty; TimeoutError (with what is left) after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while jobs := self.squeue():
            if time.monotonic() > deadline:
                raise TimeoutError(f"Slurm's queue is not empty after {timeout} s: {jobs}")
            time.sleep(0.5)


@pytest.fixture(scope="session")
def slurm() -> Iterator[LocalSlurm]:
    """A single-node Slurm cluster on localhost for the whole session (see this module's docstring)."""
    if not all(_which(name) for name in ("sbatch", "slurmctld", "munged")):
        _unavailable(NOT_INSTALLED)
    base = Path(tempfile.mkdtemp(prefix="slurm-", dir="/tmp"))
    try:
        try:
            proc = subprocess.run(["bash", str(SCRIPT), "start", str(base)], capture_output=True, text=True,
                                  timeout=180)
            failure = None if proc.returncode == 0 else f"exit code {proc.returncode}"
            stderr = proc.stderr
        except subprocess.TimeoutExpired as e:
            failure, stderr = "timed out after 180 s", e.stderr or ""
            stderr = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
        if failure:
            tail = "\n".join(stderr.splitlines()[-40:])
            _unavailable(f"scripts/local-slurm.sh start {base} failed ({failure}):\n{tail}")
        yield LocalSlurm(base)
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop", str(base)], capture_output=True, timeout=120)
        shutil.rmtree(base, ignore_errors=True)
