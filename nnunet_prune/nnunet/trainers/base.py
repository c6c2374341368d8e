"""``nnUNetTrainerPruning``: the base of every pruning trainer and the one driver of every method (nnU-Net glue).

A method's trainer is a small variant class that sets attributes (nnU-Net's way)::

    class nnUNetTrainerSauron(nnUNetTrainerPruning):
        method_class = SauronMethod

    class nnUNetTrainerSauron_lambda0(nnUNetTrainerSauron):
        method_defaults = {"lambda": 0.0}

What the base adds to ``nnUNetTrainer``:

* settings: the method's :class:`~nnunet_prune.methods.base.MethodSettings`, resolved from ``method_defaults``,
  the plans entry ``plans['nnunet_prune'][<method>]`` and the method's variable, validated before nnU-Net creates
  the fold folder, recorded in ``pruning_config.json``; ``--c`` with other settings is refused;
* a dense start for every method (``start_from_dense``: a trained fold's weights, heads included, checked before
  anything is written) and fine-tuning (``finetune_epochs``, ``finetune_lr_factor``; 0 epochs = prune and save);
* the driver: the method's hooks at nnU-Net's hook points (module docstring of :mod:`nnunet_prune.methods.base`)
  and one surgery call per decision (:func:`~nnunet_prune.surgery.removal.apply_removal`: rank 0's decision
  broadcast under DDP, optimizer state sliced, per-group caps ``pruning_max_ratio``, ``torch.compile`` / DDP wrappers
  rebuilt, learning-rate schedule untouched); no surgery in the last ``final_epochs_without_pruning`` epochs;
* the network is built as the width-adaptive class of its architecture (:mod:`nnunet_prune.surgery.architectures`),
  so checkpoints written after pruning load in the predictor, on ``--c`` and on ``--val``;
* per-epoch parameter count, MACs per patch and per-group widths in nnU-Net's logger (so in the checkpoint and in
  ``progress_pruning.png``), in ``pruning_history.json`` in the fold folder, and ``pruning_widths.png`` at the end.

Used on its own (no ``method_class``) it trains the dense network, a like-for-like baseline.
"""

from __future__ import annotations

import gc
import json
import os
from dataclasses import replace
from datetime import datetime
from time import time

import torch
import torch.distributed as dist
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from nnunet_prune import NnUNetPruneError
from nnunet_prune.core.stats import count_macs, count_parameters, unwrap
from nnunet_prune.methods.base import MethodSettings, PruningMethod, TrainingProgress
from nnunet_prune.networks import adaptive_class_name
from nnunet_prune.networks.checkpoints import check_state_dict
from nnunet_prune.nnunet.modelfolder import read_checkpoint
from nnunet_prune.nnunet.seeding import method_rng
from nnunet_prune.nnunet.settings import RENAMED_VARIABLES, check_variables  # noqa: F401 (RENAMED_VARIABLES: re-exported)
from nnunet_prune.nnunet.trainers import dense
from nnunet_prune.nnunet.trainers.budget import (
    apply_budget_overrides,
    apply_seed,
    read_budget_overrides,
    seed_dataloaders,
    trainer_seed,
)
from nnunet_prune.nnunet.trainers.logging import RECORD_KEY, STATE_KEY, PruningLocalLogger, plot_widths
from nnunet_prune.surgery import ChannelGraph, build_channel_graph
from nnunet_prune.surgery.architectures import masked_blocks
from nnunet_prune.surgery.graph import UnsupportedNetworkError
from nnunet_prune.surgery.masks import hold_masks, zero_pattern
from nnunet_prune.surgery.prune import caps_from_ratio
from nnunet_prune.surgery.removal import Removal, SurgeryResult, apply_removal

HISTORY_FILE = "pruning_history.json"
CONFIG_FILE = "pruning_config.json"


class LossWithExtraTerm(nn.Module):
    """nnU-Net's loss plus the trainer's extra term (training steps only); remembers the last extra value."""

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


