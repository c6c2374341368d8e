"""Command lines of the tools that run stock nnU-Net scripts and this package's own commands in subprocesses (the
demo, the benchmark)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from nnunet_prune import NnUNetPruneError


def console_script(name: str) -> str:
    """The path of console script ``name`` (e.g. ``nnUNetv2_train``): next to this Python first (a virtual
    environment that is not activated), else on PATH.

    Raises:
        NnUNetPruneError: it is in neither place (nnunetv2 not installed in this environment).
    """
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if not found:
        raise NnUNetPruneError(f"{name} not found next to {sys.executable} or on PATH. Is nnunetv2 installed in "
                               f"this environment?")
    return found


def package_command(*args: str) -> list[str]:
    """``nnunet-prune ARGS`` as a command line run by this Python (``python -m nnunet_prune.cli.main ARGS``)."""
    return [sys.executable, "-m", "nnunet_prune.cli.main", *args]
