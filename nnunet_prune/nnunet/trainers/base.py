"""``nnUNetTrainerPruning``: the base of every pruning trainer (nnU-Net glue): nnU-Net's hooks, delegating.

A method's trainer is a small variant class that sets attributes (nnU-Net's way)::

    class nnUNetTrainerSauron(nnUNetTrainerPruning):
        method_class = SauronMethod

    class nnUNetTrainerSauron_lambda0(nnUNetTrainerSauron):
        method_defaults = {"lambda": 0.0}

What the base adds to ``nnUNetTrainer``, each part in its own module:

* :mod:`~nnunet_prune.nnunet.trainers.preflight` -- before nnU-Net creates the fold folder: the method's
  :class:`~nnunet_prune.methods.base.MethodSettings` resolved from ``method_defaults``, the plans entry
  ``plans['nnunet_prune'][<method>]`` and the method's variable, validated; the plans' architecture; the dense start
  (``start_from_dense``: a trained fold's weights, heads included, checked before anything is written); the method's
  objections to the network. Fine-tuning after a dense start: ``finetune_epochs``, ``finetune_lr_factor``
  (0 epochs = prune and save);
* :class:`~nnunet_prune.nnunet.trainers.driver.SurgeryDriver` -- the method's hooks at nnU-Net's hook points and one
  surgery per decision (rank 0's decision broadcast under DDP, optimizer state sliced, per-group caps
  ``pruning_max_ratio``, ``torch.compile`` / DDP wrappers rebuilt, learning-rate schedule untouched); no surgery in
  the last ``final_epochs_without_pruning`` epochs; the method gets the training through one
  :class:`~nnunet_prune.methods.base.TrainingContext` (ignore label, regions, rank, calibration batches);
* :class:`~nnunet_prune.nnunet.trainers.records.FoldRecords` -- ``pruning_config.json`` (``--c`` with other method
  settings refused), ``pruning_history.json``, ``magnitude_pruning.json``;
* :mod:`~nnunet_prune.nnunet.trainers.logging` / :mod:`~nnunet_prune.nnunet.trainers.plots` -- per-epoch parameter
  count, MACs per patch and per-group widths in nnU-Net's logger (so in the checkpoint and in
  ``progress_pruning.png``), and ``pruning_widths.png`` at the end.

The network is built as the width-adaptive class of its architecture (:mod:`nnunet_prune.surgery.architectures`),
so checkpoints written after pruning load in the predictor, on ``--c`` and on ``--val``. Used on its own (no
``method_class``) it trains the dense network, a like-for-like baseline.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime
from functools import partial

import torch
import torch.distributed as dist
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

from nnunet_prune.core.stats import count_parameters, unwrap
from nnunet_prune.methods.base import MethodSettings, PruningMethod, TrainingContext, TrainingProgress
from nnunet_prune.networks import adaptive_class_name
from nnunet_prune.networks.checkpoints import check_state_dict
from nnunet_prune.nnunet.modelfolder import read_checkpoint
from nnunet_prune.nnunet.settings import RENAMED_VARIABLES, check_variables  # noqa: F401 (RENAMED_VARIABLES: re-exported)
from nnunet_prune.nnunet.trainers import dense, preflight
from nnunet_prune.nnunet.trainers.budget import (
    apply_budget_overrides,
    apply_seed,
    read_budget_overrides,
    seed_dataloaders,
    trainer_seed,
    training_record,
)
from nnunet_prune.nnunet.trainers.driver import SurgeryDriver, broadcast_decision  # noqa: F401 (re-exported)
from nnunet_prune.nnunet.trainers.logging import PruningLocalLogger
from nnunet_prune.nnunet.trainers.plots import plot_widths
from nnunet_prune.nnunet.trainers.records import (  # noqa: F401 (CONFIG_FILE, HISTORY_FILE: re-exported)
    CONFIG_FILE,
    HISTORY_FILE,
    RECORD_KEY,
    STATE_KEY,
    FoldRecords,
    history_epochs,
)
from nnunet_prune.nnunet.trainers.teaching import TeacherMixin
from nnunet_prune.surgery.removal import SurgeryResult


class LossWithExtraTerm(nn.Module):
    """nnU-Net's loss plus the trainer's extra term (training steps only); remembers the last extra value.

    ``trainer``: anything with ``network`` (its ``training`` flag says whether this is a training step) and
    ``extra_training_loss()`` (a scalar tensor or None)."""

    def __init__(self, loss: nn.Module, trainer: nnUNetTrainerPruning):
        super().__init__()
        self.loss = loss
        self._trainer = [trainer]  # a list: not registered as a submodule
        self.last_extra: float | None = None

    def forward(self, output, target):
        """nnU-Net's loss of ``output`` against ``target``, plus the trainer's extra term in training steps."""
        value = self.loss(output, target)
        trainer = self._trainer[0]
        if trainer.network.training and torch.is_grad_enabled():
            extra = trainer.extra_training_loss()
            if extra is not None:
                self.last_extra = float(extra.detach())
                value = value + extra
        return value


def _input_batches(trainer: nnUNetTrainer) -> Iterator[torch.Tensor]:
    """Input batches (B, C, *patch) drawn from nnU-Net's training loader (with its augmentation), endlessly."""
    while True:
        yield next(trainer.dataloader_train)["data"]


