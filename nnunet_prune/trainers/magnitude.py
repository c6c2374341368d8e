"""``nnUNetTrainerMagnitude_tau<NNN>``: "pruned at tau" as one more nnU-Net model.

``nnUNetv2_train D C F -tr nnUNetTrainerMagnitude_tau005`` takes fold F of a trained dense model, zeroes every conv
weight with |w| <= 0.005 (Yang et al., MIDL 2025), saves it as this trainer's
``checkpoint_final.pth`` and lets nnU-Net run its normal validation, so the folder holds ``validation/summary.json``
per fold and works with cross-validation, ``nnUNetv2_find_best_configuration`` and ensembling (``--npz``).

Which dense model: the folder in ``NNUNET_PRUNE_DENSE_MODEL`` (a model folder with fold_F/checkpoint_final.pth), or
by default the stock ``nnUNetTrainer__<plans>__<configuration>`` folder of the same dataset, or, if that has no
fold F, ``nnUNetTrainerBudget__<plans>__<configuration>`` (the stock trainer with a short budget).

``_ft`` variants fine-tune after pruning with the zero pattern held fixed (masks re-applied after every optimizer
step; default 10 epochs at a tenth of nnU-Net's learning rate; ``NNUNET_PRUNE_EPOCHS`` etc. set the budget).
``nnUNetTrainerMagnitude`` itself reads tau from ``NNUNET_PRUNE_MAGNITUDE_TAU``. Biases are pruned too when
``NNUNET_PRUNE_MAGNITUDE_BIAS=1``.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
from os.path import isdir, isfile, join

import torch
from batchgenerators.utilities.file_and_folder_operations import maybe_mkdir_p, save_json

from nnunet_prune import NnUNetPruneError, registry
from nnunet_prune.criteria.magnitude import apply_magnitude_pruning, reapply_masks, weight_masks
from nnunet_prune.modelfolder import check_trained_fold, trained_model_folders
from nnunet_prune.trainers.base import nnUNetTrainerPruning

DENSE_ENV = "NNUNET_PRUNE_DENSE_MODEL"
TAU_ENV = "NNUNET_PRUNE_MAGNITUDE_TAU"
BIAS_ENV = "NNUNET_PRUNE_MAGNITUDE_BIAS"
#: model folders searched for the dense fold when NNUNET_PRUNE_DENSE_MODEL is not set, in this order
DEFAULT_DENSE_TRAINERS = ("nnUNetTrainer", "nnUNetTrainerBudget")


class nnUNetTrainerMagnitude(nnUNetTrainerPruning):
    """Magnitude-prune a trained dense fold at tau (no training unless ``finetune``), then nnU-Net's validation."""

    magnitude_tau: float | None = None
    finetune: bool = False
    finetune_epochs: int = 10
    finetune_lr_factor: float = 0.1

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.finetune:
            if "num_epochs" not in self.budget_overrides:
                self.num_epochs = self.finetune_epochs
            self.initial_lr *= self.finetune_lr_factor
        self._masks = None
        self.sparsity = None

    def method_config(self) -> dict:
        return {"tau": self.tau, "prune_bias": self.prune_bias, "finetune": self.finetune,
                "finetune_epochs": self.num_epochs if self.finetune else 0,
                "finetune_initial_lr": self.initial_lr if self.finetune else None,
                "dense_checkpoint": self.dense_checkpoint()}

    def resolve_settings(self, plans: dict, configuration: str, fold: int, dataset_json: dict) -> None:
        """tau, prune_bias and the dense fold, checked before nnU-Net writes anything (a missing, unreadable or
        mismatching dense checkpoint stops here unless this fold already has its own checkpoint: --c / --val)."""
        self.tau = self.magnitude_tau if self.magnitude_tau is not None else _tau_from_env()
        self.prune_bias = os.environ.get(BIAS_ENV, "").lower() in ("1", "true", "t", "yes")
        self._dense_path = _dense_checkpoint_path(plans, configuration, fold)
        self._dense_ckpt = None
        own = _own_fold_folder(type(self).__name__, plans, configuration, fold)
        if own is not None and any(isfile(join(own, f"checkpoint_{k}.pth")) for k in ("final", "latest", "best")):
            return  # resuming or validating: the dense fold is not needed
        self._dense_ckpt = self._check_dense(plans, configuration, fold, dataset_json)

    def _check_dense(self, plans: dict, configuration: str, fold, dataset_json: dict) -> dict:
        """The dense fold's checkpoint, checked (:func:`~nnunet_prune.modelfolder.check_trained_fold`).

        Raises:
            NnUNetPruneError: it is missing (the message lists the folders trained with these plans), unreadable,
                of other plans or configuration, or its weights do not fit the network.
        """
        if not isfile(self._dense_path):
            from nnunetv2.paths import nnUNet_results

            trained = [] if nnUNet_results is None else [
                str(p) for p in trained_model_folders(join(str(nnUNet_results), plans["dataset_name"]), fold,
                                                      f"__{plans['plans_name']}__{configuration}")
                if "Magnitude" not in p.name]
            raise NnUNetPruneError(
                f"{type(self).__name__} prunes a trained dense model, but {self._dense_path} does not exist. Train the "
                f"dense fold first (nnUNetv2_train ... -tr nnUNetTrainer, or nnUNetTrainerBudget for a short run), "
                f"or point {DENSE_ENV} at the model folder that holds fold_{fold}/checkpoint_final.pth"
                + (f"; trained with these plans: {', '.join(trained)}" if trained else "") + ". Nothing was written.")
        return check_trained_fold(self._dense_path, plans, configuration, dataset_json)

    def dense_checkpoint(self) -> str:
        """Path of the dense fold this trainer prunes (see the module docstring)."""
        return self._dense_path

    def load_dense_weights(self) -> None:
        path = self.dense_checkpoint()
        ckpt = self._dense_ckpt or self._check_dense(self.plans_manager.plans, self.configuration_name, self.fold,
                                                     self.dataset_json)
        self._dense_ckpt = None  # the weights live in the network from here on
        self.network_module.load_state_dict(ckpt["network_weights"])
        self._rewrap_network()
        self.inference_allowed_mirroring_axes = ckpt.get("inference_allowed_mirroring_axes",
                                                         self.inference_allowed_mirroring_axes)
        self.print_to_log_file(f"Loaded dense weights from {path}")

    def prune(self) -> None:
        self.sparsity = apply_magnitude_pruning(self.network_module, self.tau, self.prune_bias)
        self.print_to_log_file(
            f"Magnitude pruning at tau={self.tau}: {self.sparsity.sparsity_of_nonzero:.2%} of the non-zero conv "
            f"weights zeroed ({self.sparsity.sparsity_all_parameters:.2%} of all parameters are zero now)")
        if self.local_rank == 0:
            maybe_mkdir_p(self.output_folder)
            save_json(self.sparsity.as_dict(), join(self.output_folder, "magnitude_pruning.json"), sort_keys=False)

    def run_training(self):
        if not self.was_initialized:
            self.initialize()
        self.load_dense_weights()
        self.prune()
        if self.finetune:
            self._masks = weight_masks(self.network_module)
            return super().run_training()  # on_train_end writes checkpoint_final
        self._write_model_files()
        self.current_epoch = 0
        self.save_checkpoint(join(self.output_folder, "checkpoint_final.pth"))
        self.print_to_log_file("Pruned model saved (no fine-tuning); nnU-Net's validation follows.")

    def _write_model_files(self) -> None:
        """plans.json, dataset.json and the fingerprint, as nnU-Net's on_train_start writes them."""
        if self.local_rank != 0:
            return
        maybe_mkdir_p(self.output_folder)
        save_json(self.plans_manager.plans, join(self.output_folder_base, "plans.json"), sort_keys=False)
        save_json(self.dataset_json, join(self.output_folder_base, "dataset.json"), sort_keys=False)
        fingerprint = join(self.preprocessed_dataset_folder_base, "dataset_fingerprint.json")
        if isfile(fingerprint):
            shutil.copyfile(fingerprint, join(self.output_folder_base, "dataset_fingerprint.json"))
        self.write_config()

    def train_step(self, batch: dict) -> dict:
        out = super().train_step(batch)
        if self._masks is not None:
            reapply_masks(self._masks)  # the zero pattern stays fixed while fine-tuning
        return out

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        super().load_checkpoint(filename_or_checkpoint)
        if self.finetune and isdir(self.output_folder):
            self._masks = weight_masks(self.network_module)


