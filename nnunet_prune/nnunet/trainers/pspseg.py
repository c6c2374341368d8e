"""``nnUNetTrainerPSPSeg``: PSP-Seg's progressive branch pruning while nnU-Net trains its redundant U-Net.

The algorithm is :mod:`nnunet_prune.methods.pspseg`; the network :mod:`nnunet_prune.networks.pspseg`, planned by
``-pl PSPSegPlanner_S`` / ``_B`` / ``_L`` (plans ``nnUNetPSPSegPlans_S`` ...). Settings: the defaults of
:class:`~nnunet_prune.methods.pspseg.PSPSegSettings`, then ``plans['nnunet_prune']['pspseg']`` (the L planner writes
k=2), then ``NNUNET_PRUNE_PSPSEG='k=1,patience=10,tolerance=0.01,stop_fraction=0.4,calibration_patches=100'``; the
values used are written to ``pruning_config.json``. The base trainer's
:class:`~nnunet_prune.methods.base.TrainingContext` gives the method its calibration batches (training patches from
nnU-Net's training loader, with its augmentation), the dataset's ignore label and region setting, and the DDP rank
(rank 0 calibrates); this trainer draws ``branch_map.png`` at the end. ``-pretrained_weights``
works as in nnU-Net from an unpruned PSP-Seg checkpoint of the same plans (the paper pre-trains on
TotalSegmentator; see docs/pspseg.md).
"""

from __future__ import annotations

import os

from nnunet_prune.methods.pspseg import PSPSegMethod
from nnunet_prune.nnunet.trainers.base import nnUNetTrainerPruning
from nnunet_prune.nnunet.trainers.plots import plot_branch_map
from nnunet_prune.nnunet.trainers.records import RECORD_KEY
from nnunet_prune.surgery.branches import ALL_BRANCHES, prm_modules


class nnUNetTrainerPSPSeg(nnUNetTrainerPruning):
    """PSP-Seg: FD loss (TR + RL) in training; at each convergence of TR and RL, mask the least important k branches
    of every PRM, then delete or restore them at the next convergence."""

    method_class = PSPSegMethod

    def on_train_end(self):
        """The base end, then ``branch_map.png``."""
        super().on_train_end()
        if self.local_rank != 0:
            return
        records = [r for r in self.logger.local_logger.my_fantastic_logging.get(RECORD_KEY, []) if r]
        kernels = {path: ["x".join(map(str, b.kernel)) for b in prm.__dict__[ALL_BRANCHES].values()]
                   for path, prm in prm_modules(self.network_module).items()}
        try:
            plot_branch_map(records, os.path.join(self.output_folder, "branch_map.png"), kernels,
                            f"{type(self).__name__}: branches per Parallel Redundant Module")
        except Exception as e:  # a picture must not fail a finished training
            self.print_to_log_file(f"could not plot the branch map: {type(e).__name__}: {e}")
