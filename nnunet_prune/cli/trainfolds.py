"""``nnunet-prune train-folds``: stock ``nnUNetv2_train`` per fold, here, on Slurm or as a script
(:mod:`nnunet_prune.tools.trainfolds`)."""

from __future__ import annotations

import os
import time

from nnunet_prune.cli.cluster import add_executor_arguments, run_on_slurm, slurm_options


def add_parser(sub) -> None:
    """Register the ``nnunet-prune train-folds`` subcommand on ``sub`` (an argparse subparsers object)."""
    p = sub.add_parser(
        "train-folds", help="train folds with stock nnUNetv2_train, here, as Slurm jobs or as a script",
        description="Run stock `nnUNetv2_train D C F -tr T -p P --c` for each fold: here one after another, as one "
                    "Slurm job per fold (requeued on its time limit or a preemption, continuing from the latest "
                    "checkpoint), or written as a script. Folds already trained and validated are skipped; a rerun "
                    "continues. Job files: <model folder>/nnunet_prune_jobs/.")
    p.add_argument("-d", "--dataset", required=True, help="dataset name or ID")
    p.add_argument("-c", "--configuration", required=True, help="configuration, e.g. 3d_fullres")
    p.add_argument("-tr", "--trainer", default="nnUNetTrainer", help="trainer class (default nnUNetTrainer)")
    p.add_argument("-p", "--plans", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    p.add_argument("-f", "--folds", nargs="+", default=["0", "1", "2", "3", "4"], help="folds (default 0 1 2 3 4)")
    p.add_argument("-device", "--device", choices=("cuda", "cpu", "mps"), default="cuda",
                   help="nnUNetv2_train's -device on the machine that trains (default cuda)")
    p.add_argument("--npz", action="store_true", help="passed to nnUNetv2_train (keep validation probabilities)")
    add_executor_arguments(p, "training")
    p.set_defaults(func=run)


def run(args) -> int:
    """Check everything, then train, submit or write the script.

    Returns:
        0 (submitted, written or trained), 1 when a job or fold failed.

    Raises:
        NnUNetPruneError: a bad input, before any work or submission."""
    from nnunet_prune.nnunet.foldtraining import check_fold_training
    from nnunet_prune.nnunet.prechecks import resolve_dataset
    from nnunet_prune.tools.cluster.graph import write_script
    from nnunet_prune.tools.trainfolds import JOBS, FoldTraining, train_here

    options = slurm_options(args, kinds=("training",))
    dataset = resolve_dataset(args.dataset)
    folder, folds = check_fold_training(dataset, args.configuration, args.trainer, args.plans, args.folds)
    training = FoldTraining(dataset, args.configuration, args.trainer, args.plans, folds, args.device, folder,
                            ["--npz"] if args.npz else [])
    if args.executor != "slurm":  # (on Slurm: once Slurm's checks passed)
        folder.mkdir(parents=True, exist_ok=True)  # where the jobs run and keep their files (nnU-Net makes it too)
    start = time.perf_counter()

    def say(text: str) -> None:
        print(f"[{int(time.perf_counter() - start):5d} s] {text}", flush=True)

    if args.executor == "local":
        train_here(training.graph(), dict(os.environ), say)
        return 0
    if args.executor == "commands":
        path = write_script(training.graph(), folder / JOBS / "jobs.sh")
        say(f"wrote {path} ({len(training.graph().pending())} job(s))")
        return 0
    from pathlib import Path

    from nnunet_prune.tools.cluster.submission import Submission

    seen = [Path(os.environ["nnUNet_preprocessed"]) / dataset]
    submission = Submission(training.graph, folder / JOBS, options, say, visible=seen)
    if run_on_slurm(submission, args, say, args.device):
        failed = [n for n, (s, _) in submission.states()[1].items() if s == "failed"]
        say("every fold is trained and validated" if not failed else
            f"failed: {', '.join(failed)} (rerun the same command to resubmit)")
        return 1 if failed else 0
    say("rerun the same command (or add --wait) to follow the jobs")
    return 0
