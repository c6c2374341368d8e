"""``nnunet-prune export``: a slim, standard nnU-Net model folder from a trained one."""

from __future__ import annotations

from pathlib import Path

from nnunet_prune import NnUNetPruneError
from nnunet_prune.tools.export.writers import WRITERS  # (no torch: the runtimes' writers, by name)


def add_parser(sub) -> None:
    """Register the ``nnunet-prune export`` subcommand on ``sub`` (an argparse subparsers object)."""
    p = sub.add_parser(
        "export", help="write a slim, standard nnU-Net model folder (weights only, dead channels removed)",
        description="Write a standard nnU-Net model folder that stock nnUNetv2_predict, cross-validation, "
                    "nnUNetv2_find_best_configuration and ensembling use unchanged: weights only, channels that "
                    "no layer reads removed physically, validation outputs copied. With --magnitude-tau the "
                    "weights |w| <= tau are zeroed first and stored compactly.")
    p.add_argument("model_folder", help="trained model folder (<trainer>__<plans>__<configuration>)")
    p.add_argument("-o", "--output", required=True,
                   help="output model folder (must not exist or be empty, see --overwrite)")
    p.add_argument("-f", "--folds", nargs="+", default=None, help="folds to export (default: all trained folds)")
    p.add_argument("-chk", "--checkpoints", nargs="+", default=["checkpoint_final.pth"], metavar="NAME",
                   help="checkpoint file(s) to export from every fold, as nnUNetv2_predict -chk names them (default: "
                        "checkpoint_final.pth); e.g. -chk checkpoint_final.pth checkpoint_best.pth exports both, so "
                        "the export predicts with either")
    p.add_argument("--fp16", action="store_true", help="store weights in float16 (half the size; predictions "
                                                       "may differ in a few voxels)")
    p.add_argument("--magnitude-tau", type=float, default=None, metavar="T",
                   help="zero conv weights with |w| <= T before exporting (post-training magnitude pruning)")
    p.add_argument("--prune-bias", action="store_true", help="with --magnitude-tau: zero small biases too")
    p.add_argument("--per-layer-normalised", action="store_true",
                   help="with --magnitude-tau: threshold T x RMS(weights) per tensor instead of T")
    p.add_argument("--runtime", choices=tuple(WRITERS), default="pytorch",
                   help="what stock nnUNetv2_predict runs the exported folds with (default: pytorch). onnxruntime and "
                        "openvino need the optional extra: pip install \"nnunet-prune[deploy]\"; torch-compile uses "
                        "CUDA graphs and bf16 on a GPU. The runtime's segmentation is checked against PyTorch's")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="with --runtime onnxruntime/openvino: CPU threads per prediction (default: the runtime's)")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default=None,
                   help="with --runtime openvino: fp32 (default) or bf16; with torch-compile: the CUDA autocast "
                        "precision (bf16 default, fp16, fp32)")
    p.add_argument("--int8", action="store_true",
                   help="with --runtime openvino: INT8 post-training quantization with NNCF (pip "
                        "install \"nnunet-prune[int8]\"), calibrated on sliding-window patches of each fold's training "
                        "cases and checked by stock prediction + nnU-Net's evaluation on its validation cases against "
                        "the float model (needs the dataset in nnUNet_raw / nnUNet_preprocessed); docs/deploy.md")
    p.add_argument("--max-dice-drop", type=float, default=None, metavar="D",
                   help="with --int8: the largest mean foreground Dice drop allowed in any fold (default 0.01); if "
                        "quantizing everything drops more, the first convolution and the segmentation head stay in "
                        "float; if that drops more too, the export is refused and nothing is written")
    p.add_argument("--calibration-patches", type=int, default=None, metavar="N",
                   help="with --int8: calibration patches per fold (default 100)")
    p.add_argument("-device", default=None, choices=("cpu", "cuda", "mps"),
                   help="with --int8: the device of the Dice check's predictions (default cpu, where the runtimes run)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output made by this command")
    p.add_argument("--no-verify", action="store_true", help="skip comparing exported and source outputs")
    p.set_defaults(func=run)


