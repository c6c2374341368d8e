"""``nnunet-prune dataset``: write a demo dataset into nnUNet_raw."""

from __future__ import annotations


def add_parser(sub) -> None:
    """Register the ``nnunet-prune dataset`` subcommand (kinds ``synthetic`` and ``lits117``) on ``sub`` (an argparse
    subparsers object)."""
    p = sub.add_parser("dataset", help="create a demo dataset (synthetic phantom or LiTS-117 CT) in nnUNet_raw",
                       description="Create a demo dataset as an nnU-Net raw dataset. Refuses IDs already in use.")
    kinds = p.add_subparsers(dest="kind", metavar="KIND", required=True)

    s = kinds.add_parser("synthetic", help="procedurally generated CT-like phantom (offline, deterministic)")
    s.add_argument("-d", "--dataset-id", type=int, required=True, help="nnU-Net dataset ID (1-999)")
    s.add_argument("--dim", type=int, choices=(2, 3), default=2, help="2D slices or 3D volumes (default: 2)")
    s.add_argument("--cases", type=int, default=20, help="training cases (default: 20)")
    s.add_argument("--test-cases", type=int, default=5, help="held-out cases in imagesTs/labelsTs (default: 5)")
    s.add_argument("--size", type=int, default=None, help="edge length in voxels (default: 64 in 2D, 32 in 3D)")
    s.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    s.add_argument("--raw", default=None, help="nnU-Net raw folder (default: $nnUNet_raw)")
    s.set_defaults(func=run_synthetic)

    lits = kinds.add_parser("lits117", help="LiTS case 117 (128^3 liver/tumour CT crop, downloaded from PyPI)")
    lits.add_argument("-d", "--dataset-id", type=int, required=True, help="nnU-Net dataset ID (1-999)")
    lits.add_argument("--slab", type=int, default=8, help="slices per case (default: 8, giving 16 cases)")
    lits.add_argument("--test-every", type=int, default=4, help="hold out every n-th slab (default: 4)")
    lits.add_argument("--wheel", default=None, help="use this copy of the liver-ct-segmentation-package 1.6.0 "
                                                    "wheel instead of downloading it")
    lits.add_argument("--raw", default=None, help="nnU-Net raw folder (default: $nnUNet_raw)")
    lits.set_defaults(func=run_lits)


def run_synthetic(args) -> int:
    """Write the synthetic phantom into nnUNet_raw (``nnunet-prune dataset synthetic``) and print its folder.

    Returns:
        the exit code (0 ok; errors raise instead).

    Raises:
        NnUNetPruneError: an invalid ``--dim``, ``--cases``, ``--test-cases``, ``--size`` or dataset ID, an ID already
            in use, no ``--raw`` and no ``$nnUNet_raw``, or a raw folder that cannot be written to.
    """
    from nnunet_prune.tools.datasets.synthetic import create_synthetic_dataset

    folder = create_synthetic_dataset(args.dataset_id, dim=args.dim, cases=args.cases, test_cases=args.test_cases,
                                      seed=args.seed, size=args.size, raw=args.raw)
    print(f"Wrote {folder} ({args.cases} training, {args.test_cases} test cases).")
    return 0


def run_lits(args) -> int:
    """Write the LiTS-117 slab dataset into nnUNet_raw (``nnunet-prune dataset lits117``) and print its folder.

    The data wheel is taken from ``--wheel``, the cache, or downloaded from PyPI
    (:mod:`nnunet_prune.tools.datasets.lits117`).

    Returns:
        the exit code (0 ok; errors raise instead).

    Raises:
        NnUNetPruneError: an invalid ``--slab`` or ``--test-every``, a missing ``--wheel`` file, a failed download, a
            wheel that is not the expected one, an invalid or used dataset ID, no ``--raw`` and no ``$nnUNet_raw``, or
            a raw folder that cannot be written to.
    """
    from nnunet_prune.tools.datasets.lits117 import create_lits117_dataset

    folder = create_lits117_dataset(args.dataset_id, slab=args.slab, test_every=args.test_every, wheel=args.wheel,
                                    raw=args.raw)
    print(f"Wrote {folder}.")
    return 0
