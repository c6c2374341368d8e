"""``nnUNetTrainerMagnitude_tau<NNN>``: "pruned at tau" as one more nnU-Net model (Yang et al., MIDL 2025).

``nnUNetv2_train D C F -tr nnUNetTrainerMagnitude_tau005`` takes fold F of a trained dense model (the base
trainer's dense start: ``NNUNET_PRUNE_DENSE_MODEL``, else the stock ``nnUNetTrainer`` or ``nnUNetTrainerBudget``
folder), zeroes every conv weight with |w| <= 0.005 (:class:`~nnunet_prune.methods.magnitude.MagnitudeMethod`),
saves it as this trainer's ``checkpoint_final.pth`` and lets nnU-Net run its normal validation, so the folder holds
``validation/summary.json`` per fold and works with cross-validation, ``nnUNetv2_find_best_configuration`` and
ensembling (``--npz``).

``_ft`` variants fine-tune after pruning with the zero pattern held fixed (default 10 epochs at a tenth of
nnU-Net's learning rate; ``NNUNET_PRUNE_EPOCHS`` etc. set the budget). ``nnUNetTrainerMagnitude`` itself takes tau
from ``NNUNET_PRUNE_MAGNITUDE='tau=0.005'`` (or the plans entry); ``prune_bias=1`` and ``per_layer_normalised=1``
there match the sweep's ``--prune-bias`` and ``--per-layer-normalised``.
"""

from __future__ import annotations

import sys

from nnunet_prune.methods.magnitude import MagnitudeMethod
from nnunet_prune.nnunet import names
from nnunet_prune.nnunet.trainers.base import nnUNetTrainerPruning


class nnUNetTrainerMagnitude(nnUNetTrainerPruning):
    """Magnitude-prune a trained dense fold (no training), then nnU-Net's validation."""

    method_class = MagnitudeMethod
    start_from_dense = True
    finetune_epochs = 0


class nnUNetTrainerMagnitude_ft(nnUNetTrainerMagnitude):
    """Magnitude pruning, then fine-tuning with the zero pattern held fixed."""

    finetune_epochs = 10
    finetune_lr_factor = 0.1


def _make_variant(tau_milli: int, finetune: bool) -> type:
    name = names.magnitude_trainer_name(tau_milli, finetune)
    doc = f"Magnitude pruning at tau = {tau_milli / 1000:g}" + (", then fine-tuning with the zero pattern fixed."
                                                               if finetune else ", no retraining.")
    base = nnUNetTrainerMagnitude_ft if finetune else nnUNetTrainerMagnitude
    cls = type(name, (base,), {"method_defaults": {"tau": tau_milli / 1000}, "__doc__": doc,
                               "__module__": __name__})
    cls.__qualname__ = name
    return cls


VARIANTS = [_make_variant(t, ft) for t in names.MAGNITUDE_TAUS_MILLI for ft in (False, True)]
for _cls in VARIANTS:
    setattr(sys.modules[__name__], _cls.__name__, _cls)

__all__ = ["nnUNetTrainerMagnitude", "nnUNetTrainerMagnitude_ft", *[c.__name__ for c in VARIANTS]]
