"""Distillation as a capability of every trainer of this package (nnU-Net glue): :class:`TeacherMixin`.

``nnUNetTrainerBudget`` and ``nnUNetTrainerPruning`` (so every pruning trainer) inherit it; it does nothing unless
distillation is on (:class:`~nnunet_prune.nnunet.teacher.DistillSettings`: a variant such as
``nnUNetTrainerSTAMP_distill``, the plans entry, or ``NNUNET_PRUNE_DISTILL``). Then:

* before nnU-Net creates the fold folder, the teacher is found and checked (:func:`~nnunet_prune.nnunet.teacher.
  open_teacher`); a fold that already has a checkpoint (``--c``, ``--val``) is checked when training starts;
* at the start of training the teacher's folds are loaded (:class:`~nnunet_prune.nnunet.teacher.Teacher`; rebuilt on
  ``--c``, never saved: it is no part of the network, the optimizer or the checkpoint); the log says which folds
  and what they cost per step;
* each training step, the teacher runs on the augmented batch nnU-Net trains on, and the loss becomes nnU-Net's loss
  + weight * T^2 KL(teacher || student) at the full-resolution output (:func:`~nnunet_prune.criteria.distillation.
  distillation_kl`; the ignore label's voxels left out; per-region binary KL for region-based training);
* each epoch, the mean KL term is logged (key ``distill_kl`` of nnU-Net's logger, so also in the checkpoint and, for
  the pruning trainers, ``progress_pruning.png``) with the teacher's share of the step time;
* ``pruning_config.json`` records the settings and the teacher; ``--c`` with other settings is refused.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from nnunet_prune import NnUNetPruneError
from nnunet_prune.criteria.distillation import distillation_kl
from nnunet_prune.nnunet.teacher import DistillSettings, Teacher, open_teacher
from nnunet_prune.nnunet.trainers import dense

#: nnU-Net logger key of the per-epoch mean KL term
KL_KEY = "distill_kl"
#: the settings compared on --c (the teacher's folds may be rebuilt from another copy of the same model)
RESUME_KEYS = ("enabled", "weight", "temperature", "folds")


class DistillationLoss(nn.Module):
    """nnU-Net's loss plus ``weight`` x the KL term in training steps that have teacher outputs.

    ``output`` / ``target``: what nnU-Net's loss takes (lists with deep supervision; the first entry is the full
    resolution). The trainer is held in a list (not registered as a submodule)."""

    def __init__(self, loss: nn.Module, trainer: TeacherMixin):
        super().__init__()
        self.loss = loss
        self._trainer = [trainer]

    def forward(self, output, target):
        """nnU-Net's loss of ``output`` against ``target``, plus the distillation term in a distilled training step."""
        value = self.loss(output, target)
        trainer = self._trainer[0]
        teacher_logits = trainer._teacher_logits
        if teacher_logits is None or not (trainer.network.training and torch.is_grad_enabled()):
            return value
        student = output[0] if isinstance(output, (list, tuple)) else output
        full = target[0] if isinstance(target, (list, tuple)) else target
        s = trainer.distill_settings
        kl = distillation_kl(student, teacher_logits, s.temperature, trainer.distillation_mask(full),
                             regions=trainer.label_manager.has_regions)
        trainer._kl_values.append(float(kl.detach()))
        return value + s.weight * kl


def _check_same_teacher(trainer: str, fold, recorded: str | None, found) -> None:
    """On ``--c``: the teacher found now is the one the fold was started with (the same folder, or a folder of the
    same name: a moved results folder).

    Raises:
        NnUNetPruneError: naming both folders.
    """
    if recorded is None or os.path.realpath(recorded) == os.path.realpath(found) or \
            os.path.basename(os.path.normpath(recorded)) == os.path.basename(os.path.normpath(found)):
        return
    raise NnUNetPruneError(f"{trainer} fold {fold} was started with the teacher {recorded}; now {found} would be "
                           f"used. Point NNUNET_PRUNE_TEACHER at the teacher it was started with, or train a new fold "
                           f"without --c.")


