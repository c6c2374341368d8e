"""Training budgets from environment variables, and ``nnUNetTrainerBudget`` (stock training, budget settable).

nnU-Net fixes 1000 epochs x 250 iterations in the trainer; short runs (demos, tests, CPU experiments) need less.
Every trainer of this package reads:

* ``NNUNET_PRUNE_EPOCHS`` -- number of epochs,
* ``NNUNET_PRUNE_ITERS_PER_EPOCH`` -- training iterations per epoch,
* ``NNUNET_PRUNE_VAL_ITERS`` -- validation iterations per epoch,
* ``NNUNET_PRUNE_SAVE_EVERY`` -- ``checkpoint_latest.pth`` every this many epochs (nnU-Net: 50), so a short run can
  be interrupted and continued with ``--c``;
* ``NNUNET_PRUNE_SEED`` -- the seed of the training (:mod:`nnunet_prune.nnunet.seeding`; else the class attribute
``seed``,
  so a variant class can fix it; neither: unseeded, as nnU-Net).

Unset variables leave nnU-Net's values. The values used are printed to the training log; ``nnUNetTrainerBudget``
records them in the fold's ``pruning_config.json`` (method none), as the pruning trainers do.
"""

from __future__ import annotations

import os
from datetime import datetime

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_prune import NnUNetPruneError
from nnunet_prune.nnunet.seeding import (
    SEED_VAR,
    TRAIN_WORKERS,
    VAL_WORKERS,
    derived_seeds,
    read_seed,
    seed_augmenter_workers,
    seed_everything,
)
from nnunet_prune.nnunet.settings import check_variables
from nnunet_prune.nnunet.trainers.records import CONFIG_FILE, FoldRecords  # noqa: F401 (CONFIG_FILE: re-exported)
from nnunet_prune.nnunet.trainers.teaching import TeacherMixin

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


def trainer_seed(trainer_class: type, environ: dict | None = None) -> int | None:
    """The seed a trainer of ``trainer_class`` trains with: ``NNUNET_PRUNE_SEED``, else the class attribute ``seed``
    (None: unseeded). Read before nnU-Net creates the fold folder.

    Raises:
        NnUNetPruneError: the value is not a whole number from 0 to 2**32 - 1.
    """
    return read_seed(environ, getattr(trainer_class, "seed", None), trainer_class.__name__)


def apply_seed(trainer: nnUNetTrainer, seed: int | None) -> None:
    """Seed the training (called after nnU-Net's ``__init__``, before the network is built) and say so in the
    training log; ``trainer.seed`` is set to ``seed``. Under DDP every rank but rank 0 seeds with a seed derived from
    (``seed``, rank): the ranks must draw different patches (DDP gives every rank rank 0's initial weights)."""
    trainer.seed = seed
    if seed is None:
        trainer.print_to_log_file(f"nnunet-prune: unseeded (set {SEED_VAR} for repeatable runs)")
        return
    rank = int(getattr(trainer, "local_rank", 0) or 0)
    seed_everything(seed if rank == 0 else derived_seeds(seed, 0, rank=rank)[0])
    trainer.print_to_log_file(f"nnunet-prune: seed {seed} (Python, NumPy, PyTorch and the method's draws)")


def seed_dataloaders(trainer: nnUNetTrainer, train, val) -> None:
    """Seed the augmentation worker processes of ``train`` and ``val`` (nnU-Net's loaders, from
    ``get_dataloaders``) from ``trainer.seed``; nothing to do unseeded or with ``nnUNet_n_proc_DA=0``."""
    seed = getattr(trainer, "seed", None)
    if seed is None:
        return
    rank = int(getattr(trainer, "local_rank", 0) or 0)
    seeded = [seed_augmenter_workers(train, seed, TRAIN_WORKERS, rank),
              seed_augmenter_workers(val, seed, VAL_WORKERS, rank)]
    if any(seeded):
        trainer.print_to_log_file("nnunet-prune: augmentation workers seeded; batches reach the training loop in the "
                                  "order the workers finish them, so seeded runs are close, not identical "
                                  "(nnUNet_n_proc_DA=0 makes them identical on the CPU)")


def training_record(trainer: nnUNetTrainer, overrides: dict[str, int]) -> dict:
    """The budget and seed of a training, as ``pruning_config.json`` records them."""
    return {"budget": {"num_epochs": trainer.num_epochs, "num_iterations_per_epoch": trainer.num_iterations_per_epoch,
                       "num_val_iterations_per_epoch": trainer.num_val_iterations_per_epoch,
                       "overridden_by_environment": overrides},
            "seed": getattr(trainer, "seed", None),
            "distillation": trainer.distillation_record() if hasattr(trainer, "distillation_record") else None}


def write_plain_config(trainer: nnUNetTrainer, overrides: dict[str, int]) -> str:
    """``pruning_config.json`` of a fold trained without pruning (method none): trainer, budget, seed, start time;
    a run continued with ``--c`` (current epoch > 0) is appended under "resumes" (:class:`FoldRecords`). Returns the
    file's path."""
    now = datetime.now().astimezone().isoformat(timespec="seconds")
    record = training_record(trainer, overrides)
    resume = ({"time": now, "epoch": trainer.current_epoch, "trainer": type(trainer).__name__, **record}
              if trainer.current_epoch > 0 else None)
    start = {"trainer": type(trainer).__name__, "method": {}, "method_class": None,
             "start": {"from": "random initialisation"}, **record, "started": now, "resumes": []}
    return FoldRecords(trainer.output_folder).start_or_resume(start, resume, resumes_if=None)


class nnUNetTrainerBudget(TeacherMixin, nnUNetTrainer):
    """Stock ``nnUNetTrainer`` whose epoch and iteration counts and seed can be set with NNUNET_PRUNE_* variables
    (see the module); budget and seed are recorded in the fold's ``pruning_config.json``."""

    #: the seed of the training when NNUNET_PRUNE_SEED is not set (None: unseeded, as nnU-Net); a variant class
    #: sets it nnU-Net's way
    seed: int | None = None

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        check_variables()  # a misspelt NNUNET_PRUNE_* name would be ignored (nnU-Net's 1000 epochs): refused first
        overrides = read_budget_overrides()  # a bad value stops here, before nnU-Net creates the fold folder
        seed = trainer_seed(type(self))
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.budget_overrides = apply_budget_overrides(self, overrides)
        apply_seed(self, seed)

    def get_dataloaders(self):
        """nnU-Net's loaders, their augmentation workers seeded (:func:`seed_dataloaders`)."""
        train, val = super().get_dataloaders()
        seed_dataloaders(self, train, val)
        return train, val

    def on_train_start(self):
        """nnU-Net's start, then ``pruning_config.json`` (budget and seed)."""
        super().on_train_start()
        if self.local_rank == 0:
            write_plain_config(self, self.budget_overrides)