class nnUNetTrainerMagnitude_ft(nnUNetTrainerMagnitude):
    """tau from NNUNET_PRUNE_MAGNITUDE_TAU, then fine-tuning with the zero pattern held fixed."""

    finetune = True


def _dense_checkpoint_path(plans: dict, configuration: str, fold) -> str:
    """NNUNET_PRUNE_DENSE_MODEL/fold_F/checkpoint_final.pth, else the stock nnUNetTrainer folder's."""
    folder = os.environ.get(DENSE_ENV)
    if not folder:
        from nnunetv2.paths import nnUNet_results

        if nnUNet_results is None:
            raise NnUNetPruneError(f"nnUNet_results is not set: set it, or point {DENSE_ENV} at the dense model "
                                   f"folder.")
        candidates = [join(str(nnUNet_results), plans["dataset_name"], f"{t}__{plans['plans_name']}__{configuration}")
                      for t in DEFAULT_DENSE_TRAINERS]
        folder = next((c for c in candidates if isfile(join(c, f"fold_{fold}", "checkpoint_final.pth"))),
                      candidates[0])
    return join(folder, f"fold_{fold}", "checkpoint_final.pth")


def _own_fold_folder(trainer: str, plans: dict, configuration: str, fold) -> str | None:
    """The fold folder nnU-Net's __init__ will use for this trainer (None when nnUNet_results is not set)."""
    from nnunetv2.paths import nnUNet_results

    if nnUNet_results is None:
        return None
    return join(str(nnUNet_results), plans["dataset_name"], f"{trainer}__{plans['plans_name']}__{configuration}",
                f"fold_{fold}")


