"""``nnUNetTrainerPruning``: the base of every pruning trainer (nnU-Net glue, no method logic).

What it adds to ``nnUNetTrainer``:

* the network is built as the width-adaptive class of :mod:`nnunet_prune.networks`, so checkpoints written after
  pruning load in the predictor, on ``--c`` and on ``--val``;
* hooks for a method: :meth:`extra_training_loss` (added to nnU-Net's loss in training steps),
  :meth:`decide_pruning` (called after each epoch's validation), :meth:`after_surgery`, and
  :meth:`method_state` / :meth:`load_method_state` (saved in every checkpoint, restored on ``--c``);
* :meth:`apply_pruning`: one call of the surgery layer -- rank 0's decision broadcast under DDP, optimizer state
  sliced, ``torch.compile`` / DDP wrappers rebuilt, learning-rate schedule untouched;
* per-epoch parameter count, MACs per patch and per-group widths in nnU-Net's logger (so in the checkpoint and in
  ``progress_pruning.png``), in ``pruning_history.json`` in the fold folder, and ``pruning_widths.png`` at the end.

Used on its own it trains the dense network (nothing is pruned), which is handy as a like-for-like baseline.
"""

from __future__ import annotations

import gc
import json
import os
from collections.abc import Mapping
from datetime import datetime
from time import time

