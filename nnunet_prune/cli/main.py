"""``nnunet-prune``: one command with subcommands; each subcommand imports what it needs only when it runs."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from nnunet_prune import NnUNetPruneError, __version__

#: subcommand -> module that defines ``add_parser(subparsers)`` and ``run(args)``
SUBCOMMANDS = {
    "doctor": "nnunet_prune.cli.doctor",
    "dataset": "nnunet_prune.cli.dataset",
    "demo": "nnunet_prune.cli.demo",
    "report": "nnunet_prune.cli.report",
    "export": "nnunet_prune.cli.export",
    "sweep": "nnunet_prune.cli.sweep",
}


def build_parser() -> argparse.ArgumentParser:
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
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except NnUNetPruneError as e:
        if os.environ.get("NNUNET_PRUNE_TRACEBACK"):
            raise
        print(f"ERROR: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
