"""``nnunet-prune sweep``: post-training magnitude pruning with a proxy-Dice sweep."""

from __future__ import annotations

import math
from pathlib import Path

from nnunet_prune import NnUNetPruneError


def add_parser(sub) -> None:
    """Register the ``nnunet-prune sweep`` subcommand on ``sub`` (an argparse subparsers object)."""
    p = sub.add_parser(
        "sweep", help="prune a trained model at many thresholds or fractions and measure the proxy Dice",
        description="Magnitude (default): for each tau, zero every conv weight with |w| <= tau in every fold. "
                    "--criterion l1|l2|slimming: for each fraction, remove that fraction of the filters of every fold "
                    "(one-shot structured pruning, no fine-tuning) and measure the latency. Then predict the images "
                    "with the pruned ensemble (nnU-Net inference with TTA) and compare with the unpruned ensemble "
                    "(proxy Dice), and with labels if given. Resumable: run it again to finish an interrupted "
                    "sweep. Name the model by folder or the nnU-Net way (-d -c [-tr] [-p]).")
    p.add_argument("model_folder", nargs="?", default=None, help="trained model folder")
    p.add_argument("-d", "--dataset", default=None, help="dataset name or ID (instead of MODEL_FOLDER)")
    p.add_argument("-c", "--configuration", default=None, help="configuration, e.g. 2d or 3d_fullres")
    p.add_argument("-tr", "--trainer", default="nnUNetTrainer", help="trainer (default: nnUNetTrainer)")
    p.add_argument("-p", "--plans", default="nnUNetPlans", help="plans identifier (default: nnUNetPlans)")
    p.add_argument("-i", "--images", required=True, help="folder of images named like imagesTs (CASE_0000.nii.gz)")
    p.add_argument("-o", "--output", default=None,
                   help="output folder (default: ./magnitude_sweep_<model folder name>, with --criterion "
                        "./structured_sweep_<criterion>_<model folder name>)")
    p.add_argument("-f", "--folds", nargs="+", default=None, help="folds of the ensemble (default: all trained)")
    p.add_argument("--labels", default=None, help="folder of ground-truth segmentations for the real Dice")
    grid = p.add_mutually_exclusive_group()
    grid.add_argument("--taus", nargs="+", type=float, default=None,
                      help="tau values (default: the paper's 0..0.02 in steps of 0.001)")
    grid.add_argument("--sparsities", nargs="+", type=float, default=None, metavar="S",
                      help="target sparsities in [0, 1) instead of tau values (tau = quantile of |w|)")
    p.add_argument("--criterion", choices=("magnitude", "l1", "l2", "slimming"), default="magnitude",
                   help="magnitude (zero small weights; default) or a structured criterion that removes filters "
                        "physically: l1 / l2 filter norms, slimming (|gamma| of the norm layers)")
    p.add_argument("--fractions", nargs="+", type=float, default=None, metavar="F",
                   help="structured criteria: fractions in (0, 1) to remove (default 0.25 0.5 0.75 0.9)")
    p.add_argument("--ratio-of", choices=("filters", "params", "macs"), default="filters",
                   help="structured criteria: what the fractions count (default filters)")
    p.add_argument("--distribution", choices=("global", "uniform"), default="global",
                   help="structured criteria: one normalised ranking of all filters (default) or the same fraction "
                        "of every coupling group")
    p.add_argument("--max-ratio", type=float, default=0.95,
                   help="structured criteria: no coupling group loses more than this fraction (default 0.95)")
    p.add_argument("--max-ratio-coupled", type=float, default=0.8,
                   help="structured criteria: the same for skip and residual groups (default 0.8)")
    p.add_argument("--threshold", type=float, default=0.95, help="proxy Dice of the critical point (default 0.95)")
    p.add_argument("--refine", type=int, default=4, metavar="N",
                   help="extra tau values between the last good and first bad tau (default 4; 0 = off)")
    p.add_argument("--proxy-summary", choices=("pooled", "mean"), default="pooled",
                   help="what the critical point is based on: pooled (default; per-class Dice over all cases, mean "
                        "over the classes large enough to judge) or mean (the paper's foreground mean of per-case "
                        "Dice, which a nearly absent class can dominate)")
    p.add_argument("--prune-bias", action="store_true", help="zero small biases too")
    p.add_argument("--per-layer-normalised", action="store_true",
                   help="threshold tau x RMS(weights) per tensor (tau grid 0..2 by 0.1 unless --taus)")
    p.add_argument("--disable-tta", action="store_true", help="no mirroring test-time augmentation")
    p.add_argument("--step-size", type=float, default=0.5, help="sliding-window step size (default 0.5)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="inference device (default cpu)")
    p.add_argument("--save-predictions", action="store_true", help="also write each tau's segmentations")
    p.add_argument("--restart", action="store_true",
                   help="discard a previous sweep in the output folder (only its own files; anything else there "
                        "stops the command)")
    p.set_defaults(func=run)


def check_arguments(args) -> None:
    """Everything that needs no model or nnU-Net import, checked first (seconds before any loading)."""
    for option, value in (("-i", args.images), ("--labels", args.labels)):
        if value is not None and not Path(value).expanduser().is_dir():
            raise NnUNetPruneError(f"{option} {value}: no such folder.")
    if args.model_folder is not None and not Path(args.model_folder).expanduser().is_dir():
        raise NnUNetPruneError(f"{args.model_folder}: no such folder (give a trained model folder, or -d/-c).")
    structured = args.criterion != "magnitude"
    magnitude_only = [o for o, v in (("--taus", args.taus), ("--sparsities", args.sparsities),
                                     ("--prune-bias", args.prune_bias),
                                     ("--per-layer-normalised", args.per_layer_normalised)) if v]
    if structured and magnitude_only:
        raise NnUNetPruneError(f"{', '.join(magnitude_only)}: magnitude-pruning options; --criterion "
                               f"{args.criterion} takes --fractions.")
    if not structured and (args.fractions or args.ratio_of != "filters" or args.distribution != "global"
                           or args.max_ratio != 0.95 or args.max_ratio_coupled != 0.8):
        raise NnUNetPruneError("--fractions, --ratio-of, --distribution, --max-ratio and --max-ratio-coupled belong to "
                               "the structured criteria: add --criterion l1, l2 or slimming (magnitude pruning takes "
                               "--taus or --sparsities).")
    for option, value in (("--max-ratio", args.max_ratio), ("--max-ratio-coupled", args.max_ratio_coupled)):
        if not (math.isfinite(value) and 0 < value <= 1):
            raise NnUNetPruneError(f"{option} must lie in (0, 1] (got {value}).")
    if args.fractions and any(not (math.isfinite(f) and 0 < f < 1) for f in args.fractions):
        raise NnUNetPruneError("--fractions must lie in (0, 1), e.g. 0.25 0.5 0.75 0.9.")
    if args.sparsities and any(not (math.isfinite(s) and 0 <= s < 1) for s in args.sparsities):
        raise NnUNetPruneError("--sparsities must lie in [0, 1), e.g. 0.5 0.8 0.9.")
    if args.taus and any(not (math.isfinite(t) and t >= 0) for t in args.taus):
        raise NnUNetPruneError("--taus must be finite and >= 0.")
    if not (math.isfinite(args.threshold) and 0 < args.threshold <= 1):
        raise NnUNetPruneError(f"--threshold must lie in (0, 1] (got {args.threshold}).")
    if args.refine < 0:
        raise NnUNetPruneError(f"--refine must be >= 0 (got {args.refine}).")
    if not 0 < args.step_size <= 1:
        raise NnUNetPruneError(f"--step-size must lie in (0, 1] (got {args.step_size}).")
    if args.output is not None and Path(args.output).expanduser().is_file():
        raise NnUNetPruneError(f"-o {args.output} is a file: give a folder.")


def check_inputs(args) -> Path:
    """The model folder (given, or -d/-c/-tr/-p resolved), its folds and the image and label folders checked on the
    file system alone (:mod:`nnunet_prune.nnunet.prechecks`: no torch, no nnU-Net); returns the model folder.

    Raises:
        NnUNetPruneError: an unknown dataset (listing those that exist), a missing model folder, a fold folder given
            as the model folder, missing folds, or a missing image or label folder.
    """
    from nnunet_prune.nnunet.prechecks import check_image_folder, model_folder_folds, resolve_model_folder

    folder = resolve_model_folder(args.model_folder, args.dataset, args.configuration, args.trainer, args.plans)
    folder, _ = model_folder_folds(folder, args.folds)
    check_image_folder(args.images, "-i")
    if args.labels is not None:
        check_image_folder(args.labels, "--labels")
    return folder


def run(args) -> int:
    """Run (or resume) the magnitude-pruning sweep (the sweep engine along the tau axis,
    :class:`nnunet_prune.tools.sweep.magnitude.TauAxis`; print the critical point with the proxy Dice per class) or,
    with ``--criterion l1|l2|slimming``, the structured sweep (the fraction axis,
    :class:`nnunet_prune.tools.sweep.structured.FractionAxis`; print the largest fraction at the threshold), and
    where the results are.

    Returns:
        the exit code (0 ok, also when no tau keeps the proxy Dice at the threshold; errors raise instead).

    Raises:
        NnUNetPruneError: invalid arguments (:func:`check_arguments`), a model that cannot be resolved or opened,
            images or labels that do not fit the model, ``--device cuda`` without a GPU, a fraction the caps make
            unreachable, or an output folder inside the
            model folder or holding something other than a sweep of the same model, folds, images and settings
            (``--restart`` discards an earlier sweep).
    """
    check_arguments(args)
    folder = check_inputs(args)  # before torch and nnU-Net are imported: a wrong -d fails in a fraction of a second
    from nnunet_prune.nnunet.modelfolder import ModelFolder
    from nnunet_prune.tools.sweep.engine import SweepEngine, SweepSettings

    model = ModelFolder.open(folder, args.folds)
    structured = args.criterion != "magnitude"
    default = f"structured_sweep_{args.criterion}_{model.path.name}" if structured \
        else f"magnitude_sweep_{model.path.name}"
    output = Path(args.output or default).expanduser().resolve()
    settings = SweepSettings(threshold=args.threshold, use_mirroring=not args.disable_tta,
                             tile_step_size=args.step_size, device=args.device,
                             save_predictions=args.save_predictions, proxy_summary=args.proxy_summary)
    sweep = SweepEngine(model, args.images, output, args.labels, settings, _axis(args), restart=args.restart)
    folds = ", ".join(map(str, model.folds))
    if structured:
        print(f"Structured sweep ({args.criterion}) of {model.path.name} (folds {folds}) on {len(sweep.cases)} "
              f"images -> {output}")
        _print_structured(sweep.run(), output)
    else:
        print(f"Sweep of {model.path.name} (folds {folds}) on {len(sweep.cases)} images -> {output}")
        _print_magnitude(sweep.run(), output, args.proxy_summary)
    return 0


def _axis(args):
    """The sweep's axis: tau (magnitude pruning) or, with a structured criterion, the fraction of filters removed."""
    if args.criterion == "magnitude":
        from nnunet_prune.tools.sweep.magnitude import TauAxis, TauSettings

        return TauAxis(TauSettings(taus=args.taus, target_sparsities=args.sparsities, refine_steps=args.refine,
                                   prune_bias=args.prune_bias, per_layer_normalised=args.per_layer_normalised))
    from nnunet_prune.tools.sweep.structured import FractionAxis, FractionSettings

    return FractionAxis(FractionSettings(criterion=args.criterion, fractions=args.fractions, ratio_of=args.ratio_of,
                                         distribution=args.distribution, max_ratio=args.max_ratio,
                                         max_ratio_coupled=args.max_ratio_coupled))


def _print_structured(report: dict, output: Path) -> None:
    """The largest fraction at the threshold, where the results are and the command that fine-tunes."""
    from nnunet_prune.tools.sweep.structured import finetune_hint

    best = report["largest_fraction_at_threshold"]
    print(f"Largest fraction with proxy Dice >= {report['threshold']}: {best:g}" if best is not None else
          f"No fraction keeps proxy Dice >= {report['threshold']} without fine-tuning.")
    print(f"Results: {output / 'summary.md'}, sweep.csv, sweep.json, dice_vs_fraction.png.")
    print(finetune_hint(report))


def _print_magnitude(report: dict, output: Path, proxy_summary: str) -> None:
    """The critical point with the proxy Dice per class, and where the results are."""
    crit = report["critical_point"]
    if crit:
        print(f"Critical point: tau={crit['tau']:.6g}, sparsity {crit['sparsity']:.1%} at proxy Dice "
              f"{crit['proxy_dice']:.4f} (threshold {report['threshold']}, {proxy_summary} summary).")
        at = next(r for r in report["results"] if r["tau"] == crit["tau"])
        names = report.get("label_names", {})
        small = set(at.get("small_classes") or [])
        for lab, dice in at["proxy_dice_per_class"].items():
            print(f"  {names.get(lab, lab)}: proxy Dice {dice:.4f} over {at['reference_voxels'].get(lab, 0):,} "
                  f"reference voxels" + (" (too small to judge: left out of the summary)" if lab in small else ""))
        print("Zeroed weights shrink the checkpoint (nnunet-prune export --magnitude-tau) but dense convolutions do "
              "not run faster: expect no speed-up from this sparsity alone.")
    else:
        print(f"No tau kept the proxy Dice >= {report['threshold']}.")
    print(f"Results: {output / 'summary.md'}, sweep.csv, sweep.json, dice_vs_sparsity.png, stage_sparsity.png")