def _tau_from_env() -> float:
    value = os.environ.get(TAU_ENV)
    try:
        tau = float(value)
    except (TypeError, ValueError):
        tau = -1.0
    if not math.isfinite(tau) or tau < 0:
        raise NnUNetPruneError(
            f"nnUNetTrainerMagnitude needs {TAU_ENV} set to a threshold >= 0 (e.g. 0.005), got {value!r}; or use a "
            f"fixed variant such as {registry.magnitude_trainer_name(5)}.")
    return tau


def _make_variant(tau_milli: int, finetune: bool) -> type:
    name = registry.magnitude_trainer_name(tau_milli, finetune)
    doc = f"Magnitude pruning at tau = {tau_milli / 1000:g}" + (", then fine-tuning with the zero pattern fixed."
                                                               if finetune else ", no retraining.")
    cls = type(name, (nnUNetTrainerMagnitude,), {"magnitude_tau": tau_milli / 1000, "finetune": finetune,
                                                 "__doc__": doc, "__module__": __name__})
    cls.__qualname__ = name
    return cls


VARIANTS = [_make_variant(t, ft) for t in registry.MAGNITUDE_TAUS_MILLI for ft in (False, True)]
for _cls in VARIANTS:
    setattr(sys.modules[__name__], _cls.__name__, _cls)

__all__ = ["nnUNetTrainerMagnitude", "nnUNetTrainerMagnitude_ft", *[c.__name__ for c in VARIANTS]]
