"""nnunet-prune: make nnU-Net v2 models small and fast.

Importing this package is cheap (no torch, no nnU-Net): the start-up hook imports it in every Python process that
touches nnU-Net. The public entry points live in submodules:

* :mod:`nnunet_prune.surgery` -- coupling groups of a network and in-place channel removal,
* :mod:`nnunet_prune.networks` -- network classes that adapt their widths to the state dict they load,
* :mod:`nnunet_prune.tools.export.folder` -- slim, standard nnU-Net model folders,
* :mod:`nnunet_prune.tools.report.efficiency` -- parameters, MACs, latency, memory and Dice side by side,
* :mod:`nnunet_prune.nnunet.trainers` / :mod:`nnunet_prune.nnunet.planners` -- the nnU-Net classes (``-tr`` / ``-pl``).
"""

import sys

__version__ = "0.1.0"


class NnUNetPruneError(RuntimeError):
    """An error caused by user input, with a message that says what was wrong and what to do.

    The command-line tools print only the message (no traceback) for this error.
    """


def install_excepthook() -> None:
    """Print only the message of an NnUNetPruneError that reaches the top level (no traceback)."""
    previous = sys.excepthook
    if getattr(previous, "_nnunet_prune", False):
        return

    def hook(exc_type, exc, tb):
        if isinstance(exc, NnUNetPruneError):
            sys.stderr.write(f"\nERROR: {exc}\n")
        else:
            previous(exc_type, exc, tb)

    hook._nnunet_prune = True
    sys.excepthook = hook