class TeacherMixin:
    """Distillation for an ``nnUNetTrainer`` subclass (see the module); placed before ``nnUNetTrainer`` in the bases.

    Class attribute ``distill_defaults``: a variant's fixed settings (``{"enabled": True}`` for ``*_distill``)."""

    #: fixed settings of a variant (its name promises them), e.g. {"enabled": True}
    distill_defaults: dict = {}

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        me = type(self).__name__
        self.distill_settings = DistillSettings.resolve(plans, os.environ, fixed=self.distill_defaults)
        self._teacher_folder = None
        if self.distill_settings.enabled and not dense.has_own_checkpoint(me, plans, configuration, fold):
            own = dense.own_fold_folder(me, plans, configuration, fold)
            self._teacher_folder = open_teacher(me, plans, configuration, dataset_json, self.distill_settings,
                                                os.environ, None if own is None else os.path.dirname(own))
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.teacher: Teacher | None = None
        self._teacher_logits: torch.Tensor | None = None
        self._kl_values: list[float] = []

    def _build_loss(self):
        return DistillationLoss(super()._build_loss(), self)

    def distillation_mask(self, target: torch.Tensor) -> torch.Tensor | None:
        """(B, *spatial) boolean mask of the voxels that count, from nnU-Net's full-resolution target (B, 1, ...) or,
        region-based, (B, regions + 1, ...) whose last channel marks the ignore label; None without ignore label."""
        lm = self.label_manager
        if not lm.has_ignore_label:
            return None
        if lm.has_regions:
            return target[:, -1] == 0
        return target[:, 0] != lm.ignore_label

    def distillation_record(self) -> dict:
        """What ``pruning_config.json`` records: the settings and (when on) the teacher."""
        out = {**self.distill_settings.as_dict()}
        if self.teacher is not None:
            out["teacher"] = self.teacher.describe()
            out["validation_sees_teacher_training_cases"] = any(f != self.fold for f in self.teacher.folds)
            out["loss"] = ("binary KL per region" if self.label_manager.has_regions else "softmax KL") + \
                " at the full-resolution output, ignore label left out"
        return out

    def on_train_start(self):
        """On ``--c`` the recorded distillation settings are checked first (refused if different, on or off); then
        nnU-Net's start (and the base's), then the teacher: found and checked again on ``--c`` (the recorded folder
        and folds), loaded, its cost said in the log."""
        recorded = self._check_resume_settings()
        super().on_train_start()
        if not self.distill_settings.enabled:
            return
        if self.num_epochs == 0 or self.current_epoch >= self.num_epochs:
            self.print_to_log_file("nnunet-prune distillation: no training epoch in this run, so no teacher is loaded")
            return
        me = type(self).__name__
        if self._teacher_folder is None:  # --c: checked now, with the teacher the fold was started with
            with torch.random.fork_rng(devices=[]):  # checking builds a network: the seeded draws stay the same
                self._teacher_folder = open_teacher(
                    me, self.plans_manager.plans, self.configuration_name, self.dataset_json, self.distill_settings,
                    os.environ, os.path.dirname(self.output_folder), folds=recorded.get("folds"))
            _check_same_teacher(me, self.fold, recorded.get("folder"), self._teacher_folder.path)
        self.teacher = Teacher(self._teacher_folder, self.device)
        self._say_teacher()

    def _say_teacher(self) -> None:
        """The teacher's folds and cost in the training log (a warning for a leaking or a small teacher)."""
        teacher, s = self.teacher, self.distill_settings
        from nnunet_prune.core.stats import count_parameters

        self.print_to_log_file(
            f"nnunet-prune distillation: teacher {teacher.folder.path}, folds "
            f"{', '.join(map(str, teacher.folds))} (logits averaged; {len(teacher.folds)} forward passes per "
            f"step, {teacher.macs_per_patch() / 1e9:.3f} GMAC per patch in all, no backward); loss = nnU-Net's loss "
            f"+ {s.weight} x T^2 KL at T={s.temperature}")
        others = [f for f in teacher.folds if f != self.fold]
        if others and self.fold != "all":
            self.print_to_log_file(
                f"WARNING: teacher fold(s) {', '.join(map(str, others))} trained on this fold's validation cases: its "
                f"validation Dice (validation/summary.json) is optimistic. Judge the student on a held-out test set, "
                f"or use only fold {self.fold} of the teacher ({DistillSettings.ENV_VAR}='folds={self.fold}').")
        student = count_parameters(self.network)
        prunes = getattr(self, "method_class", None) is not None  # a pruning student starts as large as its teacher
        if teacher.parameters < student or (teacher.parameters == student and not prunes):
            self.print_to_log_file(f"WARNING: the teacher ({teacher.parameters:,} parameters per fold) is not larger "
                                   f"than the student ({student:,}): is {teacher.folder.path} the dense model?")
        logger = self.logger.local_logger
        if hasattr(logger, "add_key"):
            logger.add_key(KL_KEY)

    def _check_resume_settings(self) -> dict:
        """On ``--c``: refuse distillation settings other than the recorded ones (switched on or off included), before
        nnU-Net's start writes anything. Returns the recorded teacher ({"folder", "folds"}; {} when none)."""
        if self.current_epoch == 0:
            return {}
        from nnunet_prune.nnunet.trainers.records import FoldRecords

        recorded = FoldRecords(self.output_folder).read_config().get("distillation")
        if not isinstance(recorded, dict):
            return {}
        now = self.distill_settings.as_dict()
        changed = [f"{k}: {recorded[k]!r} at the start, {now[k]!r} now" for k in RESUME_KEYS
                   if k in recorded and recorded[k] != now[k]]
        if changed:
            raise NnUNetPruneError(
                f"{type(self).__name__} fold {self.fold} was started with other distillation settings "
                f"({'; '.join(changed)}). Continue (--c) with the settings it was started with "
                f"({DistillSettings.ENV_VAR}, plans entry), or train a new fold without --c. Nothing was changed.")
        teacher = recorded.get("teacher")
        return teacher if isinstance(teacher, dict) else {}

    def train_step(self, batch: dict) -> dict:
        """The teacher's outputs on this batch (no gradient), then nnU-Net's step (whose loss adds the KL term)."""
        if self.teacher is None:
            return super().train_step(batch)
        data = batch["data"].to(self.device, non_blocking=True)
        self._teacher_logits = self.teacher(data)
        try:
            return super().train_step({**batch, "data": data})
        finally:
            self._teacher_logits = None

    def on_train_epoch_end(self, train_outputs):
        """nnU-Net's epoch end, then the epoch's mean KL term (all ranks) in the logger and the training log."""
        super().on_train_epoch_end(train_outputs)
        if self.teacher is None:
            return
        values, self._kl_values = self._kl_values, []
        seconds, calls = self.teacher.take_seconds()
        if self.is_ddp:
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, values)
            values = [v for part in gathered for v in part]
        mean = float(np.mean(values)) if values else float("nan")
        log = self.logger.local_logger.my_fantastic_logging
        column = log.setdefault(KL_KEY, [])
        column += [None] * max(0, self.current_epoch - len(column))  # e.g. resumed from a checkpoint without it
        self.logger.log(KL_KEY, mean, self.current_epoch)
        self.print_to_log_file(f"distillation KL {mean:.4f} (x weight {self.distill_settings.weight}); teacher "
                               f"{1000 * seconds / max(calls, 1):.0f} ms per step")
