"""``nnunet-prune``: one command with subcommands; each subcommand imports what it needs only when it runs."""

from __future__ import annotations

import argparse
import importlib
import sys

from nnunet_prune import NnUNetPruneError, __version__
from nnunet_prune.nnunet.settings import check_variables, flag
from nnunet_prune.tools.quiet import filter_warnings

#: subcommand -> module that defines ``add_parser(subparsers)`` and ``run(args)``
SUBCOMMANDS = {
    "doctor": "nnunet_prune.cli.doctor",
    "dataset": "nnunet_prune.cli.dataset",
    "demo": "nnunet_prune.cli.demo",
    "report": "nnunet_prune.cli.report",
    "export": "nnunet_prune.cli.export",
    "sweep": "nnunet_prune.cli.sweep",
    "plans-from-model": "nnunet_prune.cli.plans_from_model",
    "benchmark": "nnunet_prune.cli.benchmark",
    "benchmark-step": "nnunet_prune.cli.benchmark_step",
    "train-folds": "nnunet_prune.cli.trainfolds",
    "pseudo-label": "nnunet_prune.cli.pseudolabel",
}


def build_parser() -> argparse.ArgumentParser:
    """The ``nnunet-prune`` argument parser with every subcommand of :data:`SUBCOMMANDS` registered (this imports the
    subcommand modules, not what they run)."""
    parser = argparse.ArgumentParser(
        prog="nnunet-prune",
        description="Make nnU-Net v2 models small and fast. Trainers (-tr) and planners (-pl) of this package are "
                    "used through the stock nnU-Net commands; this command adds data, export, reports and sweeps.")
    parser.add_argument("--version", action="version", version=f"nnunet-prune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in SUBCOMMANDS.values():
        importlib.import_module(module).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``nnunet-prune`` with ``argv`` (default: ``sys.argv[1:]``).

    Unknown or renamed ``NNUNET_PRUNE_*`` variables stop every subcommand but ``doctor`` before any work
    (:func:`nnunet_prune.nnunet.settings.check_variables`). An :class:`~nnunet_prune.NnUNetPruneError` is printed as one
    ``ERROR:`` line on stderr without a traceback (set ``NNUNET_PRUNE_TRACEBACK`` to re-raise it instead). Invalid
    arguments and ``--version`` exit through argparse's ``SystemExit`` (2 and 0).

    Returns:
        the exit code: the subcommand's (0 ok, 1 e.g. for problems found by ``doctor``), 2 without a subcommand (the
        help is printed) or after an ``NnUNetPruneError``, 130 after Ctrl-C.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    filter_warnings()  # third-party warnings that are not the user's business (nnunet_prune.tools.quiet), by message
    try:
        if args.command != "doctor":  # doctor lists such problems instead of stopping at them
            check_variables()  # a misspelt NNUNET_PRUNE_* name would be ignored: refused before any work
        result = args.func(args)
    except NnUNetPruneError as e:
        if flag("NNUNET_PRUNE_TRACEBACK"):
            raise
        print(f"ERROR: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
