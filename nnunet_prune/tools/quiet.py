"""Output of other packages that is not the user's business in this package's commands, filtered narrowly.

* ``FutureWarning: `torch.jit.interface` is deprecated``: timm (imported by some of nnU-Net's stock trainer modules,
  which nnU-Net imports one by one whenever it looks a trainer up by name) decorates a class with
  ``torch.jit.interface``; recent PyTorch warns at that import. Nothing the user can change.
* nnU-Net's banners in the output of stock commands the demo streams: "INFO: You are using the old nnU-Net default
  plans" (``nnUNetv2_train -p nnUNetPlans``; the demo and the benchmark compare with those plans on purpose) and the
  citation request (kept in the training logs and in the documentation's references).

Only these messages are filtered, by message and module; every other warning and line is shown as before. Importing
this module is cheap (no torch, no nnU-Net).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping

#: (start of the message, category, module that issues it) of each warning filtered in this package's commands
WARNINGS: tuple[tuple[str, type[Warning], str], ...] = (
    ("`torch.jit.interface` is deprecated", FutureWarning, "torch.jit._script"),
)

#: starts of the lines of nnU-Net's banners (after stripping) that the demo leaves out of the output it streams
BANNER_LINES: tuple[str, ...] = (
    "INFO: You are using the old nnU-Net default plans",
    "Please cite the following paper when using nnU-Net",
    "Isensee, F., Jaeger, P. F., Kohl, S. A., Petersen, J., & Maier-Hein, K. H. (2021)",
)


def filter_warnings() -> None:
    """Ignore the warnings of :data:`WARNINGS` in this process (each matched by message start, category and module;
    nothing else)."""
    for message, category, module in WARNINGS:
        warnings.filterwarnings("ignore", message=re.escape(message), category=category, module=re.escape(module))


def quiet_environment(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` for a subprocess (a stock nnU-Net command) with :data:`WARNINGS` added to ``PYTHONWARNINGS`` (the
    user's own entries kept first), so the subprocess filters exactly those warnings too."""
    out = dict(env)
    entries = [e for e in out.get("PYTHONWARNINGS", "").split(",") if e]
    for message, category, module in WARNINGS:
        entry = f"ignore:{message}:{category.__name__}:{module}"
        if entry not in entries:
            entries.append(entry)
    out["PYTHONWARNINGS"] = ",".join(entries)
    return out


def is_banner_line(line: str) -> bool:
    """Whether ``line`` (one line of a subprocess's output) belongs to one of nnU-Net's banners
    (:data:`BANNER_LINES`, or a line with a ``#####`` rule)."""
    return line.strip().startswith(BANNER_LINES) or "#####" in line
