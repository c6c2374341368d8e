"""``nnunet-prune plans-from-model``: a plans file with a trained fold's architecture, to retrain it from scratch."""

from __future__ import annotations


def add_parser(sub) -> None:
    """Register the ``nnunet-prune plans-from-model`` subcommand on ``sub`` (an argparse subparsers object)."""
    p = sub.add_parser(
        "plans-from-model", help="write a plans file whose network has a trained fold's widths (retrain it)",
        description="Write $nnUNet_preprocessed/<dataset>/NAME.json: the model's plans with one configuration whose "
                    "network has exactly the widths (and block counts) of the fold's checkpoint -- e.g. a Sauron or "
                    "STAMP fold -- reusing the source plans' preprocessed data. Then `nnUNetv2_train D C F -p NAME` "
                    "trains that architecture from random weights with the stock trainer.")
    p.add_argument("model_folder", help="trained model folder (<trainer>__<plans>__<configuration>) or an export")
    p.add_argument("-f", "--fold", required=True, help="the fold whose architecture to take")
    p.add_argument("--plans-name", required=True, metavar="NAME", help="name of the new plans (-p NAME)")
    p.add_argument("--checkpoint", default="checkpoint_final.pth", help="checkpoint file name in the fold folder")
    p.add_argument("--overwrite", action="store_true",
                   help="replace NAME.json if this command wrote it, nobody changed it and no model uses it")
    p.set_defaults(func=run)


def run(args) -> int:
    """Write the plans (:func:`nnunet_prune.tools.plans_from_model.plans_from_model`) and print what was written.

    Returns:
        the exit code (0 ok; errors raise instead).

    Raises:
        NnUNetPruneError: see :func:`~nnunet_prune.tools.plans_from_model.plans_from_model`.
    """
    from nnunet_prune.tools.plans_from_model import plans_from_model

    result = plans_from_model(args.model_folder, args.fold, args.plans_name, checkpoint_name=args.checkpoint,
                              overwrite=args.overwrite)
    print(result.summary())
    return 0
