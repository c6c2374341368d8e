"""Names of the nnU-Net classes this package provides, importable without torch or nnU-Net.

The start-up hook, ``nnunet-prune doctor`` and the error messages for unknown names use these lists; a unit test
checks that they match the classes the modules actually define.
"""

from __future__ import annotations

import importlib

#: τ values (in thousandths) for which ``nnUNetTrainerMagnitude_tau<NNN>`` classes exist.
MAGNITUDE_TAUS_MILLI: tuple[int, ...] = (1, 2, 3, 5, 8, 10, 15, 20)


def magnitude_trainer_name(tau_milli: int, finetune: bool = False) -> str:
    return f"nnUNetTrainerMagnitude_tau{tau_milli:03d}" + ("_ft" if finetune else "")


TRAINERS: dict[str, str] = {
    "nnUNetTrainerBudget": "nnunet_prune.trainers.budget",
    "nnUNetTrainerPruning": "nnunet_prune.trainers.base",
    "nnUNetTrainerSauron": "nnunet_prune.trainers.sauron",
    "nnUNetTrainerSauron_lambda0": "nnunet_prune.trainers.sauron",
    "nnUNetTrainerSauron_lambda1": "nnunet_prune.trainers.sauron",
    "nnUNetTrainerSauron_lambda2": "nnunet_prune.trainers.sauron",
    "nnUNetTrainerMagnitude": "nnunet_prune.trainers.magnitude",
    "nnUNetTrainerMagnitude_ft": "nnunet_prune.trainers.magnitude",
    **{magnitude_trainer_name(t, ft): "nnunet_prune.trainers.magnitude"
       for t in MAGNITUDE_TAUS_MILLI for ft in (False, True)},
}

PLANNERS: dict[str, str] = {
    "LUnetPlanner": "nnunet_prune.planners.lunet",
    "LUnetPlanner_16": "nnunet_prune.planners.lunet",
    "LUnetPlanner_8": "nnunet_prune.planners.lunet",
    "LUnetResEncPlanner": "nnunet_prune.planners.lunet",
    "LUnetResEncPlanner_16": "nnunet_prune.planners.lunet",
}


def load_trainer(name: str):
    """Return this package's trainer class called ``name``, or None if it has none of that name."""
    return _load(TRAINERS, name)


def load_planner(name: str):
    """Return this package's planner class called ``name``, or None if it has none of that name."""
    return _load(PLANNERS, name)


def _load(table: dict[str, str], name: str):
    module = table.get(name)
    if module is None:
        return None
    return getattr(importlib.import_module(module), name)
