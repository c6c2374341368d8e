"""``nnunet-prune pseudo-label``: a new nnU-Net raw dataset from a dataset's labelled cases plus unlabelled images
segmented by a trained model (FLARE's pseudo-label recipe; docs/pseudolabels.md)."""

from __future__ import annotations


def add_parser(sub) -> None:
    """Register the ``nnunet-prune pseudo-label`` subcommand on ``sub`` (an argparse subparsers object)."""
    p = sub.add_parser(
        "pseudo-label", help="write a new dataset: labelled cases + unlabelled images segmented by a trained model",
        description="Segment a folder of unlabelled images with a trained model (stock nnUNetv2_predict, once per "
                    "fold, probabilities averaged) and write a NEW nnU-Net raw dataset holding every labelled "
                    "training case of the source dataset plus the pseudo-labelled cases, with dataset.json and "
                    "pseudo_labels.csv (the folds' agreement per case). Then run stock nnUNetv2_plan_and_preprocess "
                    "and nnUNetv2_train on it. Nothing existing is overwritten.")
    p.add_argument("-d", "--dataset", required=True, help="source dataset (ID or DatasetXXX_Name) in nnUNet_raw")
    p.add_argument("-c", "--configuration", required=True, help="configuration of the model, e.g. 2d or 3d_fullres")
    p.add_argument("-tr", "--trainer", required=True, help="trainer of the model, e.g. nnUNetTrainer")
    p.add_argument("-p", "--plans", default="nnUNetPlans", help="plans identifier (default: nnUNetPlans)")
    p.add_argument("-f", "--folds", nargs="+", default=None,
                   help="folds of the ensemble (default: every fold that has the checkpoint)")
    p.add_argument("-chk", "--checkpoint", default="checkpoint_final.pth",
                   help="checkpoint file of every fold (default: checkpoint_final.pth)")
    p.add_argument("-i", "--images", required=True,
                   help="folder of unlabelled images named <case>_0000<file ending> per channel, as the source's")
    p.add_argument("-o", "--output-id", required=True, metavar="NEW_DATASET_ID",
                   help="ID (1-999) of the new dataset; it must be unused in nnUNet_raw, nnUNet_preprocessed and "
                        "nnUNet_results")
    p.add_argument("--name", default=None, help="name of the new dataset (default: <source name>Pseudo)")
    p.add_argument("--min-agreement", type=float, default=0.0, metavar="X",
                   help="leave out cases whose folds agree on less than this fraction of the foreground (0-1; "
                        "default 0 keeps every case; needs >= 2 folds)")
    p.add_argument("-device", "--device", choices=("cpu", "cuda"), default=None,
                   help="nnUNetv2_predict -device (default: cuda where a GPU driver is present, else cpu)")
    p.set_defaults(func=run)


def run(args) -> int:
    """Write the new dataset (:func:`nnunet_prune.tools.pseudolabel.pseudo_label`) and print its summary.

    Returns:
        the exit code (0 ok; errors raise instead).

    Raises:
        NnUNetPruneError: bad input, before anything is predicted or written (nnU-Net's folders not set, an unknown
            dataset, a missing model folder or fold, an unlabelled folder that is missing, empty or named unlike the
            dataset, a case ID of the training set, a new ID out of 1..999 or in use, --min-agreement outside
            [0, 1]); a failed prediction (the new dataset's files are removed again).
    """
    from nnunet_prune.nnunet.prechecks import gpu_driver_present
    from nnunet_prune.tools.pseudolabel import PseudoLabelRequest, pseudo_label

    device = args.device or ("cuda" if gpu_driver_present() else "cpu")
    result = pseudo_label(PseudoLabelRequest(
        dataset=args.dataset, configuration=args.configuration, trainer=args.trainer, images=args.images,
        new_id=args.output_id, plans=args.plans, folds=args.folds, checkpoint=args.checkpoint, name=args.name,
        min_agreement=args.min_agreement, device=device))
    print(result.summary())
    return 0
