"""``nnUNetTrainerSTAMP`` and the Lean U-Net paper's variants: gradual channel pruning during nnU-Net training.

The algorithm is :mod:`nnunet_prune.methods.stamp`; the base trainer drives it. Settings: the defaults of
:class:`~nnunet_prune.methods.stamp.StampSettings`, then ``plans['nnunet_prune']['stamp']``, then
``NNUNET_PRUNE_STAMP='per_step=0,recovery_epochs=1,start_fraction=0.1,stop_fraction=0.5,target_channels=0.25'``;
the values used are written to ``pruning_config.json``.
"""

from __future__ import annotations

from nnunet_prune.methods.stamp import StampMethod, StampRandomInBlockMethod, StampWidestBlockMethod
from nnunet_prune.nnunet.trainers.base import nnUNetTrainerPruning


class nnUNetTrainerSTAMP(nnUNetTrainerPruning):
    """STAMP: recovery epochs and pruning steps alternate; the lowest normalised activation-L2 channels go; targeted
    channel dropout in training."""

    method_class = StampMethod


class nnUNetTrainerSTAMP_randomInBlock(nnUNetTrainerSTAMP):
    """LUnet paper §III-B: the criterion picks the groups, random channels of them go."""

    method_class = StampRandomInBlockMethod


class nnUNetTrainerSTAMP_widestBlock(nnUNetTrainerSTAMP):
    """LUnet paper §III-C: no criterion, a random channel of the currently widest group at a time."""

    method_class = StampWidestBlockMethod


class nnUNetTrainerSTAMP_noDropout(nnUNetTrainerSTAMP):
    """Ablation: STAMP without targeted dropout (p_base = 0)."""

    method_defaults = {"p_base": 0.0}
