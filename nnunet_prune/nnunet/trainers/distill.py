"""Distilled trainers: ``nnUNetTrainerDistill`` (a dense student of any plans) and a ``<trainer>_distill`` variant of
every other trainer of this package (e.g. ``nnUNetTrainerSTAMP_distill``,
``nnUNetTrainerStructuredL2_iterative_distill``, ``nnUNetTrainerPSPSeg_distill``).

Each is its base trainer with distillation switched on and fixed (the name promises it; ``NNUNET_PRUNE_DISTILL=0``
is refused for them): the student learns from the dense model's folds in addition to nnU-Net's loss
(:mod:`nnunet_prune.nnunet.trainers.teaching`). Any trainer of this package distils without a variant too, with
``NNUNET_PRUNE_DISTILL=1`` or the plans entry ``plans['nnunet_prune']['distill']``; the variants keep distilled and
undistilled folds in separate model folders. docs/distillation.md.
"""

from __future__ import annotations

import importlib
import pkgutil

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_prune.nnunet import trainers as _package
from nnunet_prune.nnunet.names import NOT_DISTILL_VARIANTS, distilled_trainer_name
from nnunet_prune.nnunet.trainers.base import nnUNetTrainerPruning

#: the variant attribute that switches distillation on and fixes it
ON = {"enabled": True}
#: (nor the fixed-tau magnitude variants: ``nnUNetTrainerMagnitude_ft_distill`` with ``NNUNET_PRUNE_MAGNITUDE`` is
#: their distilled form; nor a trainer that prunes a dense fold and trains no epoch, e.g. nnUNetTrainerMagnitude)
#: modules of the trainers package that define no trainer to vary (and this one)
SKIPPED_MODULES = ("distill", "dense", "driver", "logging", "plots", "preflight", "records", "teaching")


class nnUNetTrainerDistill(nnUNetTrainerPruning):
    """A dense student (no pruning) of any plans, e.g. LUnet (``-p nnUNetLUnetPlans_16``) or PSP-Seg, that learns
    from the dense model's folds in addition to nnU-Net's loss; the distilled counterpart of
    ``nnUNetTrainerBudget``."""

    distill_defaults = ON


def _variant(base: type) -> type:
    """``<base>_distill``: ``base`` with distillation on and fixed."""
    doc = (f"``{base.__name__}`` with distillation from the dense model's folds (see "
           f":mod:`nnunet_prune.nnunet.trainers.distill`).")
    return type(distilled_trainer_name(base.__name__), (base,),
                {"distill_defaults": ON, "__module__": __name__, "__doc__": doc})


def _bases() -> list[type]:
    """Every trainer class the other modules of the package define, in module order."""
    found = []
    for info in sorted(pkgutil.iter_modules(_package.__path__), key=lambda i: i.name):
        if info.name in SKIPPED_MODULES or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{_package.__name__}.{info.name}")
        found += [obj for name, obj in vars(module).items()
                  if isinstance(obj, type) and issubclass(obj, nnUNetTrainer) and obj.__module__ == module.__name__
                  and name.startswith("nnUNetTrainer") and name not in NOT_DISTILL_VARIANTS and "_tau" not in name
                  and not (getattr(obj, "start_from_dense", False) and getattr(obj, "finetune_epochs", None) == 0)]
    return found


_VARIANTS = {v.__name__: v for v in map(_variant, _bases())}
globals().update(_VARIANTS)