import torch
import torch.distributed as dist
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from nnunet_prune.checkpoints import check_state_dict
from nnunet_prune.modelfolder import read_checkpoint
from nnunet_prune.networks import adaptive_class_name
from nnunet_prune.stats import count_macs, count_parameters, unwrap
from nnunet_prune.surgery import ChannelGraph, PruneResult, build_channel_graph
from nnunet_prune.trainers.budget import apply_budget_overrides, read_budget_overrides
from nnunet_prune.trainers.logging import RECORD_KEY, STATE_KEY, PruningLocalLogger, plot_widths

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
    #: never shrink a coupling group below this many channels
    pruning_min_width: int = 1
    #: no surgery after the last this-many epochs: the network nnU-Net saves and validates has trained at its final
    #: width (pruning after the very last epoch left a demo's Sauron model with two classes at Dice 0, never
    #: recovered, although its last pseudo Dice was fine)
    final_epochs_without_pruning: int = 1
    #: method-specific scalar series to log each epoch (names of keys the subclass logs with log_method_scalar)
    method_log_keys: tuple[str, ...] = ()

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        # every setting is read and validated before nnU-Net's __init__ creates the fold folder and its log
        overrides = read_budget_overrides()
        self.resolve_settings(plans, configuration, fold, dataset_json)
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.budget_overrides = apply_budget_overrides(self, overrides)
        self._resumed_from_epoch: int | None = None
        self.logger.local_logger = PruningLocalLogger(extra_keys=self.method_log_keys)
        self._graph: ChannelGraph | None = None
        self._macs_cache: tuple[tuple, int] | None = None
        self._epoch_removed: dict[str, list[int]] = {}
        self._method_scalars: dict[str, float] = {}

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
        """Rebuild torch.compile / DDP wrappers after the parameter shapes changed."""
        module = self.network_module
        # drop the old wrappers first: a DDP reducer keeps gradient accumulators that remember the old shapes
        self.network = module
        gc.collect()
        if self._do_i_compile():
            torch._dynamo.reset()  # drop graphs of the old shapes: one recompilation per surgery, never a pile-up
            module = torch.compile(module)
        if self.is_ddp:
            module = DDP(module, device_ids=[self.local_rank])
        self.network = module

    # ------------------------------------------------------------------ hooks for methods
    def resolve_settings(self, plans: dict, configuration: str, fold: int, dataset_json: dict) -> None:
        """Read and validate the method's settings (plans entry, environment) and check its inputs, raising
        :class:`~nnunet_prune.NnUNetPruneError` for anything wrong. Called at the start of ``__init__``, BEFORE
        nnU-Net creates the fold folder: a rejected setting leaves nothing behind (an empty ``fold_k`` would break
        ``nnUNetv2_predict`` without ``-f``)."""

    def extra_training_loss(self) -> torch.Tensor | None:
        """A term added to nnU-Net's loss in every training step (e.g. Sauron's delta_opt); None for none."""
        return None

    def decide_pruning(self) -> Mapping[str, list[int]]:
        """Called on every rank after each epoch's validation; return {group name: channel indices} to remove.

        Only rank 0's answer is used (it is broadcast to the other ranks).
        """
        return {}

    def after_surgery(self, result: PruneResult) -> None:
        """Called after channels were removed (e.g. to reset statistics that refer to old channel indices)."""

    def method_state(self) -> dict:
        """JSON-serialisable state of the method, saved in every checkpoint."""
        return {}

    def load_method_state(self, state: dict) -> None:
        """Restore what :meth:`method_state` returned (on ``--c``)."""

    def method_config(self) -> dict:
        """Hyperparameters of the method, written to pruning_config.json in the fold folder."""
        return {}

    def log_method_scalar(self, key: str, value) -> None:
        """Log a per-epoch value of the method (key must be in ``method_log_keys``)."""
        self._method_scalars[key] = value
        self.logger.log(key, value, self.current_epoch)

    # ------------------------------------------------------------------ machinery
    def apply_pruning(self, removal: Mapping[str, list[int]]) -> PruneResult:
        """Remove channels (same decision on every rank), keep optimizer state, rebuild wrappers."""
        removal = broadcast_decision({str(k): [int(i) for i in v] for k, v in removal.items()})
        result = self.graph.prune(removal, optimizer=self.optimizer, min_width=self.pruning_min_width)
        if result.changed:
            self._rewrap_network()
            for name, idx in result.removed.items():
                self._epoch_removed.setdefault(name, []).extend(idx)
            self.print_to_log_file(f"pruning: {result.summary()}")
            self.after_surgery(result)
        return result

    def current_macs(self) -> int:
        """MACs of one patch through the inference path (cached until the widths change)."""
        key = tuple(self.graph.widths().values())
        if self._macs_cache is None or self._macs_cache[0] != key:
            self._macs_cache = (key, count_macs(self.network_module, self.configuration_manager.patch_size))
        return self._macs_cache[1]

    def on_train_start(self):
        super().on_train_start()
        if self.local_rank == 0:
            self.write_config()

    def write_config(self) -> None:
        """pruning_config.json: what the fold was started with (method settings, budget, widths, parameters, MACs),
        kept on ``--c``; each resume is appended under "resumes" with its budget and settings, and settings that
        differ from the start are named there and in the training log."""
        path = os.path.join(self.output_folder, CONFIG_FILE)
        budget = {"num_epochs": self.num_epochs, "num_iterations_per_epoch": self.num_iterations_per_epoch,
                  "num_val_iterations_per_epoch": self.num_val_iterations_per_epoch,
                  "overridden_by_environment": self.budget_overrides}
        method = self.method_config()
        previous = None
        if self._resumed_from_epoch is not None and os.path.isfile(path):
            try:
                with open(path) as f:
                    previous = json.load(f)
            except (OSError, ValueError):
                previous = None
        if isinstance(previous, dict) and "method" in previous:
            changed = sorted(k for k in set(method) | set(previous["method"])
                             if method.get(k) != previous["method"].get(k))
            resume = {"time": datetime.now().astimezone().isoformat(timespec="seconds"),
                      "epoch": self._resumed_from_epoch, "trainer": self.__class__.__name__, "budget": budget,
                      "method": method, "method_settings_changed": changed,
                      "parameters": count_parameters(self.network_module), "macs_per_patch": self.current_macs()}
            previous.setdefault("resumes", []).append(resume)
            config = previous
            if changed:
                self.print_to_log_file(f"nnunet-prune: WARNING: resumed with method settings that differ from the "
                                       f"start of this fold: {', '.join(changed)} (recorded in {CONFIG_FILE}).")
        else:
            config = {
                "trainer": self.__class__.__name__,
                "method": method,
                "budget": budget,
                "min_width": self.pruning_min_width,
                "final_epochs_without_pruning": self.final_epochs_without_pruning,
                "initial_widths": self.graph.widths(),
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

    def _build_loss(self):
        return LossWithExtraTerm(super()._build_loss(), self)

    def pruning_allowed(self) -> bool:
        """Whether channels may still be removed after the current epoch (see final_epochs_without_pruning)."""
        return self.current_epoch < self.num_epochs - self.final_epochs_without_pruning

    def on_epoch_end(self):
        start = time()
        removal = self.decide_pruning()  # the method still observes and logs in the final epochs
        if removal and not self.pruning_allowed():
            self.print_to_log_file(f"nnunet-prune: no surgery in the last {self.final_epochs_without_pruning} "
                                   f"epoch(s) (the final network must train at its final width); "
                                   f"{sum(len(v) for v in removal.values())} channel(s) kept.")
            removal = {}
        result = self.apply_pruning(removal)
        record = {
            "epoch": self.current_epoch,
            "widths": self.graph.widths(),
            "removed": {k: len(v) for k, v in self._epoch_removed.items()},
            "num_parameters": count_parameters(self.network_module),
            "macs": self.current_macs(),
            "pruning_seconds": round(time() - start, 4),
            **self._method_scalars,
        }
        self.logger.log("num_parameters", record["num_parameters"], self.current_epoch)
        self.logger.log("macs", record["macs"], self.current_epoch)
        local = self.logger.local_logger
        local.log(RECORD_KEY, record, self.current_epoch)
        local.log(STATE_KEY, self.method_state(), self.current_epoch)
        if result.changed or self._epoch_removed:
            self.print_to_log_file(f"parameters {record['num_parameters']:,}, {record['macs'] / 1e9:.3f} GMAC/patch")
        self._epoch_removed, self._method_scalars = {}, {}
        super().on_epoch_end()  # timestamps, checkpoints (with the records above), progress plots
        if self.local_rank == 0:
            self.write_history()

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
        super().on_train_end()
        if self.local_rank == 0:
            records = [r for r in self.logger.local_logger.my_fantastic_logging.get(RECORD_KEY, []) if r]
            initial = None  # the unpruned widths (records start after epoch 0's surgery); else the first record
            try:
                with open(os.path.join(self.output_folder, CONFIG_FILE)) as f:
                    initial = json.load(f).get("initial_widths")
            except (OSError, ValueError, AttributeError):
                pass
            try:
                plot_widths(records, os.path.join(self.output_folder, "pruning_widths.png"),
                            f"{self.__class__.__name__}: channels per coupling group",
                            initial_widths=initial if isinstance(initial, dict) else None)
            except Exception as e:
                self.print_to_log_file(f"could not plot widths: {type(e).__name__}: {e}")

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        if isinstance(filename_or_checkpoint, str):  # --c / --val: a damaged file is one clear error
            if not self.was_initialized:
                self.initialize()
            checked = read_checkpoint(filename_or_checkpoint, keep_training_state=True)
            check_state_dict(self.network_module, checked["network_weights"], filename_or_checkpoint,
                             self.configuration_manager.patch_size)
            del checked  # nnU-Net reads the file itself (its load_checkpoint fails when given the dict)
        super().load_checkpoint(filename_or_checkpoint)  # the adaptive network takes the checkpoint's widths
        self._resumed_from_epoch = self.current_epoch
        self._graph, self._macs_cache = None, None
        self._rewrap_network()
        state = self.logger.local_logger.last(STATE_KEY)
        if state:
            self.load_method_state(state)
        self.print_to_log_file(f"nnunet-prune: loaded {count_parameters(self.network_module):,} parameters, "
                               f"widths {self.graph.widths()}")