class nnUNetTrainerPruning(TeacherMixin, nnUNetTrainer):
    """nnU-Net's trainer plus the generic driver of a pruning method (see the module docstring)."""

    #: the method this trainer runs (None: the dense network, no pruning)
    method_class: type[PruningMethod] | None = None
    #: a variant's values for the method's settings, by public name: fixed (its name says so, e.g.
    #: nnUNetTrainerSauron_lambda0, nnUNetTrainerMagnitude_tau005); the plans entry and the variable set the others
    method_defaults: dict = {}
    #: never shrink a coupling group below this many channels
    pruning_min_width: int = 1
    #: per-group cap: at most this fraction of each group's initial width is removed in all (None: no cap)
    pruning_max_ratio: float | None = None
    #: no surgery after the last this-many epochs: the network nnU-Net saves and validates has trained at its final
    #: width (pruning after the very last epoch left a demo's Sauron model with two classes at Dice 0, never
    #: recovered, although its last pseudo Dice was fine)
    final_epochs_without_pruning: int = 1
    #: start from a trained dense fold (see :mod:`nnunet_prune.nnunet.trainers.dense`) instead of random weights
    start_from_dense: bool = False
    #: with a dense start: epochs of training after the start (0: prune and save, no training; None: nnU-Net's
    #: budget); NNUNET_PRUNE_EPOCHS overrides it
    finetune_epochs: int | None = None
    #: with a dense start: nnU-Net's initial learning rate is multiplied by this
    finetune_lr_factor: float = 1.0
    #: with a dense start and no NNUNET_PRUNE_DENSE_MODEL: the model folders searched for the dense fold, in order
    dense_trainers: tuple[str, ...] = dense.DEFAULT_DENSE_TRAINERS
    #: what a missing dense fold's message says to train (empty: the stock trainer or nnUNetTrainerBudget)
    dense_hint: str = ""
    #: the seed of the training when NNUNET_PRUNE_SEED is not set (None: unseeded, as nnU-Net); recorded in
    #: pruning_config.json (:mod:`nnunet_prune.nnunet.seeding`)
    seed: int | None = None

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        # every setting is read and validated before nnU-Net's __init__ creates the fold folder and its log
        check_variables()  # a misspelt NNUNET_PRUNE_* name first: it would be ignored (e.g. 1000 epochs)
        overrides = read_budget_overrides()
        seed = trainer_seed(type(self))
        self.resolve_settings(plans, configuration, fold, dataset_json)
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.budget_overrides = apply_budget_overrides(self, overrides)
        apply_seed(self, seed)  # before the network is built; the method's draws come from the seed too
        if self.start_from_dense:
            if self.finetune_epochs == 0:  # prune and save: nnU-Net's run_training runs no epoch
                self.num_epochs = 0
            elif self.finetune_epochs is not None and "num_epochs" not in self.budget_overrides:
                self.num_epochs = self.finetune_epochs
            if self.num_epochs:
                self.initial_lr *= self.finetune_lr_factor
        self.method: PruningMethod | None = (self.method_class(self.method_settings, rng=self.method_rng())
                                             if self.method_class is not None else None)
        self._resumed_from_epoch: int | None = None
        self.logger.local_logger = PruningLocalLogger(
            extra_keys=self.method.log_keys if self.method is not None else ())
        self._cut_after_validation = False
        self.driver = SurgeryDriver(
            self.method, get_network=lambda: self.network, set_network=partial(setattr, self, "network"),
            get_optimizer=lambda: self.optimizer, log=self.print_to_log_file,
            patch_size=self.configuration_manager.patch_size, min_width=self.pruning_min_width,
            final_epochs_without_pruning=self.final_epochs_without_pruning, is_ddp=self.is_ddp,
            ddp_device_ids=[self.local_rank] if self.is_ddp else None, compile=self._do_i_compile)

    def resolve_settings(self, plans: dict, configuration: str, fold: int, dataset_json: dict) -> None:
        """Read and validate the method's settings and check the dense start (:mod:`.preflight`), raising
        :class:`~nnunet_prune.NnUNetPruneError` for anything wrong. Called at the start of ``__init__``, BEFORE
        nnU-Net creates the fold folder: a rejected setting leaves nothing behind (an empty ``fold_k`` would break
        ``nnUNetv2_predict`` without ``-f``). Subclasses that read more call ``super()`` first."""
        check_variables()  # unknown or renamed NNUNET_PRUNE_* variables (also when called on its own)
        me = type(self).__name__
        self.method_settings: MethodSettings | None = preflight.method_settings(
            self.method_class, plans, self.method_defaults, environ=os.environ)
        preflight.check_max_ratio(me, self.pruning_max_ratio)
        preflight.check_architecture(me, self.method_class, plans, configuration)
        self._dense: preflight.DenseStart | None = None
        if self.start_from_dense:  # checked now unless the fold has a checkpoint of its own (--c / --val)
            self._dense = preflight.dense_start(me, plans, configuration, fold, dataset_json, os.environ,
                                                self.dense_trainers, self.dense_hint)
        # a function of the plans and the settings alone: also asked when the fold has a checkpoint (nnU-Net may be
        # starting it again without --c; with --c the settings must be the recorded ones anyway)
        if self.method_class is not None and \
                self.method_class.network_problems is not PruningMethod.network_problems:
            network, patch = preflight.plans_network(self.build_network_architecture, plans, configuration,
                                                     dataset_json)
            preflight.check_network(me, configuration, self.method_class(self.method_settings), network, patch)

    def method_rng(self):
        """The method's generator, derived from the seed (:func:`.preflight.method_generator`)."""
        return preflight.method_generator(self.method_settings, self.seed, int(getattr(self, "local_rank", 0) or 0))

    @property
    def dense_path(self) -> str | None:
        """The dense fold's ``checkpoint_final.pth`` a ``start_from_dense`` trainer starts from (else None)."""
        return self._dense.path if self._dense is not None else None

    @property
    def network_module(self) -> nn.Module:
        """The network without DDP / torch.compile wrappers."""
        return unwrap(self.network)

    @property
    def records(self) -> FoldRecords:
        """The fold's JSON records."""
        return FoldRecords(self.output_folder)

    # ------------------------------------------------------------------ nnU-Net's hooks
    @staticmethod
    def build_network_architecture(plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        """The plans' network, as the width-adaptive subclass (also what the predictor builds for our folds)."""
        return get_network_from_plans(
            adaptive_class_name(configuration_manager.network_arch_class_name),
            configuration_manager.network_arch_init_kwargs,
            configuration_manager.network_arch_init_kwargs_req_import,
            num_input_channels, num_output_channels, allow_init=True, deep_supervision=enable_deep_supervision)

    def get_dataloaders(self):
        """nnU-Net's loaders, their augmentation workers seeded
        (:func:`~nnunet_prune.nnunet.trainers.budget.seed_dataloaders`)."""
        train, val = super().get_dataloaders()
        seed_dataloaders(self, train, val)
        return train, val

    def initialize(self):
        """nnU-Net's initialize; with 0 epochs (prune and save) its LR schedule is built for one."""
        if self.num_epochs == 0 and not self.was_initialized:  # prune and save (no epoch): nnU-Net's run_training
            self.num_epochs = 1  # starts, runs no epoch and saves checkpoint_final; its LR schedule needs >= 1 epoch
            try:
                super().initialize()
            finally:
                self.num_epochs = 0
            return
        super().initialize()

    def on_train_start(self):
        """Settings check on ``--c``, nnU-Net's start, the dense start, ``pruning_config.json``, caps, the method
        attached and bound and its one-shot decision applied."""
        if self._resumed_from_epoch is not None:
            s = self.method_settings
            self.records.check_same_method(self._method_config(), type(self).__name__, self.fold,
                                           s.ENV_VAR if s is not None else "")
        super().on_train_start()
        fresh = self._resumed_from_epoch is None
        if fresh and self.start_from_dense:
            self.load_dense_weights()
        if self.local_rank == 0:
            self._write_config()
        initial = self.records.initial_widths()
        self.driver.set_caps(initial if initial is not None else self.driver.graph.widths(), self.pruning_max_ratio)
        if self.method is None:
            return
        result = self.driver.start(_training_context(self), fresh, self._progress)
        if result is not None:
            self._record_start(result)
        if fresh and self.local_rank == 0:
            for problem in self.driver.schedule_warnings(self.num_epochs):
                self.print_to_log_file(f"WARNING: {problem}")

    def load_dense_weights(self) -> None:
        """Load the dense fold (every tensor, heads included) into the network; checked in resolve_settings."""
        start = self._dense
        ckpt = start.checkpoint or preflight.check_dense_start(
            start, type(self).__name__, self.plans_manager.plans, self.configuration_name, self.fold,
            self.dataset_json, self.dense_hint)
        self._dense = replace(start, checkpoint=None)  # the weights live in the network from here on
        self.network_module.load_state_dict(ckpt["network_weights"])
        self.driver.network_reloaded()
        self.inference_allowed_mirroring_axes = ckpt.get("inference_allowed_mirroring_axes",
                                                         self.inference_allowed_mirroring_axes)
        self.print_to_log_file(f"Loaded dense weights from {start.path}")

    def on_train_epoch_start(self):
        """nnU-Net's epoch start, then the method's."""
        super().on_train_epoch_start()
        self.driver.epoch_start(self.current_epoch)

    def train_step(self, batch: dict) -> dict:
        """nnU-Net's training step between the method's step hooks; a held zero pattern is re-applied after it."""
        with self.driver.training_step(batch["data"], batch["target"], self.num_iterations_per_epoch):
            out = super().train_step(batch)
        return out

    def extra_training_loss(self) -> torch.Tensor | None:
        """The method's term added to nnU-Net's loss in the current training step (None: none)."""
        return self.driver.extra_loss()

    def _build_loss(self):
        return LossWithExtraTerm(super()._build_loss(), self)

    def on_epoch_end(self):
        """The method decides, the driver applies (or not, in the last epochs), records go to the logger, then
        nnU-Net's epoch end (checkpoints, plots) and ``pruning_history.json``."""
        epoch = self.current_epoch
        end = self.driver.end_epoch(epoch, self.driver.pruning_allowed(epoch, self.num_epochs), self._progress)
        self._cut_after_validation = end.cut
        local = self.logger.local_logger
        for key, value in end.scalars.items():
            local.add_key(key)  # a key the method did not list in log_keys: from now on
            self.logger.log(key, value, epoch)
        self.logger.log("num_parameters", end.record["num_parameters"], epoch)
        self.logger.log("macs", end.record["macs"], epoch)
        local.log(RECORD_KEY, end.record, epoch)
        local.log(STATE_KEY, self.driver.method_state(), epoch)
        super().on_epoch_end()  # timestamps, checkpoints (with the records above), progress plots
        self._cut_after_validation = False
        if self.local_rank == 0:
            self.records.write_history(type(self).__name__, history_epochs(local.my_fantastic_logging))

    def save_checkpoint(self, filename: str) -> None:
        """nnU-Net's save, except ``checkpoint_best.pth`` in an epoch whose surgery came after its validation: nnU-Net
        would store the pruned weights under the Dice of the unpruned ones."""
        if self._cut_after_validation and os.path.basename(filename) == "checkpoint_best.pth":
            self.print_to_log_file("checkpoint_best.pth not updated: this epoch's pseudo Dice was measured before "
                                   "this epoch's surgery")
            return
        super().save_checkpoint(filename)

    def on_train_end(self):
        """nnU-Net's end (``checkpoint_final.pth``), the method's advice, ``pruning_widths.png``."""
        super().on_train_end()
        records = [r for r in self.logger.local_logger.my_fantastic_logging.get(RECORD_KEY, []) if r]
        main = self.local_rank == 0
        self.driver.finish(records, partial(self._progress, len(records) - 1) if main else None)
        if main and records and records[-1].get("widths"):  # (PSP-Seg's network: no groups)
            # the unpruned widths (records start after epoch 0's surgery) and the groups' parts
            config = self.records.read_config()
            initial, parts = config.get("initial_widths"), config.get("group_parts")
            try:
                plot_widths(records, os.path.join(self.output_folder, "pruning_widths.png"),
                            f"{self.__class__.__name__}: channels per coupling group",
                            initial_widths=initial if isinstance(initial, dict) else None,
                            parts=parts if isinstance(parts, dict) else None)
            except Exception as e:
                self.print_to_log_file(f"could not plot widths: {type(e).__name__}: {e}")

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        """Check the file (one clear error for a damaged one), let nnU-Net load it (widths and blocks from the
        checkpoint), restore the method state.

        Raises:
            NnUNetPruneError: unreadable, not an nnU-Net checkpoint, or weights that do not fit.
        """
        if isinstance(filename_or_checkpoint, str):  # --c / --val: a damaged file is one clear error
            if not self.was_initialized:
                self.initialize()
            checked = read_checkpoint(filename_or_checkpoint, keep_training_state=True)
            check_state_dict(self.network_module, checked["network_weights"], filename_or_checkpoint,
                             self.configuration_manager.patch_size)
            del checked  # nnU-Net reads the file itself (its load_checkpoint fails when given the dict)
            # the network took the checkpoint's blocks / branches: an optimizer built over the unpruned network
            # holds other parameters than the saved optimizer state describes
            current = [id(p) for p in self.network_module.parameters()]
            if [id(p) for g in self.optimizer.param_groups for p in g["params"]] != current:
                self.optimizer, self.lr_scheduler = self.configure_optimizers()
        super().load_checkpoint(filename_or_checkpoint)  # the adaptive network takes the checkpoint's widths
        self._resumed_from_epoch = self.current_epoch
        self.driver.network_reloaded()
        self.driver.load_method_state(self.logger.local_logger.last(STATE_KEY))
        self.print_to_log_file(f"nnunet-prune: loaded {count_parameters(self.network_module):,} parameters, "
                               f"widths {self.driver.graph.widths()}")

    # ------------------------------------------------------------------ what the hooks hand over
    def _progress(self, epoch: int | None = None) -> TrainingProgress:
        """What a method's decision sees (:meth:`SurgeryDriver.progress`) at the current epoch (or ``epoch``)."""
        progress = self.driver.progress(self.current_epoch, self.num_epochs,
                                        self.logger.local_logger.my_fantastic_logging, self.records.read_config())
        return progress if epoch is None else replace(progress, epoch=epoch)

    def _method_config(self) -> dict:
        """The method's settings by public name (``pruning_config.json``'s "method")."""
        return self.method_settings.as_dict() if self.method_settings is not None else {}

    def _write_config(self) -> None:
        """pruning_config.json: what the fold was started with (method settings, start, budget, seed, widths,
        parameters, MACs), kept on ``--c``; each resume is appended under "resumes" with its budget and seed."""
        self.records.start_or_resume(*_config_records(self))
        self.print_to_log_file(f"nnunet-prune: {self.driver.parameters():,} parameters, "
                               f"{self.driver.current_macs() / 1e9:.3f} GMAC per patch; method settings: "
                               f"{self._method_config()}")

    def _record_start(self, result: SurgeryResult) -> None:
        """Log the start surgery; a sparsity record goes to ``magnitude_pruning.json`` in the fold folder."""
        if result.sparsity is not None:
            sp = result.sparsity
            self.print_to_log_file(
                f"Magnitude pruning at tau={sp.tau}: {sp.sparsity_of_nonzero:.2%} of the non-zero conv weights zeroed "
                f"({sp.sparsity_all_parameters:.2%} of all parameters are zero now)")
            if self.local_rank == 0:
                self.records.write_magnitude(sp.as_dict())
        if result.structure_changed:
            self.print_to_log_file(f"nnunet-prune: {self.driver.parameters():,} parameters, "
                                   f"{self.driver.current_macs() / 1e9:.3f} GMAC per patch after the start surgery")


def _training_context(trainer: nnUNetTrainerPruning) -> TrainingContext:
    """The method's :class:`~nnunet_prune.methods.base.TrainingContext` from a trainer: the dataset's ignore label and
    regions, the DDP rank, calibration batches from the training loader, the patch size and the device."""
    lm = trainer.label_manager
    regions = tuple(r if isinstance(r, int) else tuple(r) for r in lm.foreground_regions) if lm.has_regions else None
    return TrainingContext(ignore_label=lm.ignore_label, has_regions=lm.has_regions, foreground_regions=regions,
                           rank=trainer.local_rank, world_size=dist.get_world_size() if trainer.is_ddp else 1,
                           is_ddp=trainer.is_ddp, calibration_batches=partial(_input_batches, trainer),
                           patch_size=tuple(trainer.configuration_manager.patch_size), device=trainer.device)


def _config_records(trainer: nnUNetTrainerPruning) -> tuple[dict, dict | None]:
    """(the start record of ``pruning_config.json``, this run's resume entry or None on a fresh start) of a trainer:
    trainer, method class and settings, start (random or the dense checkpoint with the fine-tuning budget), budget,
    seed, caps, initial widths / group parts / parameters / MACs per patch, patch size."""
    me, method = type(trainer).__name__, trainer._method_config()
    training = training_record(trainer, trainer.budget_overrides)
    driver = trainer.driver
    params, macs, graph = driver.parameters(), driver.current_macs(), driver.graph
    now = datetime.now().astimezone().isoformat(timespec="seconds")
    resume = None if trainer._resumed_from_epoch is None else {
        "time": now, "epoch": trainer._resumed_from_epoch, "trainer": me, **training, "method": method,
        "parameters": params, "macs_per_patch": macs}
    if not trainer.start_from_dense:
        start = {"from": "random initialisation"}
    else:
        start = {"from": "dense", "dense_checkpoint": trainer.dense_path, "finetune_epochs": trainer.num_epochs,
                 "initial_lr": trainer.initial_lr if trainer.num_epochs else None}
    return {"trainer": me, "method": method,
            "method_class": None if trainer.method_class is None else trainer.method_class.__name__,
            "start": start, **training, "min_width": trainer.pruning_min_width, "max_ratio": trainer.pruning_max_ratio,
            "final_epochs_without_pruning": trainer.final_epochs_without_pruning, "initial_widths": graph.widths(),
            "group_parts": {g.name: g.part for g in graph}, "initial_parameters": params,
            "initial_macs_per_patch": macs, "patch_size": list(trainer.configuration_manager.patch_size),
            "started": now, "resumes": []}, resume
