"""``nnunet-prune demo``: dataset, planning, training, export, prediction, sweep and a results table."""

from __future__ import annotations


def add_parser(sub) -> None:
    """Register the ``nnunet-prune demo`` subcommand on ``sub`` (an argparse subparsers object)."""
    from nnunet_prune.tools.benchmark.demo import DEFAULT_SEED
    from nnunet_prune.tools.benchmark.progress import MEASURED_MINUTES, MEASURED_ON

    p = sub.add_parser(
        "demo", help=f"run everything on the embedded demo data ({MEASURED_MINUTES} minutes on {MEASURED_ON})",
        description="Create a demo dataset, plan it with nnU-Net's default planner and LUnetPlanner, train the "
                    "default network, LUnet and Sauron briefly on the CPU, export, predict the held-out images with "
                    "stock nnU-Net and score them with nnUNetv2_evaluate_folder (the benchmark's steps), run the "
                    "magnitude-pruning sweep, and print a table of parameters, MACs, "
                    "held-out Dice per class and wall times. nnU-Net's folders live in the working folder. It took "
                    f"{MEASURED_MINUTES} minutes on {MEASURED_ON}; each step says how long is left, and a slow "
                    "machine gets a suggestion for --epochs / --iterations.")
    p.add_argument("--dataset", choices=("synthetic", "lits117"), default="synthetic",
                   help="synthetic phantom (default, offline) or the LiTS-117 CT crop (downloads 4.5 MB from PyPI)")
    p.add_argument("--workdir", default="nnunet_prune_demo", help="working folder (default: ./nnunet_prune_demo; "
                                                                  "a previous demo there is replaced)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs per model (default 10)")
    p.add_argument("--iterations", type=int, default=None, help="training iterations per epoch (default 25)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED,
                   help=f"seed of every training (default {DEFAULT_SEED}; NNUNET_PRUNE_SEED): the same seed gives "
                        f"the same Dice, another one shows how much of a difference is chance")
    p.add_argument("--no-sauron", action="store_true", help="skip the Sauron model")
    p.add_argument("--no-sweep", action="store_true", help="skip the magnitude-pruning sweep")
    p.add_argument("--wheel", default=None, help="with --dataset lits117: a local copy of the data wheel")
    p.set_defaults(func=run)


def run(args) -> int:
    """Run the whole demo (:meth:`nnunet_prune.tools.benchmark.demo.Demo.run_all`) in ``--workdir`` and print where the
    results are.

    ``--epochs`` / ``--iterations`` that are unset (or 0) keep the
    :class:`~nnunet_prune.tools.benchmark.demo.DemoBudget` defaults.

    Returns:
        the exit code (0 ok, 130 after Ctrl-C, which the demo has reported; errors raise instead).

    Raises:
        NnUNetPruneError: the working folder holds files the demo did not make, an nnU-Net console script is missing,
            a step's command failed (the message shows the command and its last output), or ``--seed`` is not a
            whole number from 0 to 2**32 - 1.
    """
    from nnunet_prune.tools.benchmark.demo import Demo, DemoBudget

    budget = DemoBudget()
    if args.epochs:
        budget.epochs = args.epochs
    if args.iterations:
        budget.iterations = args.iterations
    demo = Demo(args.workdir, args.dataset, budget, sweep=not args.no_sweep, sauron=not args.no_sauron,
                lits_wheel=args.wheel, seed=args.seed)
    try:
        out = demo.run_all()
    except KeyboardInterrupt:
        return 130  # run_all said what happened and what to do
    print(f"Results written to {out}")
    return 0
