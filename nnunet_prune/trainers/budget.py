"""Training budgets from environment variables, and ``nnUNetTrainerBudget`` (stock training, budget settable).

nnU-Net fixes 1000 epochs x 250 iterations in the trainer; short runs (demos, tests, CPU experiments) need less.
Every trainer of this package reads:

* ``NNUNET_PRUNE_EPOCHS`` -- number of epochs,
* ``NNUNET_PRUNE_ITERS_PER_EPOCH`` -- training iterations per epoch,
* ``NNUNET_PRUNE_VAL_ITERS`` -- validation iterations per epoch.

Unset variables leave nnU-Net's values. The values used are printed to the training log.
"""

from __future__ import annotations

import os

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_prune import NnUNetPruneError

BUDGET_VARS = {
    "NNUNET_PRUNE_EPOCHS": "num_epochs",
    "NNUNET_PRUNE_ITERS_PER_EPOCH": "num_iterations_per_epoch",
    "NNUNET_PRUNE_VAL_ITERS": "num_val_iterations_per_epoch",
}


def apply_budget_overrides(trainer: nnUNetTrainer) -> dict[str, int]:
    """Set the trainer's epoch / iteration counts from the environment; returns what was overridden."""
    applied = {}
    for var, attr in BUDGET_VARS.items():
        value = os.environ.get(var)
        if value is None or value == "":
            continue
        try:
            n = int(value)
        except ValueError:
            n = -1
        if n < 1:
            raise NnUNetPruneError(f"{var}={value!r}: expected a positive whole number.")
        setattr(trainer, attr, n)
        applied[attr] = n
    if applied:
        trainer.print_to_log_file("nnunet-prune budget overrides: " +
                                  ", ".join(f"{k}={v}" for k, v in applied.items()))
    return applied


class nnUNetTrainerBudget(nnUNetTrainer):
    """Stock ``nnUNetTrainer`` whose epoch and iteration counts can be set with NNUNET_PRUNE_* variables."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        apply_budget_overrides(self)
