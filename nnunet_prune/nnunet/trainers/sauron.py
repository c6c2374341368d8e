"""``nnUNetTrainerSauron``: Sauron filter pruning during nnU-Net training (arXiv:2209.13590).

The algorithm is :class:`nnunet_prune.methods.sauron.SauronMethod`; the base trainer drives it. Hyperparameters:
the paper's defaults; override with ``plans['nnunet_prune']['sauron']`` or
``NNUNET_PRUNE_SAURON='tau_max=0.3,kappa=15,rho=5,mu=2,omega=2,stat_batches=10,tau_init=0'``. The ablation variants
``_lambda0/_lambda1/_lambda2`` set lambda. The values used are written to ``pruning_config.json``.
"""

from __future__ import annotations

from nnunet_prune.methods.sauron import SauronMethod
from nnunet_prune.nnunet.trainers.base import nnUNetTrainerPruning


class nnUNetTrainerSauron(nnUNetTrainerPruning):
    """nnU-Net + Sauron: loss + lambda * delta_opt, layer-wise thresholds raised under C1-C4, pruning every epoch."""

    method_class = SauronMethod


class nnUNetTrainerSauron_lambda0(nnUNetTrainerSauron):
    """Ablation: no delta_opt regularisation (lambda = 0), thresholds and pruning unchanged."""

    method_defaults = {"lambda": 0.0}


class nnUNetTrainerSauron_lambda1(nnUNetTrainerSauron):
    """Ablation: lambda = 1."""

    method_defaults = {"lambda": 1.0}


class nnUNetTrainerSauron_lambda2(nnUNetTrainerSauron):
    """Ablation: lambda = 2."""

    method_defaults = {"lambda": 2.0}
