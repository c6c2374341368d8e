"""``nnunet-prune benchmark``: every method on one dataset, one budget, one table
(:mod:`nnunet_prune.tools.benchmark.benchmark`; its methods: :mod:`nnunet_prune.tools.benchmark.methods`)."""

from __future__ import annotations

import os

from nnunet_prune import NnUNetPruneError


def add_parser(sub) -> None:
    """Register the ``nnunet-prune benchmark`` subcommand on ``sub`` (an argparse subparsers object)."""
    from nnunet_prune.tools.benchmark.methods import METHOD_NAMES, NOT_DISTILLED

    p = sub.add_parser(
        "benchmark", help="train every pruning method with the same budget and compare them in one table",
        description="Train the dense nnU-Net and every pruning method of this package with stock nnUNetv2_train "
                    "and one budget and seed (into OUT/seed_<S>/nnUNet_results, never your nnUNet_results; --seeds "
                    "N repeats every method with N seeds and reports mean ± standard deviation), predict the test "
                    "images with stock nnUNetv2_predict and score them with nnUNetv2_evaluate_folder (without a "
                    "test set: the folds' validation), measure parameters, MACs, checkpoint size and latency, and "
                    "write benchmark.md / .csv and Pareto plots. Rerun the same command to continue or reuse (also "
                    "after Ctrl-C). Methods: "
                    + ", ".join(METHOD_NAMES) + "; each but " + " and ".join(NOT_DISTILLED) + " also distilled "
                    "as <method>_distill (--distill). Method settings come from your environment as for "
                    "nnUNetv2_train (e.g. NNUNET_PRUNE_SAURON, NNUNET_PRUNE_STRUCTURED, NNUNET_PRUNE_DISTILL).")
    p.add_argument("-d", "--dataset", required=True, help="dataset name or ID")
    p.add_argument("-c", "--configuration", required=True, help="configuration, e.g. 2d or 3d_fullres")
    p.add_argument("-f", "--folds", nargs="+", default=["0"], help="folds to train (default: 0)")
    p.add_argument("-o", "--output", required=True, help="output folder (new, empty, or an earlier benchmark's)")
    p.add_argument("--methods", nargs="+", default=list(METHOD_NAMES), metavar="METHOD",
                   help="methods to run, separated by spaces or commas (default: all): " + " ".join(METHOD_NAMES)
                        + "; a distilled row by its name, e.g. lunet16_distill stamp_distill (needs dense)")
    p.add_argument("--distill", action="store_true",
                   help="also train every chosen method but dense and magnitude with distillation (a row "
                        "<method>_distill right after it, same budget and seeds): its teacher is the benchmark's "
                        "dense model of the same seed (NNUNET_PRUNE_TEACHER), its settings your NNUNET_PRUNE_DISTILL "
                        "(e.g. 'weight=0.3,temperature=3'). Magnitude validates the dense fold at the sweep's tau "
                        "without training, so a teacher has nothing to teach it; dense is the teacher itself")
    p.add_argument("--epochs", type=int, default=20, help="epochs of every training (default 20)")
    p.add_argument("--iters-per-epoch", type=int, default=20, help="training iterations per epoch (default 20)")
    p.add_argument("--val-iters", type=int, default=5, help="validation iterations per epoch (default 5)")
    p.add_argument("--test-images", default=None, help="held-out images (like imagesTs)")
    p.add_argument("--test-labels", default=None, help="their ground-truth segmentations (like labelsTs)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="training and inference device (default: cuda if available, else cpu)")
    p.add_argument("--jobs", type=int, default=1,
                   help="methods trained at the same time (default 1; each nnU-Net training uses every CPU core, so "
                        "more than 1 pays off on a GPU with memory to spare or a many-core machine)")
    p.add_argument("--sweep-taus", nargs="+", type=float, default=None, metavar="TAU",
                   help="tau grid of the magnitude sweep (default: the sweep's 0..0.02)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of every training (NNUNET_PRUNE_SEED; default 0): the same seed gives the same models")
    p.add_argument("--seeds", type=int, default=1, metavar="N",
                   help="train every method N times, with seeds SEED .. SEED+N-1 (each in OUT/seed_<S>), and report "
                        "the mean ± standard deviation of the Dice (default 1); a rerun with a larger N adds seeds")
    p.add_argument("--repeats", type=int, default=10,
                   help="timed runs per latency at least; more until the median is known (default 10)")
    p.add_argument("--int8", action="store_true",
                   help="also quantize every model to INT8 for OpenVINO (nnunet-prune export --runtime openvino "
                        "--int8: calibrated on each fold's training patches, kept only if its Dice on the fold's "
                        "validation cases stays within --max-dice-drop of the float model's) and put its latency and "
                        "its own Dice in the table (pip install \"nnunet-prune[int8]\")")
    p.add_argument("--max-dice-drop", type=float, default=None,
                   help="with --int8: the largest Dice drop of an INT8 model (default 0.01)")
    p.add_argument("--runtimes", nargs="+", default=None, metavar="NAME",
                   help="deployment runtimes timed on the CPU next to PyTorch: onnxruntime, openvino (default: every "
                        "installed one; 'none' for none)")
    from nnunet_prune.cli.cluster import add_executor_arguments

    add_executor_arguments(p, "planning, training, prediction (export, prediction and evaluation of the test "
                              "images, the magnitude sweep), measurement")
    p.set_defaults(func=run)


def run(args) -> int:
    """Resolve the dataset, check every input, run the benchmark; print where the table is.

    Returns:
        0, or 130 after Ctrl-C (the benchmark said "interrupted; rerun the same command to continue").

    Raises:
        NnUNetPruneError: a bad input (checked before any work), or planning failed."""
    from nnunet_prune.cli.cluster import slurm_options
    from nnunet_prune.nnunet.seeding import check_seed
    from nnunet_prune.tools.benchmark.benchmark import Benchmark, BenchmarkSettings

    options = slurm_options(args)
    if args.max_dice_drop is not None and not args.int8:
        raise NnUNetPruneError("--max-dice-drop belongs to --int8: add --int8 or leave it out.")
    if args.jobs != 1 and args.executor != "local":
        raise NnUNetPruneError(f"--jobs applies to the local executor; with --executor {args.executor} the "
                               f"scheduler runs as many jobs at once as it allows.")

    if args.seeds < 1:
        raise NnUNetPruneError(f"--seeds {args.seeds}: give at least 1 (the number of trainings per method).")
    check_seed(args.seed, "--seed")
    if not (os.environ.get("nnUNet_raw") and os.environ.get("nnUNet_preprocessed")):
        raise NnUNetPruneError("nnUNet_raw and nnUNet_preprocessed must be set (the benchmark plans and trains with "
                               "nnU-Net's folders; its models go to OUT/seed_<S>/nnUNet_results).")
    from nnunet_prune.nnunet.prechecks import gpu_driver_present, resolve_dataset

    dataset = resolve_dataset(args.dataset)  # without importing nnU-Net; lists the datasets that exist
    names = [n for arg in args.methods for n in arg.split(",") if n]
    if len(set(names)) != len(names):
        raise NnUNetPruneError("--methods names a method twice.")
    from nnunet_prune.tools.benchmark.methods import table_order

    methods = table_order(names, distill=args.distill)  # every name checked; the distilled rows added
    device = args.device
    if device is None and args.executor == "slurm":
        device = "cuda" if options.asks_for_gpus() else "cpu"  # the compute nodes': what was asked for
    if device is None and not gpu_driver_present():
        device = "cpu"  # no GPU driver: no need to import torch to know (the benchmark checks its inputs first)
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    settings = BenchmarkSettings(
        dataset=dataset, configuration=args.configuration, folds=list(args.folds),
        methods=methods, epochs=args.epochs, iterations=args.iters_per_epoch,
        val_iterations=args.val_iters, test_images=args.test_images, test_labels=args.test_labels, device=device,
        sweep_taus=args.sweep_taus, jobs=args.jobs, repeats=args.repeats,
        runtimes=[] if args.runtimes == ["none"] else args.runtimes, seed=args.seed, seeds=args.seeds,
        executor=args.executor, int8=args.int8,
        max_dice_drop=0.01 if args.max_dice_drop is None else args.max_dice_drop)
    if args.executor != "local":
        return run_jobs(Benchmark(settings, args.output), args, options)
    from pathlib import Path

    from nnunet_prune.tools.benchmark.jobs import JOBS
    from nnunet_prune.tools.cluster.submission import active_steps

    busy = active_steps(Path(args.output).expanduser() / JOBS)
    if busy:
        named = ", ".join(busy[:3]) + (", ..." if len(busy) > 3 else "")
        raise NnUNetPruneError(f"-o {args.output}: {len(busy)} of its steps are Slurm jobs still queued or running "
                               f"({named}); running them here too would train the same folds twice. Follow them with "
                               f"--executor slurm (the same command), or scancel them first.")
    try:
        md = Benchmark(settings, args.output).run()
    except KeyboardInterrupt:
        return 130  # the benchmark said what happened and that the same command continues
    print(f"\nTable: {md}\nCSV: {md.with_suffix('.csv')}\nPlots: {md.parent / 'pareto.png'}")
    print(md.read_text())
    return 0


def run_jobs(bench, args, options) -> int:
    """The benchmark as jobs: ``--executor commands`` writes ``OUT/jobs/jobs.sh``; ``--executor slurm`` submits
    what is missing, shows the queue, waits with ``--wait``, and once no job is queued or running writes the table
    from what the jobs did (:meth:`~nnunet_prune.tools.benchmark.jobs.BenchmarkJobs.collect`).

    Returns:
        0, or 1 when the table was written with failed steps."""
    from pathlib import Path

    from nnunet_prune.cli.cluster import run_on_slurm
    from nnunet_prune.tools.benchmark.jobs import JOBS, BenchmarkJobs
    from nnunet_prune.tools.cluster.graph import write_script
    from nnunet_prune.tools.commands import package_command

    bench.check()
    bench.out.mkdir(parents=True, exist_ok=True)
    jobs = BenchmarkJobs(bench)
    jobs.save_settings()
    if args.executor == "commands":
        graph = jobs.graph()
        path = write_script(graph, bench.out / JOBS / "jobs.sh",
                            footer=[package_command("benchmark-step", "-o", str(bench.out), "collect")])
        bench.say(f"wrote {path}: {len(graph.pending())} job(s); its last line writes the table")
        return 0
    from nnunet_prune.tools.cluster.submission import Submission

    env = bench.user_env
    seen = [Path(env["nnUNet_raw"]) / bench.s.dataset, Path(env["nnUNet_preprocessed"]) / bench.s.dataset]
    submission = Submission(jobs.graph, bench.out / JOBS, options, bench.say, visible=seen)
    if not run_on_slurm(submission, args, bench.say, bench.s.device):
        bench.say("rerun the same command to follow the jobs, or add --wait; the table is written once no job is "
                  "queued or running")
        return 0
    md = jobs.collect()
    print(f"\nTable: {md}\nCSV: {md.with_suffix('.csv')}\nPlots: {md.parent / 'pareto.png'}")
    print(md.read_text())
    failed = [n for n, (s, _) in submission.states()[1].items() if s == "failed"]
    if failed:
        bench.say(f"{len(failed)} step(s) failed: {', '.join(failed)}; rerun the same command to resubmit them")
    return 1 if failed else 0