def broadcast_decision(obj, src: int = 0):
    """Under DDP, every rank gets rank ``src``'s object (pruning decisions are made once); else a no-op."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj if dist.get_rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


class nnUNetTrainerPruning(nnUNetTrainer):
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
        self._graph: ChannelGraph | None = None
        self._macs_cache: tuple[tuple, int] | None = None
        self._epoch_removed: dict[str, list[int]] = {}
        self._epoch_blocks: list[str] = []
        self._held_masks = None
        self._step = 0
        self._caps: dict[str, int] | None = None
        self._cut_after_validation = False

    # ------------------------------------------------------------------ settings
    def resolve_settings(self, plans: dict, configuration: str, fold: int, dataset_json: dict) -> None:
        """Read and validate the method's settings and check the dense start, raising
        :class:`~nnunet_prune.NnUNetPruneError` for anything wrong. Called at the start of ``__init__``, BEFORE
        nnU-Net creates the fold folder: a rejected setting leaves nothing behind (an empty ``fold_k`` would break
        ``nnUNetv2_predict`` without ``-f``). Subclasses that read more call ``super()`` first."""
        check_variables()  # unknown or renamed NNUNET_PRUNE_* variables (also when called on its own)
        self.method_settings: MethodSettings | None = None
        if self.method_class is not None:
            self.method_settings = self.method_class.settings_class.resolve(plans, environ=os.environ,
                                                                            fixed=self.method_defaults)
        if self.pruning_max_ratio is not None and not 0 <= self.pruning_max_ratio <= 1:
            raise NnUNetPruneError(f"{type(self).__name__}.pruning_max_ratio must be in [0, 1], got "
                                   f"{self.pruning_max_ratio}.")
        self.check_architecture(plans, configuration)
        self._dense_path = self._dense_ckpt = None
        resuming = dense.has_own_checkpoint(type(self).__name__, plans, configuration, fold)  # --c / --val
        if self.start_from_dense:
            self._dense_path = dense.dense_checkpoint_path(plans, configuration, fold, os.environ,
                                                           self.dense_trainers)
            if not resuming:
                self._dense_ckpt = self.check_dense(plans, configuration, fold, dataset_json)
        # a function of the plans and the settings alone: also asked when the fold has a checkpoint (nnU-Net may be
        # starting it again without --c; with --c the settings must be the recorded ones anyway)
        if self.method_class is not None and \
                self.method_class.network_problems is not PruningMethod.network_problems:
            self.check_network(plans, configuration, dataset_json)

    def check_architecture(self, plans: dict, configuration: str) -> None:
        """The plans' network must be one whose parts this trainer's method removes (channels, weights or branches,
        from the architecture registry): a channel-pruning trainer on PSP-Seg plans, or PSP-Seg's trainer on a
        U-Net's plans, stops here with the planner or trainer to use.

        Raises:
            NnUNetPruneError: naming the plans, the network and what to run instead.
        """
        if self.method_class is None:
            return
        from nnunet_prune.surgery import architectures

        try:
            name = PlansManager(plans).get_configuration(configuration).network_arch_class_name
            arch = architectures.for_class_name(name)
        except (UnsupportedNetworkError, KeyError, ValueError, TypeError):
            return  # an unsupported network is reported when the network is built
        removes = self.method_class.removes
        if removes in arch.removes:
            return
        me, plans_name = type(self).__name__, plans.get("plans_name", "?")
        dataset = str(plans.get("dataset_name", "?"))
        dataset_id = dataset[len("Dataset"):len("Dataset") + 3] if dataset.startswith("Dataset") else dataset
        network = name.rpartition(".")[2]
        if removes == "branches":
            raise NnUNetPruneError(
                f"{me} prunes the parallel branches of PSP-Seg's network, but plans {plans_name} build a {network}. "
                f"Plan PSP-Seg first: `nnUNetv2_plan_and_preprocess -d {dataset_id} -pl PSPSegPlanner_S` (or "
                f"PSPSegPlanner_B, PSPSegPlanner_L), then train with `-p nnUNetPSPSegPlans_S`. Nothing was written.")
        raise NnUNetPruneError(
            f"{me} removes {removes} of nnU-Net's U-Nets, but plans {plans_name} build {network} (its parts: "
            f"{', '.join(arch.removes)}). Train these plans with `-tr nnUNetTrainerPSPSeg` (or nnUNetTrainer / "
            f"nnUNetTrainerBudget for the unpruned network), or {me} with `-p nnUNetPlans`. Nothing was written.")

    def check_dense(self, plans: dict, configuration: str, fold, dataset_json: dict) -> dict:
        """The dense fold's checkpoint, checked (:func:`nnunet_prune.nnunet.trainers.dense.check_dense`).

        Raises:
            NnUNetPruneError: missing (naming the folders searched and what to train), unreadable, of other plans or
                configuration, or weights that do not fit.
        """
        searched = () if os.environ.get(dense.ENV_VAR) else self.dense_trainers
        return dense.check_dense(self._dense_path, type(self).__name__, plans, configuration, fold, dataset_json,
                                 searched=searched, train_first=self.dense_hint)

    def check_network(self, plans: dict, configuration: str, dataset_json: dict) -> None:
        """The method's :meth:`~nnunet_prune.methods.base.PruningMethod.network_problems` on the plans' network (built
        on the CPU, before nnU-Net creates the fold folder).

        Raises:
            NnUNetPruneError: listing the problems and the variable that sets the method.
        """
        from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

        pm = PlansManager(plans)
        cm = pm.get_configuration(configuration)
        network = self.build_network_architecture(pm, cm, determine_num_input_channels(pm, cm, dataset_json),
                                                  pm.get_label_manager(dataset_json).num_segmentation_heads,
                                                  enable_deep_supervision=False)
        problems = self.method_class(self.method_settings).network_problems(network, build_channel_graph(network),
                                                                            cm.patch_size)
        if problems:
            s = self.method_settings
            raise NnUNetPruneError(f"{type(self).__name__} cannot work on this {configuration} network: "
                                   + "; ".join(problems) + (f". Change {s.ENV_VAR} or the plans entry "
                                                            f"'nnunet_prune': {{'{s.NAME.lower()}': ...}}"
                                                            if s.ENV_VAR else "") + ". Nothing was written.")

    def method_rng(self):
        """The method's generator, derived from the seed (None unseeded, or when the method's settings carry a seed
        of their own, e.g. STAMP's ``seed``: that one wins)."""
        own = getattr(self.method_settings, "seed", -1)
        if isinstance(own, int) and own >= 0:
            return None
        return method_rng(self.seed, int(getattr(self, "local_rank", 0) or 0))

    def get_dataloaders(self):
        """nnU-Net's loaders, their augmentation workers seeded
        (:func:`~nnunet_prune.nnunet.trainers.budget.seed_dataloaders`)."""
        train, val = super().get_dataloaders()
        seed_dataloaders(self, train, val)
        return train, val

    def method_config(self) -> dict:
        """The method's settings by public name (``pruning_config.json``'s "method")."""
        return self.method_settings.as_dict() if self.method_settings is not None else {}

    def start_config(self) -> dict:
        """How the fold starts: random weights, or a dense fold and the fine-tuning budget."""
        if not self.start_from_dense:
            return {"from": "random initialisation"}
        return {"from": "dense", "dense_checkpoint": self._dense_path, "finetune_epochs": self.num_epochs,
                "initial_lr": self.initial_lr if self.num_epochs else None}

    # ------------------------------------------------------------------ network
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

    @property
    def network_module(self) -> nn.Module:
        """The network without DDP / torch.compile wrappers."""
        return unwrap(self.network)

    @property
    def graph(self) -> ChannelGraph:
        """Coupling groups of the current network (rebuilt when the network object changes)."""
        if self._graph is None or self._graph.network is not self.network_module:
            self._graph = build_channel_graph(self.network_module)
        return self._graph

    def _rewrap_network(self) -> None:
        """Rebuild torch.compile / DDP wrappers after the parameter shapes changed or blocks were masked / restored
        (DDP then tolerates the masked blocks' parameters that get no gradient)."""
        module = raw = self.network_module
        # drop the old wrappers first: a DDP reducer keeps gradient accumulators that remember the old shapes
        self.network = module
        gc.collect()
        if self._do_i_compile():
            torch._dynamo.reset()  # drop graphs of the old shapes: one recompilation per surgery, never a pile-up
            module = torch.compile(module)
        if self.is_ddp:
            module = DDP(module, device_ids=[self.local_rank], find_unused_parameters=bool(masked_blocks(raw)))
        self.network = module

    # ------------------------------------------------------------------ surgery
    def apply_removal(self, removal: Removal) -> SurgeryResult:
        """One surgery: rank 0's channels and blocks on every rank, caps and ``pruning_min_width``, optimizer state
        kept, wrappers and the channel graph rebuilt, the method re-bound."""
        channels, blocks, masked, restored = broadcast_decision((
            {str(k): [int(i) for i in v] for k, v in removal.channels.items()}, list(removal.blocks),
            list(removal.mask_blocks), list(removal.restore_blocks)))
        removal = Removal(channels, removal.weights, removal.biases, blocks, removal.tau, masked, restored)
        result = apply_removal(self.network_module, removal, graph=self.graph, optimizer=self.optimizer,
                               min_width=self.pruning_min_width, min_keep=self._caps)
        if result.restored:
            self.print_to_log_file(f"pruning: restored {', '.join(result.restored)}")
        if result.masked:
            self.print_to_log_file(f"pruning: masked {', '.join(result.masked)}")
        if (result.masked or result.restored) and not result.structure_changed and (self.is_ddp or
                                                                                    self._do_i_compile()):
            self._rewrap_network()  # DDP must expect the masked parameters' missing gradients
        if result.structure_changed:
            if result.blocks is not None and result.blocks.changed:
                self._graph = None
                self._epoch_blocks += result.blocks.removed
                self.print_to_log_file(f"pruning: removed blocks {', '.join(result.blocks.removed)}")
            self._rewrap_network()
            if result.channels is not None and result.channels.changed:
                for name, idx in result.channels.removed.items():
                    self._epoch_removed.setdefault(name, []).extend(idx)
                self.print_to_log_file(f"pruning: {result.channels.summary()}")
            if self.method is not None:
                self.method.bind(self.graph)
        return result

    def current_macs(self) -> int:
        """MACs of one patch through the inference path (cached until the structure changes)."""
        key = (tuple(self.graph.widths().items()), count_parameters(self.network_module),
               tuple(masked_blocks(self.network_module)))
        if self._macs_cache is None or self._macs_cache[0] != key:
            self._macs_cache = (key, count_macs(self.network_module, self.configuration_manager.patch_size))
        return self._macs_cache[1]

    def progress(self) -> TrainingProgress:
        """The current epoch, the budget and nnU-Net's losses so far (what a method's decision sees)."""
        log = self.logger.local_logger.my_fantastic_logging
        config = self.read_config()
        return TrainingProgress(self.current_epoch, self.num_epochs, log["train_losses"], log["val_losses"],
                                self.pruning_allowed(), pseudo_dice=log.get("ema_fg_dice", []),
                                parameters=count_parameters(self.network_module), macs=self.current_macs(),
                                initial_parameters=config.get("initial_parameters"),
                                initial_macs=config.get("initial_macs_per_patch"),
                                final_epochs_without_pruning=self.final_epochs_without_pruning,
                                patch_size=tuple(self.configuration_manager.patch_size))

    def pruning_allowed(self) -> bool:
        """Whether channels may still be removed after the current epoch (see final_epochs_without_pruning)."""
        return self.current_epoch < self.num_epochs - self.final_epochs_without_pruning

    # ------------------------------------------------------------------ the driver
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
        bound and its one-shot decision applied."""
        self.check_resume_settings()
        super().on_train_start()
        fresh = self._resumed_from_epoch is None
        if fresh and self.start_from_dense:
            self.load_dense_weights()
        if self.local_rank == 0:
            self.write_config()
        initial = self.initial_widths()
        self._caps = caps_from_ratio(initial, self.pruning_max_ratio) if self.pruning_max_ratio is not None \
            else None
        if self.method is None:
            return
        self.method.bind(self.graph)
        zeroed = False  # weights zeroed by the start decision (or, on --c, by the start of this fold)
        if fresh:
            removal = self.method.start(self.network_module, self.graph, self.progress())
            self._log_method_messages()
            if removal:
                result = self.apply_removal(removal)
                self.method.after_surgery(result, self.graph)
                self._log_method_messages()
                self._record_start(result)
                zeroed = result.sparsity is not None
            if self.local_rank == 0:
                for problem in self.method.schedule_problems(self.num_epochs, self.final_epochs_without_pruning):
                    self.print_to_log_file(f"WARNING: {problem}")
        if self.method.holds_zero_pattern and (zeroed or not fresh):
            self._held_masks = zero_pattern(self.network_module)

    def _record_start(self, result: SurgeryResult) -> None:
        """Log the start surgery; a sparsity record goes to ``magnitude_pruning.json`` in the fold folder."""
        if result.sparsity is not None:
            sp = result.sparsity
            self.print_to_log_file(
                f"Magnitude pruning at tau={sp.tau}: {sp.sparsity_of_nonzero:.2%} of the non-zero conv weights zeroed "
                f"({sp.sparsity_all_parameters:.2%} of all parameters are zero now)")
            if self.local_rank == 0:
                with open(os.path.join(self.output_folder, "magnitude_pruning.json"), "w") as f:
                    json.dump(sp.as_dict(), f, indent=4)
        if result.structure_changed:
            self.print_to_log_file(f"nnunet-prune: {count_parameters(self.network_module):,} parameters, "
                                   f"{self.current_macs() / 1e9:.3f} GMAC per patch after the start surgery")

    def load_dense_weights(self) -> None:
        """Load the dense fold (every tensor, heads included) into the network; checked in resolve_settings."""
        ckpt = self._dense_ckpt or self.check_dense(self.plans_manager.plans, self.configuration_name, self.fold,
                                                    self.dataset_json)
        self._dense_ckpt = None  # the weights live in the network from here on
        self.network_module.load_state_dict(ckpt["network_weights"])
        self._graph, self._macs_cache = None, None
        self._rewrap_network()
        self.inference_allowed_mirroring_axes = ckpt.get("inference_allowed_mirroring_axes",
                                                         self.inference_allowed_mirroring_axes)
        self.print_to_log_file(f"Loaded dense weights from {self._dense_path}")

    def _log_method_messages(self) -> None:
        """The method's lines since it was last asked, into nnU-Net's training log."""
        for line in self.method.messages():
            self.print_to_log_file(line)

    def on_train_epoch_start(self):
        """nnU-Net's epoch start, then the method's."""
        super().on_train_epoch_start()
        self._step = 0
        if self.method is not None:
            self.method.epoch_start(self.current_epoch, self.graph)

    def train_step(self, batch: dict) -> dict:
        """nnU-Net's training step between the method's step hooks; a held zero pattern is re-applied after it."""
        if self.method is not None:
            self.method.step_start(self._step, self.num_iterations_per_epoch)
            self.method.batch_start(batch["data"], batch["target"])
        try:
            out = super().train_step(batch)
        finally:
            if self.method is not None:
                self.method.step_end()
            self._step += 1
        if self._held_masks is not None:
            hold_masks(self._held_masks)  # the zero pattern stays fixed while training
        return out

    def extra_training_loss(self) -> torch.Tensor | None:
        """The method's term added to nnU-Net's loss in the current training step (None: none)."""
        return self.method.extra_loss() if self.method is not None else None

    def _build_loss(self):
        return LossWithExtraTerm(super()._build_loss(), self)

    def on_epoch_end(self):
        """The method decides, the driver applies (or not, in the last epochs), records go to the logger, then
        nnU-Net's epoch end (checkpoints, plots) and ``pruning_history.json``."""
        start = time()
        scalars: dict = {}
        removal = Removal()
        if self.method is not None:
            removal = self.method.decide(self.graph, self.progress())  # still observes in the final epochs
            if self.method.state_from_rank0 and self.is_ddp:  # rank 0's decision, and the state that goes with it
                self.method.load_state(broadcast_decision(self.method.state()))
            scalars = self.method.scalars(self.graph)
            self._log_method_messages()
            for key, value in scalars.items():
                self.logger.local_logger.add_key(key)  # a key the method did not list in log_keys: from now on
                self.logger.log(key, value, self.current_epoch)
            shown = [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in scalars.items()
                     if isinstance(v, (int, float)) and not isinstance(v, bool)]
            if shown:  # the method's per-epoch scalars in the training log too (plots: progress_pruning.png)
                self.print_to_log_file(f"{self.method.settings.NAME}: {', '.join(shown)}")
        if (removal.channels or removal.blocks) and not self.pruning_allowed():
            self.print_to_log_file(f"nnunet-prune: no surgery in the last {self.final_epochs_without_pruning} "
                                   f"epoch(s) (the final network must train at its final width); "
                                   f"{sum(len(v) for v in removal.channels.values())} channel(s) and "
                                   f"{len(removal.blocks)} block(s) kept.")
            removal = Removal()
        result = self.apply_removal(removal)
        self._cut_after_validation = result.structure_changed or bool(result.masked or result.restored)
        if self.method is not None:
            self.method.after_surgery(result, self.graph)
            self._log_method_messages()  # what the surgery changed (e.g. requests the caps clipped)
            scalars.update(self.method.record(self.graph))
        record = {
            "epoch": self.current_epoch,
            "widths": self.graph.widths(),
            "removed": {k: len(v) for k, v in self._epoch_removed.items()},
            **({"removed_blocks": self._epoch_blocks} if self._epoch_blocks else {}),
            "num_parameters": count_parameters(self.network_module),
            "macs": self.current_macs(),
            "pruning_seconds": round(time() - start, 4),
            **scalars,
        }
        self.logger.log("num_parameters", record["num_parameters"], self.current_epoch)
        self.logger.log("macs", record["macs"], self.current_epoch)
        local = self.logger.local_logger
        local.log(RECORD_KEY, record, self.current_epoch)
        local.log(STATE_KEY, self.method.state() if self.method is not None else {}, self.current_epoch)
        if result.structure_changed or self._epoch_removed:
            self.print_to_log_file(f"parameters {record['num_parameters']:,}, {record['macs'] / 1e9:.3f} GMAC/patch")
        self._epoch_removed, self._epoch_blocks = {}, []
        super().on_epoch_end()  # timestamps, checkpoints (with the records above), progress plots
        self._cut_after_validation = False
        if self.local_rank == 0:
            self.write_history()

    def save_checkpoint(self, filename: str) -> None:
        """nnU-Net's save, except ``checkpoint_best.pth`` in an epoch whose surgery came after its validation: nnU-Net
        would store the pruned weights under the Dice of the unpruned ones."""
        if self._cut_after_validation and os.path.basename(filename) == "checkpoint_best.pth":
            self.print_to_log_file("checkpoint_best.pth not updated: this epoch's pseudo Dice was measured before "
                                   "this epoch's surgery")
            return
        super().save_checkpoint(filename)

    # ------------------------------------------------------------------ records
    def read_config(self) -> dict:
        """The fold's ``pruning_config.json`` ({} if it does not exist yet or cannot be read)."""
        try:
            with open(os.path.join(self.output_folder, CONFIG_FILE)) as f:
                config = json.load(f)
        except (OSError, ValueError):
            return {}
        return config if isinstance(config, dict) else {}

    def initial_widths(self) -> dict[str, int]:
        """Group widths of the unpruned network (from ``pruning_config.json`` on ``--c``; else the current ones)."""
        widths = self.read_config().get("initial_widths")
        try:
            if isinstance(widths, dict):
                return {str(k): int(v) for k, v in widths.items()}
        except (ValueError, TypeError):
            pass
        return self.graph.widths()

    def check_resume_settings(self) -> None:
        """On ``--c``: refuse method settings that differ from those the fold was started with (a Sauron run with
        another tau_max, a magnitude fold with another tau would be neither).

        Raises:
            NnUNetPruneError: naming each setting, its recorded and its current value, and what to do.
        """
        if self._resumed_from_epoch is None:
            return
        previous = self.read_config().get("method")
        if not isinstance(previous, dict):
            return
        method = self.method_config()
        changed = [f"{k}: {previous[k]!r} at the start, {method[k]!r} now" for k in sorted(set(method) & set(previous))
                   if method[k] != previous[k]]
        if changed:
            var = self.method_settings.ENV_VAR if self.method_settings is not None else ""
            raise NnUNetPruneError(
                f"{type(self).__name__} fold {self.fold} was started with other method settings "
                f"({'; '.join(changed)}; recorded in {os.path.join(self.output_folder, CONFIG_FILE)}). Continue "
                f"(--c) with the settings it was started with" + (f" ({var}, plans entry)" if var else "") +
                ", or train a new fold without --c. Nothing was changed.")

    def write_config(self) -> None:
        """pruning_config.json: what the fold was started with (method settings, start, budget, seed, widths,
        parameters, MACs), kept on ``--c``; each resume is appended under "resumes" with its budget and seed."""
        path = os.path.join(self.output_folder, CONFIG_FILE)
        budget = {"num_epochs": self.num_epochs, "num_iterations_per_epoch": self.num_iterations_per_epoch,
                  "num_val_iterations_per_epoch": self.num_val_iterations_per_epoch,
                  "overridden_by_environment": self.budget_overrides}
        method = self.method_config()
        previous = self.read_config() if self._resumed_from_epoch is not None else {}
        if "method" in previous:
            resume = {"time": datetime.now().astimezone().isoformat(timespec="seconds"),
                      "epoch": self._resumed_from_epoch, "trainer": self.__class__.__name__, "budget": budget,
                      "seed": self.seed, "method": method, "parameters": count_parameters(self.network_module),
                      "macs_per_patch": self.current_macs()}
            previous.setdefault("resumes", []).append(resume)
            config = previous
        else:
            config = {
                "trainer": self.__class__.__name__,
                "method": method,
                "method_class": None if self.method_class is None else self.method_class.__name__,
                "start": self.start_config(),
                "budget": budget,
                "seed": self.seed,
                "min_width": self.pruning_min_width,
                "max_ratio": self.pruning_max_ratio,
                "final_epochs_without_pruning": self.final_epochs_without_pruning,
                "initial_widths": self.graph.widths(),
                "group_parts": {g.name: g.part for g in self.graph},
                "initial_parameters": count_parameters(self.network_module),
                "initial_macs_per_patch": self.current_macs(),
                "patch_size": list(self.configuration_manager.patch_size),
                "started": datetime.now().astimezone().isoformat(timespec="seconds"),
                "resumes": [],
            }
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(config, f, indent=2)
        os.replace(tmp, path)
        self.print_to_log_file(f"nnunet-prune: {count_parameters(self.network_module):,} parameters, "
                               f"{self.current_macs() / 1e9:.3f} GMAC per patch; method settings: {method}")

    def write_history(self) -> None:
        """pruning_history.json: one record per finished epoch (derived from the logger, so it matches --c)."""
        log = self.logger.local_logger.my_fantastic_logging
        records = []
        for i, r in enumerate(log.get(RECORD_KEY, [])):
            if r is None:
                continue
            r = dict(r)
            if i < len(log["epoch_end_timestamps"]):
                r["epoch_seconds"] = round(log["epoch_end_timestamps"][i] - log["epoch_start_timestamps"][i], 3)
                r["val_loss"] = float(log["val_losses"][i])
                r["train_loss"] = float(log["train_losses"][i])
                r["pseudo_dice"] = float(log["mean_fg_dice"][i])
            records.append(r)
        with open(os.path.join(self.output_folder, HISTORY_FILE), "w") as f:
            json.dump({"trainer": self.__class__.__name__, "epochs": records}, f, indent=1)

    def on_train_end(self):
        """nnU-Net's end (``checkpoint_final.pth``), the method's advice, ``pruning_widths.png``."""
        super().on_train_end()
        records = [r for r in self.logger.local_logger.my_fantastic_logging.get(RECORD_KEY, []) if r]
        if self.method is not None:
            if self.local_rank == 0 and records:
                removed_any = any(sum(r["removed"].values()) or r.get("removed_blocks") for r in records)
                for line in self.method.end_advice(removed_any, replace(self.progress(), epoch=len(records) - 1)):
                    self.print_to_log_file(f"WARNING: {line}")
            self.method.release()
        if self.local_rank == 0 and records and records[-1].get("widths"):  # (PSP-Seg's network: no groups)
            # the unpruned widths (records start after epoch 0's surgery) and the groups' parts
            config = self.read_config()
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
        self._graph, self._macs_cache = None, None
        self._rewrap_network()
        state = self.logger.local_logger.last(STATE_KEY)
        if state and self.method is not None:
            self.method.load_state(state)
        self.print_to_log_file(f"nnunet-prune: loaded {count_parameters(self.network_module):,} parameters, "
                               f"widths {self.graph.widths()}")
