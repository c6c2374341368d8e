"""``nnunet-prune benchmark-step -o OUT STEP``: one step of a benchmark planned as jobs (what each cluster job and
each line of ``OUT/jobs/jobs.sh`` runs; :mod:`nnunet_prune.tools.benchmark.jobs`)."""

from __future__ import annotations


def add_parser(sub) -> None:
    """Register the ``nnunet-prune benchmark-step`` subcommand on ``sub`` (an argparse subparsers object)."""
    p = sub.add_parser(
        "benchmark-step", help="run one step of a benchmark planned with --executor slurm or commands",
        description="Run one step of the benchmark in OUT (planned by `nnunet-prune benchmark ... --executor slurm` "
                    "or `--executor commands`, whose settings it reads from OUT): plan, '<seed>: <method> train fold "
                    "F', '<seed>: magnitude sweep', '<seed>: <method> predict', '<seed>: <method> measure', or "
                    "collect (write the table from what the steps did). Finished work is reused.")
    p.add_argument("-o", "--output", required=True, help="the benchmark's output folder")
    p.add_argument("step", help="the step, e.g. 'seed 0: dense train fold 0', or collect")
    p.set_defaults(func=run)


def run(args) -> int:
    """Run the step (or collect).

    Returns:
        0; 1 when collecting found failed steps.

    Raises:
        NnUNetPruneError: OUT holds no benchmark planned as jobs, no such step, or the step failed.
        KeyboardInterrupt: Ctrl-C, or SIGUSR1 / SIGTERM (Slurm's requeue signal, a preemption): the step's time so
            far is saved first (exit code 130)."""
    import signal
    from pathlib import Path

    from nnunet_prune.tools.benchmark.benchmark import Benchmark
    from nnunet_prune.tools.benchmark.jobs import BenchmarkJobs, stored_settings

    def interrupted(signum, frame):  # Slurm's requeue signal or a preemption: the step's time so far is kept
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    signal.signal(signal.SIGUSR1, interrupted)
    signal.signal(signal.SIGTERM, interrupted)
    out = Path(args.output).expanduser().resolve()
    bench = Benchmark(stored_settings(out), out)
    bench.check()
    jobs = BenchmarkJobs(bench)
    if args.step == "collect":
        md = jobs.collect()
        print(md.read_text())
        return 1 if any(r.status != "ok" for r in bench.rows.values()) else 0
    jobs.run(args.step)
    return 0