def check_inputs(args, options: dict) -> None:
    """What the user can get wrong, checked on the file system alone (:mod:`nnunet_prune.nnunet.prechecks`,
    :mod:`nnunet_prune.core.runtime_specs`: no torch, nnU-Net or runtime import): the source is a model folder (not a
    fold
    folder) whose chosen folds have the first checkpoint of ``-chk``, the output, ``--magnitude-tau``, the runtime and
    its ``options`` (its writer's :meth:`~nnunet_prune.tools.export.writers.FoldWriter.check_options`).
    :func:`nnunet_prune.tools.export.folder.export_model_folder` checks all of it again, and the rest.

    Raises:
        NnUNetPruneError: as :func:`run` does for these.
    """
    from nnunet_prune.nnunet.prechecks import check_export_output, check_magnitude_tau, model_folder_folds
    from nnunet_prune.tools.export.writers import writer_class

    first = (getattr(args, "checkpoints", None) or ["checkpoint_final.pth"])[0]
    if first.endswith(".pth") and Path(first).name == first:  # (other names: the export's own message)
        model_folder_folds(args.model_folder, args.folds, first)
    check_export_output(args.model_folder, args.output, args.overwrite)
    check_magnitude_tau(args.magnitude_tau)
    writer_class(args.runtime).check_options(options)


def run(args) -> int:
    """Write a slim model folder (:func:`nnunet_prune.tools.export.folder.export_model_folder`) and print its per-fold
    summary.

    Returns:
        the exit code (0 ok; errors raise instead).

    Raises:
        NnUNetPruneError: an output that is, contains or lies inside the source, or that is not empty and not an
            earlier export (or without ``--overwrite``), an invalid ``--magnitude-tau``, or a source that is not a valid
            trained model folder; an unknown or missing runtime, an option the runtime does not take; a runtime
            that does not reproduce PyTorch's segmentation.
    """
    options = {k: v for k, v in (("threads", args.threads), ("precision", args.precision)) if v is not None}
    int8_only = [o for o, v in (("--max-dice-drop", getattr(args, "max_dice_drop", None)),
                                ("--calibration-patches", getattr(args, "calibration_patches", None)),
                                ("-device", getattr(args, "device", None))) if v is not None]
    if int8_only and not getattr(args, "int8", False):
        raise NnUNetPruneError(f"{', '.join(int8_only)} belong to --int8 (INT8 export); add --int8 or leave them out.")
    if getattr(args, "int8", False):
        if args.precision is not None:
            raise NnUNetPruneError("--int8 sets the precision: leave out --precision.")
        if args.runtime != "openvino":
            raise NnUNetPruneError(f"--int8 runs through OpenVINO: add --runtime openvino (got --runtime "
                                   f"{args.runtime}).")
        options["precision"] = "int8"
    check_inputs(args, options)  # before torch, nnU-Net and the runtime are imported
    from nnunet_prune.tools.export.folder import ExportOptions, export_model_folder

    export = ExportOptions(
        folds=args.folds, fp16=args.fp16, magnitude_tau=args.magnitude_tau, prune_bias=args.prune_bias,
        per_layer_normalised=args.per_layer_normalised, overwrite=args.overwrite, verify=not args.no_verify,
        runtime=args.runtime, runtime_options=options, checkpoints=args.checkpoints)
    if options.get("precision") == "int8":
        from nnunet_prune.tools.export.int8 import Int8Options, export_int8

        given = {"max_dice_drop": args.max_dice_drop, "calibration_patches": args.calibration_patches,
                 "device": args.device}
        result = export_int8(args.model_folder, args.output, export,
                             Int8Options(**{k: v for k, v in given.items() if v is not None}))
    else:
        result = export_model_folder(args.model_folder, args.output, export)
    print(result.summary())
    return 0
