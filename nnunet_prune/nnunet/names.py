"""Names of the nnU-Net classes this package provides.

``PLANNERS`` is a static table (importable without torch or nnU-Net: the planner lookup runs before either is
needed). ``TRAINERS`` (name -> module) is derived from :mod:`nnunet_prune.nnunet.trainers`, which exports every
``nnUNetTrainer*`` class of its modules, so a new method's trainer file needs no edit here. ``nnunet-prune doctor``
and the error messages for unknown names use both; a unit test checks them against the classes defined.
"""

from __future__ import annotations

import importlib

#: τ values (in thousandths) for which ``nnUNetTrainerMagnitude_tau<NNN>`` classes exist.
MAGNITUDE_TAUS_MILLI: tuple[int, ...] = (1, 2, 3, 5, 8, 10, 15, 20)


def magnitude_trainer_name(tau_milli: int, finetune: bool = False) -> str:
    """``nnUNetTrainerMagnitude_tau<NNN>[_ft]`` for tau = NNN / 1000."""
    return f"nnUNetTrainerMagnitude_tau{tau_milli:03d}" + ("_ft" if finetune else "")


#: the suffix of a distilled variant, and the distilled counterpart of nnUNetTrainerBudget (the dense student)
DISTILL_SUFFIX = "_distill"
DISTILL_TRAINER = "nnUNetTrainerDistill"
#: the bases that have no ``_distill`` variant (:data:`DISTILL_TRAINER` is their distilled counterpart)
NOT_DISTILL_VARIANTS = ("nnUNetTrainerBudget", "nnUNetTrainerPruning")


def distilled_trainer_name(trainer: str) -> str:
    """The distilled counterpart of a trainer of this package: ``nnUNetTrainerBudget`` / ``nnUNetTrainerPruning``
    (dense students of any plans) -> ``nnUNetTrainerDistill``; every other trainer ``T`` -> ``T_distill``
    (:mod:`nnunet_prune.nnunet.trainers.distill` defines them)."""
    return DISTILL_TRAINER if trainer in NOT_DISTILL_VARIANTS else trainer + DISTILL_SUFFIX


PLANNERS: dict[str, str] = {
    "LUnetPlanner": "nnunet_prune.nnunet.planners.lunet",
    "LUnetPlanner_16": "nnunet_prune.nnunet.planners.lunet",
    "LUnetPlanner_8": "nnunet_prune.nnunet.planners.lunet",
    "LUnetResEncPlanner": "nnunet_prune.nnunet.planners.lunet",
    "LUnetResEncPlanner_16": "nnunet_prune.nnunet.planners.lunet",
    "PSPSegPlanner_S": "nnunet_prune.nnunet.planners.pspseg",
    "PSPSegPlanner_B": "nnunet_prune.nnunet.planners.pspseg",
    "PSPSegPlanner_L": "nnunet_prune.nnunet.planners.pspseg",
}


def __getattr__(name: str):
    if name == "TRAINERS":  # computed on use: importing the trainers imports torch and nnU-Net
        from nnunet_prune.nnunet import trainers

        return {n: getattr(trainers, n).__module__ for n in trainers.__all__}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_trainer(name: str):
    """Return this package's trainer class called ``name``, or None if it has none of that name."""
    from nnunet_prune.nnunet import trainers

    return getattr(trainers, name, None) if name in trainers.__all__ else None


def load_planner(name: str):
    """Return this package's planner class called ``name``, or None if it has none of that name."""
    return _load(PLANNERS, name)


def _load(table: dict[str, str], name: str):
    module = table.get(name)
    if module is None:
        return None
    return getattr(importlib.import_module(module), name)
