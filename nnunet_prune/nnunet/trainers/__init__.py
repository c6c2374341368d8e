"""nnU-Net trainers of this package (``nnUNetv2_train ... -tr <name>``).

nnU-Net finds them through the shim module that ``nnUNet_extTrainer`` points at (set up at Python start-up by
``_nnunet_prune_hook``); that shim imports everything listed in ``__all__`` here. Every module of this package is
imported and every ``nnUNetTrainer*`` class it defines (variant classes made in a loop included) is exported: a new
method's ``trainers/<method>.py`` needs no edit here or in :mod:`nnunet_prune.nnunet.names`.
"""

import importlib as _importlib
import pkgutil as _pkgutil

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer as _nnUNetTrainer

#: modules of this package that hold no trainer
_HELPERS = {"dense", "driver", "logging", "plots", "preflight", "records", "teaching"}


def _discover() -> dict[str, type]:
    found: dict[str, type] = {}
    for info in sorted(_pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name in _HELPERS or info.name.startswith("_"):
            continue
        module = _importlib.import_module(f"{__name__}.{info.name}")
        for name, obj in vars(module).items():
            if (isinstance(obj, type) and issubclass(obj, _nnUNetTrainer) and obj.__module__ == module.__name__
                    and name.startswith("nnUNetTrainer")):
                found[name] = obj
    return found


_TRAINERS = _discover()
globals().update(_TRAINERS)
__all__ = sorted(_TRAINERS)
