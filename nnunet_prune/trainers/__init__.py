"""nnU-Net trainers of this package (``nnUNetv2_train ... -tr <name>``).

nnU-Net finds them through the shim module that ``nnUNet_extTrainer`` points at (set up at Python start-up by
``_nnunet_prune_hook``); that shim imports everything listed in ``__all__`` here.
"""

from nnunet_prune.trainers import magnitude as _magnitude
from nnunet_prune.trainers.base import nnUNetTrainerPruning
from nnunet_prune.trainers.budget import nnUNetTrainerBudget
from nnunet_prune.trainers.magnitude import nnUNetTrainerMagnitude, nnUNetTrainerMagnitude_ft
from nnunet_prune.trainers.sauron import (
    nnUNetTrainerSauron,
    nnUNetTrainerSauron_lambda0,
    nnUNetTrainerSauron_lambda1,
    nnUNetTrainerSauron_lambda2,
)

globals().update({cls.__name__: cls for cls in _magnitude.VARIANTS})

__all__ = ["nnUNetTrainerBudget", "nnUNetTrainerMagnitude", "nnUNetTrainerMagnitude_ft", "nnUNetTrainerPruning",
           "nnUNetTrainerSauron",
           "nnUNetTrainerSauron_lambda0", "nnUNetTrainerSauron_lambda1", "nnUNetTrainerSauron_lambda2",
           *[cls.__name__ for cls in _magnitude.VARIANTS]]
