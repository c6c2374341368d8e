"""The options of ``--executor`` shared by ``benchmark`` and ``train-folds`` (where the jobs run, the ``sbatch``
options given once or per kind of job, waiting), and following a Slurm submission on the terminal."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from nnunet_prune import NnUNetPruneError

#: option -> what it sets (sbatch's option)
SLURM_OPTIONS = {
    "partition": "partition (sbatch --partition)",
    "time": "time limit, e.g. 12:00:00 or 2-00:00:00 (sbatch --time; default: the partition's default, else its "
            "maximum)",
    "gpus": "GPUs (sbatch --gpus)",
    "cpus": "CPUs per job (sbatch --cpus-per-task)",
    "mem": "memory, e.g. 32G (sbatch --mem)",
    "account": "account (sbatch --account)",
    "qos": "quality of service (sbatch --qos)",
}


def add_executor_arguments(p, kinds: str) -> None:
    """Register ``--executor`` and the Slurm options on parser ``p``; ``kinds``: the kinds of job of the command,
    for the help."""
    g = p.add_argument_group(
        "where the jobs run",
        "--executor slurm submits every step as a Slurm job (pip install \"nnunet-prune[slurm]\"); a rerun of the "
        "same command collects what finished, resubmits what failed and submits nothing twice. Each Slurm option "
        f"is given once (every job) or per kind of job as KIND=VALUE, kinds: {kinds}; e.g. --gpus training=1 "
        "--time 04:00:00 --time training=2-00:00:00.")
    g.add_argument("--executor", choices=("local", "slurm", "commands"), default="local",
                   help="local: here (default); slurm: submit to Slurm; commands: write the jobs as an ordered shell "
                        "script with their dependencies (for LSF/PBS or submitting by hand)")
    for name, text in SLURM_OPTIONS.items():
        g.add_argument(f"--{name}", action="append", metavar="[KIND=]VALUE", help=text)
    g.add_argument("--slurm-arg", action="append", default=[], metavar="[KIND=]ARG",
                   help="any other sbatch option, e.g. --slurm-arg=--constraint=a100 (repeatable)")
    g.add_argument("--max-requeues", type=int, default=3,
                   help="how often a job is requeued after its time limit or a preemption, continuing with nnU-Net's "
                        "--c (default 3)")
    g.add_argument("--wait", action="store_true",
                   help="wait for the jobs, a line per finished job (default: submit, show the queue and exit)")
    g.add_argument("--poll", type=float, default=30.0, metavar="SECONDS",
                   help="seconds between looks at the queue with --wait (default 30)")


def slurm_options(args, kinds: Sequence[str] | None = None):
    """The :class:`~nnunet_prune.tools.cluster.slurm.SlurmOptions` of the command line (``kinds``: the kinds of job
    the command has; None: all); with another executor than slurm, any of them is refused.

    Raises:
        NnUNetPruneError: a Slurm option without --executor slurm, or a malformed one."""
    from nnunet_prune.tools.cluster.graph import KINDS
    from nnunet_prune.tools.cluster.slurm import SlurmOptions

    given = {name: getattr(args, name) for name in SLURM_OPTIONS}
    used = [f"--{k}" for k, v in given.items() if v] + (["--slurm-arg"] if args.slurm_arg else []) + \
        (["--wait"] if args.wait else [])
    if used and args.executor != "slurm":
        raise NnUNetPruneError(f"{', '.join(used)} only apply with --executor slurm.")
    if args.poll <= 0:
        raise NnUNetPruneError("--poll must be more than 0 seconds.")
    return SlurmOptions.parse(given, args.slurm_arg, args.max_requeues, kinds or KINDS)


def run_on_slurm(submission, args, say: Callable[[str], None], device: str) -> bool:
    """Submit what is missing (``submission``: a :class:`~nnunet_prune.tools.cluster.submission.Submission`), say
    the job ids and the queue, wait with ``--wait``; returns whether no job is queued or running any more. A
    training on ``device`` cuda without a GPU asked for (``--gpus``, a ``gres``/``gpu`` sbatch option) is noted."""
    kinds = {j.kind for j in submission.plan().jobs} - {"planning"}
    without = [k for k in sorted(kinds) if not submission.options.asks_for_gpus(k)]
    if device == "cuda" and without:
        say(f"note: the {', '.join(without)} jobs run on cuda but ask for no GPU (--gpus KIND=1, or "
            f"--slurm-arg=KIND=--gres=gpu:1): they get one only where the partition gives one by default")
    submitted = submission.submit()
    for name, job_id in submitted:
        say(f"submitted job {job_id}: {name}")
    if not submitted:
        say("nothing to submit: every step is done, queued or running")
    for line in submission.summary():
        say(line)
    states = submission.wait(args.poll) if args.wait else submission.states()[1]
    return not any(s not in ("done", "failed", "new") for s, _ in states.values())
