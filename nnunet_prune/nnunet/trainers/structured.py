"""Structured filter pruning of a trained fold (L1, L2, network slimming; one-shot or iterative) and network
slimming's sparsity training, as nnU-Net trainers.

``nnUNetv2_train D C F -tr nnUNetTrainerStructuredL2_iterative`` takes fold F of a trained model (the base trainer's
dense start: ``NNUNET_PRUNE_DENSE_MODEL``, else the stock ``nnUNetTrainer`` or ``nnUNetTrainerBudget`` folder of the
same plans and configuration), loads every weight (heads included), removes filters
(:class:`~nnunet_prune.methods.structured.StructuredMethod`), fine-tunes with nnU-Net's loop (100 epochs at a tenth
of nnU-Net's learning rate unless ``NNUNET_PRUNE_EPOCHS`` says otherwise) and ends with nnU-Net's validation: one
more model for cross-validation, ``nnUNetv2_find_best_configuration`` and ensembling.

Network slimming needs gammas trained with an L1 penalty: ``nnUNetTrainerSlimmingSparsity`` is nnU-Net's trainer plus
lambda * sum |gamma| (``NNUNET_PRUNE_SLIMMING='lambda=1e-4'``); the ``StructuredSlimming`` trainers look for its
folder first. Settings of the pruning: ``NNUNET_PRUNE_STRUCTURED='pruning_ratio=0.9,ratio_of=params'`` or the plans
entry ``structured``; the variant names fix criterion and schedule.
"""

from __future__ import annotations

from nnunet_prune.methods.structured import SlimmingSparsityMethod, StructuredMethod
from nnunet_prune.nnunet.trainers import dense
from nnunet_prune.nnunet.trainers.base import nnUNetTrainerPruning

#: the sparsity-trained folder comes first for the slimming trainers
SLIMMING_DENSE_TRAINERS = ("nnUNetTrainerSlimmingSparsity", "nnUNetTrainerSlimmingSparsity_fromDense",
                           *dense.DEFAULT_DENSE_TRAINERS)


class nnUNetTrainerStructured(nnUNetTrainerPruning):
    """Structured pruning of a trained fold, then fine-tuning; criterion and schedule from the settings."""

    method_class = StructuredMethod
    start_from_dense = True
    finetune_epochs = 100
    finetune_lr_factor = 0.1


class nnUNetTrainerStructuredL1_oneshot(nnUNetTrainerStructured):
    """L1 filter norms, the whole target at the start."""

    method_defaults = {"criterion": "l1", "schedule": "oneshot"}


class nnUNetTrainerStructuredL1_iterative(nnUNetTrainerStructured):
    """L1 filter norms, 5 % of the remaining filters per step."""

    method_defaults = {"criterion": "l1", "schedule": "iterative"}


class nnUNetTrainerStructuredL2_oneshot(nnUNetTrainerStructured):
    """L2 filter norms, the whole target at the start."""

    method_defaults = {"criterion": "l2", "schedule": "oneshot"}


class nnUNetTrainerStructuredL2_iterative(nnUNetTrainerStructured):
    """L2 filter norms, 5 % of the remaining filters per step (the paper's best)."""

    method_defaults = {"criterion": "l2", "schedule": "iterative"}


class nnUNetTrainerStructuredSlimming_oneshot(nnUNetTrainerStructured):
    """Network slimming (|gamma|), the whole target at the start; the dense fold of nnUNetTrainerSlimmingSparsity
    first."""

    method_defaults = {"criterion": "slimming", "schedule": "oneshot"}
    dense_trainers = SLIMMING_DENSE_TRAINERS
    dense_hint = ("network slimming ranks gammas trained sparse: nnUNetv2_train ... -tr nnUNetTrainerSlimmingSparsity, "
                  "or nnUNetTrainerSlimmingSparsity_fromDense on a trained fold")

    def load_dense_weights(self) -> None:
        """The dense start, with a warning when its gammas were not trained sparse."""
        super().load_dense_weights()
        if "SlimmingSparsity" not in str(self.dense_path):
            self.print_to_log_file(
                "WARNING: network slimming ranks |gamma| trained with an L1 penalty, but the dense fold "
                f"{self.dense_path} was not trained by nnUNetTrainerSlimmingSparsity: the ranking is that of an "
                "ordinary model.")


class nnUNetTrainerStructuredSlimming_iterative(nnUNetTrainerStructuredSlimming_oneshot):
    """Network slimming, 5 % of the remaining filters per step."""

    method_defaults = {"criterion": "slimming", "schedule": "iterative"}


class nnUNetTrainerSlimmingSparsity(nnUNetTrainerPruning):
    """nnU-Net's training plus lambda * sum |gamma| over the norm layers (Liu et al. 2017); removes nothing."""

    method_class = SlimmingSparsityMethod


class nnUNetTrainerSlimmingSparsity_fromDense(nnUNetTrainerSlimmingSparsity):
    """Sparsity training that starts from a trained dense fold (100 epochs at a tenth of the learning rate) instead of
    from scratch: cheaper when a model exists already."""

    start_from_dense = True
    finetune_epochs = 100
    finetune_lr_factor = 0.1
