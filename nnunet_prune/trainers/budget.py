"""Training budgets from environment variables, and ``nnUNetTrainerBudget`` (stock training, budget settable).

nnU-Net fixes 1000 epochs x 250 iterations in the trainer; short runs (demos, tests, CPU experiments) need less.
Every trainer of this package reads:

* ``NNUNET_PRUNE_EPOCHS`` -- number of epochs,
* ``NNUNET_PRUNE_ITERS_PER_EPOCH`` -- training iterations per epoch,
* ``NNUNET_PRUNE_VAL_ITERS`` -- validation iterations per epoch,
* ``NNUNET_PRUNE_SAVE_EVERY`` -- ``checkpoint_latest.pth`` every this many epochs (nnU-Net: 50), so a short run can
  be interrupted and continued with ``--c``.

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
    "NNUNET_PRUNE_SAVE_EVERY": "save_every",
}


def read_budget_overrides(environ: dict | None = None) -> dict[str, int]:
    """The trainer attributes the NNUNET_PRUNE_* budget variables set ({attribute: value}); read and validated
    before the trainer writes anything.

    Raises:
        NnUNetPruneError: a variable is set to something other than a positive whole number.
    """
    environ = os.environ if environ is None else environ
    applied = {}
    for var, attr in BUDGET_VARS.items():
        value = environ.get(var)
        if value is None or value == "":
            continue
        try:
            n = int(value)
        except ValueError:
            n = -1
        if n < 1:
            raise NnUNetPruneError(f"{var}={value!r}: expected a positive whole number (nothing was written).")
        applied[attr] = n
    return applied


def apply_budget_overrides(trainer: nnUNetTrainer, overrides: dict[str, int] | None = None) -> dict[str, int]:
    """Set the trainer's epoch / iteration counts (default: from the environment); returns what was overridden."""
    applied = read_budget_overrides() if overrides is None else overrides
    for attr, n in applied.items():
        setattr(trainer, attr, n)
    if applied:
        trainer.print_to_log_file("nnunet-prune budget overrides: " +
                                  ", ".join(f"{k}={v}" for k, v in applied.items()))
    return applied


class nnUNetTrainerBudget(nnUNetTrainer):
    """Stock ``nnUNetTrainer`` whose epoch and iteration counts can be set with NNUNET_PRUNE_* variables."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        overrides = read_budget_overrides()  # a bad value stops here, before nnU-Net creates the fold folder
        super().__init__(plans, configuration, fold, dataset_json, device)
        apply_budget_overrides(self, overrides)
