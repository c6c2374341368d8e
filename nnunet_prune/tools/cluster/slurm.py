"""Slurm, asked through its own commands: the ``sbatch`` options of each kind of job (:class:`SlurmOptions`), every
check that can be made before a job is submitted (:func:`check_slurm`: the commands, submitit, the partitions,
``sbatch --test-only`` for the options of each kind), and the queue (:func:`queue`: ``squeue``). Submitting is
submitit's (:mod:`.submission`). Nothing here imports torch or nnU-Net."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from nnunet_prune import NnUNetPruneError
from nnunet_prune.tools.cluster.graph import KINDS

#: the options users pass (``--partition`` ...) -> sbatch's long option
OPTIONS = {"partition": "partition", "time": "time", "gpus": "gpus", "cpus": "cpus-per-task", "mem": "mem",
           "account": "account", "qos": "qos"}
#: the signal Slurm sends a job before its time limit (and ``scancel --signal`` for a test): submitit's handler
#: then requeues the job, and its command continues where the files say (nnU-Net's ``--c``)
REQUEUE_SIGNAL = "USR1"
#: seconds before the time limit the signal comes (submitit's default)
SIGNAL_DELAY_S = 90
#: states of a job that is still going to run or is running
ACTIVE_STATES = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "COMPLETING",
                 "SUSPENDED", "RESIZING", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD"}
INSTALL_HINT = 'pip install "nnunet-prune[slurm]" (installs submitit)'


def time_minutes(value: str) -> int | None:
    """A Slurm time (``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``, ``D-HH:MM:SS``; ``UNLIMITED`` /
    ``INFINITE``: None) in whole minutes (at least 1).

    Raises:
        NnUNetPruneError: not a Slurm time."""
    text = value.strip().upper()
    if text in ("UNLIMITED", "INFINITE"):
        return None
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if not m:
        raise NnUNetPruneError(f"--time {value!r} is not a Slurm time (e.g. 90, 12:00:00 or 2-00:00:00).")
    days, a, b, c = (int(x) if x else None for x in m.groups())
    if days is not None:  # D-HH[:MM[:SS]]
        minutes = days * 1440 + a * 60 + (b or 0) + (1 if c else 0)
    elif c is not None:  # HH:MM:SS
        minutes = a * 60 + b + (1 if c else 0)
    else:  # MM or MM:SS
        minutes = a + (1 if b else 0)
    return max(1, minutes)


@dataclass
class SlurmOptions:
    """The ``sbatch`` options of the jobs: ``given`` maps a kind (:data:`KINDS`; ``""``: every kind) to
    {sbatch long option: value}; ``extra`` maps a kind (or ``""``) to further ``sbatch`` arguments as users write
    them (``--constraint=a100``, ``--exclusive``); a kind's own value wins over the common one. ``max_requeues``:
    how often a job may be requeued (time limit, preemption) before it counts as failed."""

    given: dict[str, dict[str, str]] = field(default_factory=dict)
    extra: dict[str, list[str]] = field(default_factory=dict)
    max_requeues: int = 3

    @classmethod
    def parse(cls, values: Mapping[str, Sequence[str] | None], extra: Sequence[str] = (), max_requeues: int = 3,
              kinds: Sequence[str] = KINDS) -> SlurmOptions:
        """From the command line: ``values`` maps a name of :data:`OPTIONS` to what was given, each ``VALUE`` (every
        kind) or ``KIND=VALUE``; ``extra``: ``--slurm-arg`` values, the same way (``training=--exclusive``);
        ``kinds``: the kinds of job the command has.

        Raises:
            NnUNetPruneError: an option given twice for the same kind, an unknown kind or one the command has no
                jobs of, a bad time, or a bad ``--max-requeues``."""
        out = cls(max_requeues=max_requeues)
        if max_requeues < 0:
            raise NnUNetPruneError(f"--max-requeues {max_requeues}: give 0 or more.")
        for name, given in values.items():
            for text in given or ():
                kind, value = _split_kind(text, f"--{name}", kinds)
                slot = out.given.setdefault(kind, {})
                if OPTIONS[name] in slot:
                    raise NnUNetPruneError(f"--{name} is given twice for {kind or 'every kind of job'}.")
                slot[OPTIONS[name]] = value
        for text in extra:
            kind, value = _split_kind(text, "--slurm-arg", kinds)
            if not value.startswith("-"):
                raise NnUNetPruneError(f"--slurm-arg {text!r}: give an sbatch option as sbatch takes it, e.g. "
                                       f"--slurm-arg=--constraint=a100 or --slurm-arg=training=--exclusive.")
            out.extra.setdefault(kind, []).append(value)
        for slot in out.given.values():
            if "time" in slot:
                time_minutes(slot["time"])  # a bad time is refused here, before Slurm is asked
        return out

    def options(self, kind: str) -> dict[str, str | bool]:
        """The sbatch options of a kind of job, {long option: value, or True for a flag}."""
        out: dict[str, str | bool] = {**self.given.get("", {}), **self.given.get(kind, {})}
        for arg in [*self.extra.get("", []), *self.extra.get(kind, [])]:
            key, _, value = arg.lstrip("-").partition("=")
            out[key] = value or True
        return out

    def arguments(self, kind: str) -> list[str]:
        """:meth:`options` as ``sbatch`` arguments."""
        return [f"--{k}" if v is True else f"--{k}={v}" for k, v in self.options(kind).items()]

    def asks_for_gpus(self, kind: str | None = None) -> bool:
        """Whether the jobs of ``kind`` (None: any kind) ask for a GPU (``--gpus``, an sbatch option naming
        ``gpu`` or ``gres``)."""
        kinds = KINDS if kind is None else [kind]
        return any("gpu" in k or "gres" in k for x in kinds for k in self.options(x))

    def partition(self, kind: str) -> str | None:
        """The partition of a kind of job (None: Slurm's default)."""
        value = self.options(kind).get("partition")
        return value if isinstance(value, str) else None


def _split_kind(text: str, option: str, kinds: Sequence[str]) -> tuple[str, str]:
    """(kind or "", value) of ``KIND=VALUE`` or ``VALUE``; an sbatch option (``--x=y``) is a value."""
    head, sep, rest = text.partition("=")
    if not sep or head.startswith("-"):
        return "", text
    if head not in KINDS:
        raise NnUNetPruneError(f"{option} {text!r}: {head!r} is not a kind of job; give VALUE, or KIND=VALUE with "
                               f"KIND one of {', '.join(kinds)}.")
    if head not in kinds:
        raise NnUNetPruneError(f"{option} {text!r}: this command has no {head} jobs (only {', '.join(kinds)}).")
    return head, rest


def slurm_command(cmd: Sequence[str], timeout: float = 60) -> subprocess.CompletedProcess:
    """Ask Slurm: run one of its commands (``sbatch``, ``squeue``, ...), its output captured as text. (Scheduler
    queries, not steps: the steps run through the one subprocess runner inside the jobs.)

    Raises:
        NnUNetPruneError: the command is not there or did not answer within ``timeout`` seconds."""
    try:
        return subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise NnUNetPruneError(f"`{' '.join(cmd)}` did not answer in {timeout:.0f} s: is the Slurm controller "
                               f"reachable from here (scontrol ping)?") from None
    except OSError as e:
        raise NnUNetPruneError(f"`{cmd[0]}` cannot run here ({e}): --executor slurm submits from a machine with "
                               f"Slurm's commands (a login node).") from None


def require_commands(names: Iterable[str] = ("sbatch", "squeue", "scontrol", "sinfo")) -> None:
    """Slurm's commands are on PATH and submitit is installed.

    Raises:
        NnUNetPruneError: which is missing, and what to do."""
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        raise NnUNetPruneError(f"{', '.join(missing)} not found on PATH: --executor slurm submits from a machine "
                               f"with Slurm's commands (a login node). Elsewhere, --executor commands writes the jobs "
                               f"as a script to submit by hand.")
    try:
        import submitit  # noqa: F401
    except ImportError:
        raise NnUNetPruneError(f"--executor slurm needs submitit: {INSTALL_HINT}.") from None


def partitions() -> tuple[list[str], str | None]:
    """(every partition, the default one or None), from ``sinfo``.

    Raises:
        NnUNetPruneError: ``sinfo`` failed."""
    proc = slurm_command(["sinfo", "-h", "-o", "%P"])
    if proc.returncode != 0:
        raise NnUNetPruneError(f"sinfo failed: {proc.stderr.strip() or proc.stdout.strip()}")
    names = [p.strip() for p in proc.stdout.split() if p.strip()]
    default = next((p.rstrip("*") for p in names if p.endswith("*")), None)
    return sorted({p.rstrip("*") for p in names}), default


def partition_time(partition: str | None) -> str:
    """The time a job of ``partition`` (None: the default one) gets when it asks for none: the partition's
    DefaultTime, else its MaxTime (``UNLIMITED`` when it has neither).

    Raises:
        NnUNetPruneError: Slurm could not be asked."""
    if partition is None:
        partition = partitions()[1]
    if partition is None:
        return "UNLIMITED"
    proc = slurm_command(["scontrol", "-o", "show", "partition", partition])
    fields = dict(f.split("=", 1) for f in proc.stdout.split() if "=" in f)
    for key in ("DefaultTime", "MaxTime"):
        value = fields.get(key, "NONE")
        if value not in ("NONE", "UNLIMITED", "INFINITE", ""):
            return value
    return "UNLIMITED"


def check_slurm(options: SlurmOptions, kinds: Iterable[str]) -> None:
    """Every check before a job of ``kinds`` is submitted with ``options``: Slurm's commands and submitit
    (:func:`require_commands`), each partition named exists, and Slurm accepts each kind's options (``sbatch
    --test-only``, nothing queued).

    Raises:
        NnUNetPruneError: what is wrong, in Slurm's words where Slurm refuses."""
    require_commands()
    known, default = partitions()
    kinds = list(kinds)
    for kind in kinds:
        part = options.partition(kind)
        if part is not None and part not in known:
            raise NnUNetPruneError(f"Unknown partition {part!r} for the {kind} jobs: this cluster has "
                                   f"{', '.join(known) or 'none'} (sinfo). Give --partition with one of them.")
    if default is None and any(options.partition(k) is None for k in kinds):
        raise NnUNetPruneError("This cluster has no default partition: give --partition.")
    for kind in kinds:
        args = options.arguments(kind)
        proc = slurm_command(["sbatch", "--test-only", *args, "--wrap", "true"])
        if proc.returncode != 0:
            said = " ".join((proc.stderr or proc.stdout).split())
            raise NnUNetPruneError(f"Slurm refuses the options of the {kind} jobs ({' '.join(args) or 'none'}): "
                                   f"{said}. Nothing was submitted.")


def queue(ids: Iterable[str]) -> dict[str, tuple[str, str]]:
    """Job id -> (state, reason) of those of ``ids`` the controller still knows (``squeue --states=all``: queued,
    running and recently ended jobs).

    Raises:
        NnUNetPruneError: ``squeue`` failed or did not answer."""
    wanted = set(ids)
    if not wanted:
        return {}
    proc = slurm_command(["squeue", "-h", "--me", "--states=all", "-o", "%i|%T|%r"])
    if proc.returncode != 0:
        raise NnUNetPruneError(f"squeue failed: {proc.stderr.strip() or proc.stdout.strip()}")
    out = {}
    for line in proc.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3 and parts[0] in wanted:
            out[parts[0]] = (parts[1], parts[2])
    return out
