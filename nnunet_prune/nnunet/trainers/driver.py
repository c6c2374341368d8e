"""``SurgeryDriver``: runs one pruning method of the protocol (:mod:`nnunet_prune.methods.base`) on one network while
something else trains it, and turns the method's decisions into surgeries.

It knows nothing of nnU-Net's trainer: it gets the network and the optimizer through callables (the trainer may
replace either), a function that writes a line to the training log, the patch size, the DDP rank and whether the
network is wrapped in DDP or compiled. :class:`~nnunet_prune.nnunet.trainers.base.nnUNetTrainerPruning` builds one in
its ``__init__`` and calls it from nnU-Net's hooks; ``tests/unit/nnunet/test_distributed.py`` runs it under DDP (gloo,
two CPU processes) without nnU-Net.

What it does:

* binds the method: :meth:`~nnunet_prune.methods.base.PruningMethod.attach` (the training context) once, then
  :meth:`~nnunet_prune.methods.base.PruningMethod.bind` at the start, after every surgery and after ``--c``;
* one surgery per decision (:meth:`SurgeryDriver.apply`): rank 0's channels and blocks broadcast to every rank
  under DDP, :func:`~nnunet_prune.surgery.removal.apply_removal` with the optimizer (state sliced), the minimum width
  and the per-group caps, then the ``torch.compile`` / DDP wrappers rebuilt (:meth:`SurgeryDriver.rewrap`) and the
  method re-bound; no surgery in the last ``final_epochs_without_pruning`` epochs;
* the channel graph and the MACs per patch, cached until the structure changes;
* a zero pattern held fixed while training continues (methods with ``holds_zero_pattern``);
* each epoch's record (widths, removals, parameters, MACs, the method's scalars and details) for the logger and
  ``pruning_history.json``.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from time import time
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from nnunet_prune.core.stats import count_macs, count_parameters, unwrap
from nnunet_prune.methods.base import PruningMethod, TrainingContext, TrainingProgress
from nnunet_prune.surgery import ChannelGraph, build_channel_graph
from nnunet_prune.surgery.architectures import masked_blocks
from nnunet_prune.surgery.masks import hold_masks, zero_pattern
from nnunet_prune.surgery.prune import caps_from_ratio
from nnunet_prune.surgery.removal import Removal, SurgeryResult, apply_removal


def broadcast_decision(obj, src: int = 0):
    """Under DDP (a process group initialised), every rank gets rank ``src``'s object (pruning decisions are made
    once); else ``obj`` itself."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj if dist.get_rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


@dataclass
class EpochEnd:
    """What :meth:`SurgeryDriver.end_epoch` did: the method's per-epoch ``scalars`` (for the logger), the epoch's
    ``record`` (``pruning_history.json``), the surgery's ``result``, and ``cut``: whether the network changed after
    this epoch's validation (structure, masked or restored blocks)."""

    scalars: dict[str, Any]
    record: dict[str, Any]
    result: SurgeryResult
    cut: bool


@dataclass
class _EpochChanges:
    removed: dict[str, list[int]] = field(default_factory=dict)  # group -> channel indices removed this epoch
    blocks: list[str] = field(default_factory=list)  # blocks removed this epoch


class SurgeryDriver:
    """The generic driver of a :class:`~nnunet_prune.methods.base.PruningMethod` (see the module docstring).

    Args:
        method: the method (None: no pruning; records are still kept).
        get_network: () -> the network as it trains (possibly wrapped in ``torch.compile`` / DDP).
        set_network: takes the network after the wrappers were rebuilt (first the bare module, then the new wrapper).
        get_optimizer: () -> the optimizer whose state follows the surgeries.
        log: writes one line to the training log.
        patch_size: voxels per axis of a training patch (the MACs are counted for one patch).
        min_width: no coupling group shrinks below this many channels.
        final_epochs_without_pruning: no surgery after the last this-many epochs.
        is_ddp: the network is wrapped in ``DistributedDataParallel`` (rebuilt after every surgery).
        ddp_device_ids: ``device_ids`` of the rebuilt DDP wrapper (None on the CPU).
        compile: () -> whether the network is wrapped in ``torch.compile`` (asked at every rewrap).
    """

    def __init__(self, method: PruningMethod | None, *, get_network: Callable[[], nn.Module],
                 set_network: Callable[[nn.Module], None], get_optimizer: Callable[[], torch.optim.Optimizer | None],
                 log: Callable[[str], None], patch_size: Sequence[int], min_width: int = 1,
                 final_epochs_without_pruning: int = 1, is_ddp: bool = False,
                 ddp_device_ids: Sequence[int] | None = None, compile: Callable[[], bool] = lambda: False):
        self.method = method
        self._get_network, self._set_network, self._get_optimizer = get_network, set_network, get_optimizer
        self.log = log
        self.patch_size = patch_size
        self.min_width = min_width
        self.final_epochs_without_pruning = final_epochs_without_pruning
        self.is_ddp = is_ddp
        self.ddp_device_ids = None if ddp_device_ids is None else list(ddp_device_ids)
        self._compile = compile
        #: per-group caps: group -> the fewest channels it keeps (None: no caps)
        self.caps: dict[str, int] | None = None
        self._graph: ChannelGraph | None = None
        self._macs_cache: tuple[tuple, int] | None = None
        self._epoch = _EpochChanges()
        self._held_masks = None
        self._step = 0

    # ------------------------------------------------------------------ structure
    @property
    def module(self) -> nn.Module:
        """The network without DDP / torch.compile wrappers."""
        return unwrap(self._get_network())

    @property
    def graph(self) -> ChannelGraph:
        """Coupling groups of the current network (rebuilt when the network object changes)."""
        if self._graph is None or self._graph.network is not self.module:
            self._graph = build_channel_graph(self.module)
        return self._graph

    def network_reloaded(self) -> None:
        """Forget the graph and the MACs (the network's weights or structure were replaced, e.g. a checkpoint or a
        dense start loaded), then rebuild the wrappers."""
        self._graph, self._macs_cache = None, None
        self.rewrap()

    def rewrap(self) -> None:
        """Rebuild torch.compile / DDP wrappers after the parameter shapes changed or blocks were masked / restored
        (DDP then tolerates the masked blocks' parameters that get no gradient)."""
        module = raw = self.module
        # drop the old wrappers first: a DDP reducer keeps gradient accumulators that remember the old shapes
        self._set_network(module)
        gc.collect()
        if self._compile():
            torch._dynamo.reset()  # drop graphs of the old shapes: one recompilation per surgery, never a pile-up
            module = torch.compile(module)
        if self.is_ddp:
            module = DDP(module, device_ids=self.ddp_device_ids, find_unused_parameters=bool(masked_blocks(raw)))
        self._set_network(module)

    def parameters(self) -> int:
        """Parameters of the network now."""
        return count_parameters(self.module)

    def current_macs(self) -> int:
        """MACs of one patch through the inference path (cached until the structure changes)."""
        key = (tuple(self.graph.widths().items()), count_parameters(self.module), tuple(masked_blocks(self.module)))
        if self._macs_cache is None or self._macs_cache[0] != key:
            self._macs_cache = (key, count_macs(self.module, self.patch_size))
        return self._macs_cache[1]

    def set_caps(self, initial_widths: Mapping[str, int], max_ratio: float | None) -> None:
        """Per-group caps: at most ``max_ratio`` of each group's ``initial_widths`` is removed in all (None: none)."""
        self.caps = caps_from_ratio(initial_widths, max_ratio) if max_ratio is not None else None

    def pruning_allowed(self, epoch: int, num_epochs: int) -> bool:
        """Whether a surgery may follow the decision after ``epoch`` (0-based) of ``num_epochs``."""
        return epoch < num_epochs - self.final_epochs_without_pruning

    def progress(self, epoch: int, num_epochs: int, log: Mapping[str, Sequence], initial: Mapping[str, Any]
                 ) -> TrainingProgress:
        """What a method's decision sees: ``epoch`` of ``num_epochs``, nnU-Net's losses and smoothed pseudo Dice so
        far (``log``: its logger's ``my_fantastic_logging``), the size now and unpruned (``initial``: the fold's
        ``pruning_config.json``)."""
        return TrainingProgress(epoch, num_epochs, log["train_losses"], log["val_losses"],
                                self.pruning_allowed(epoch, num_epochs), pseudo_dice=log.get("ema_fg_dice", []),
                                parameters=self.parameters(), macs=self.current_macs(),
                                initial_parameters=initial.get("initial_parameters"),
                                initial_macs=initial.get("initial_macs_per_patch"),
                                final_epochs_without_pruning=self.final_epochs_without_pruning,
                                patch_size=tuple(self.patch_size))

    # ------------------------------------------------------------------ surgery
    def apply(self, removal: Removal) -> SurgeryResult:
        """One surgery: rank 0's channels and blocks on every rank, caps and ``min_width``, optimizer state kept,
        wrappers and the channel graph rebuilt, the method re-bound."""
        channels, blocks, masked, restored = broadcast_decision((
            {str(k): [int(i) for i in v] for k, v in removal.channels.items()}, list(removal.blocks),
            list(removal.mask_blocks), list(removal.restore_blocks)))
        removal = Removal(channels, removal.weights, removal.biases, blocks, removal.tau, masked, restored)
        result = apply_removal(self.module, removal, graph=self.graph, optimizer=self._get_optimizer(),
                               min_width=self.min_width, min_keep=self.caps)
        if result.restored:
            self.log(f"pruning: restored {', '.join(result.restored)}")
        if result.masked:
            self.log(f"pruning: masked {', '.join(result.masked)}")
        if (result.masked or result.restored) and not result.structure_changed and (self.is_ddp or self._compile()):
            self.rewrap()  # DDP must expect the masked parameters' missing gradients
        if result.structure_changed:
            if result.blocks is not None and result.blocks.changed:
                self._graph = None
                self._epoch.blocks += result.blocks.removed
                self.log(f"pruning: removed blocks {', '.join(result.blocks.removed)}")
            self.rewrap()
            if result.channels is not None and result.channels.changed:
                for name, idx in result.channels.removed.items():
                    self._epoch.removed.setdefault(name, []).extend(idx)
                self.log(f"pruning: {result.channels.summary()}")
            if self.method is not None:
                self.method.bind(self.graph)
        return result

    # ------------------------------------------------------------------ the method's hooks
    def log_messages(self) -> None:
        """The method's lines since it was last asked, into the training log."""
        for line in self.method.messages():
            self.log(line)

    def start(self, context: TrainingContext, fresh: bool, progress: Callable[[], TrainingProgress]
              ) -> SurgeryResult | None:
        """The start of training: the method attached to ``context`` and bound; on a ``fresh`` start (not ``--c``)
        its one-shot decision applied (the result returned; None when it removed nothing); a zero pattern held when
        the method holds one (zeroed at this start, or on ``--c`` by the start of the fold). Nothing without a
        method."""
        if self.method is None:
            return None
        self.method.attach(context)
        self.method.bind(self.graph)
        result = None
        if fresh:
            removal = self.method.start(self.module, self.graph, progress())
            self.log_messages()
            if removal:
                result = self.apply(removal)
                self.method.after_surgery(result, self.graph)
                self.log_messages()
        zeroed = result is not None and result.sparsity is not None
        if self.method.holds_zero_pattern and (zeroed or not fresh):
            self._held_masks = zero_pattern(self.module)
        return result

    def schedule_warnings(self, num_epochs: int) -> list[str]:
        """Why a run of ``num_epochs`` would prune nothing or little (the method's schedule problems)."""
        if self.method is None:
            return []
        return self.method.schedule_problems(num_epochs, self.final_epochs_without_pruning)

    def epoch_start(self, epoch: int) -> None:
        """Before the first training step of ``epoch``."""
        self._step = 0
        if self.method is not None:
            self.method.epoch_start(epoch, self.graph)

    @contextmanager
    def training_step(self, data: torch.Tensor, target, steps_per_epoch: int) -> Iterator[None]:
        """Around one training step on ``data`` (B, C, *patch) and ``target``: the method's step hooks; after a step
        that did not raise, a held zero pattern is re-applied."""
        if self.method is not None:
            self.method.step_start(self._step, steps_per_epoch)
            self.method.batch_start(data, target)
        try:
            yield
        finally:
            if self.method is not None:
                self.method.step_end()
            self._step += 1
        if self._held_masks is not None:
            hold_masks(self._held_masks)  # the zero pattern stays fixed while training

    def extra_loss(self) -> torch.Tensor | None:
        """The method's term added to the loss in the current training step (None: none)."""
        return self.method.extra_loss() if self.method is not None else None

    def end_epoch(self, epoch: int, allowed: bool, progress: Callable[[], TrainingProgress]) -> EpochEnd:
        """After ``epoch``'s validation: the method decides (with ``progress()``) and its scalars and lines are
        logged; the driver applies the decision, or drops it when no surgery is ``allowed``; the method sees the
        result; the epoch's record is built. Under DDP every rank must call this (rank 0's decision is broadcast)."""
        start = time()
        scalars: dict = {}
        removal = Removal()
        if self.method is not None:
            removal = self.method.decide(self.graph, progress())  # still observes in the final epochs
            if self.method.state_from_rank0 and self.is_ddp:  # rank 0's decision, and the state that goes with it
                self.method.load_state(broadcast_decision(self.method.state()))
            scalars = self.method.scalars(self.graph)
            self.log_messages()
            shown = [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in scalars.items()
                     if isinstance(v, (int, float)) and not isinstance(v, bool)]
            if shown:  # the method's per-epoch scalars in the training log too (plots: progress_pruning.png)
                self.log(f"{self.method.settings.NAME}: {', '.join(shown)}")
        if (removal.channels or removal.blocks) and not allowed:
            self.log(f"nnunet-prune: no surgery in the last {self.final_epochs_without_pruning} epoch(s) (the final "
                     f"network must train at its final width); {sum(len(v) for v in removal.channels.values())} "
                     f"channel(s) and {len(removal.blocks)} block(s) kept.")
            removal = Removal()
        result = self.apply(removal)
        details: dict = {}
        if self.method is not None:
            self.method.after_surgery(result, self.graph)
            self.log_messages()  # what the surgery changed (e.g. requests the caps clipped)
            details = self.method.record(self.graph)
        record = self._record(epoch, start, {**scalars, **details})
        if result.structure_changed or self._epoch.removed:
            self.log(f"parameters {record['num_parameters']:,}, {record['macs'] / 1e9:.3f} GMAC/patch")
        self._epoch = _EpochChanges()
        return EpochEnd(scalars, record, result, result.structure_changed or bool(result.masked or result.restored))

    def _record(self, epoch: int, start: float, extra: Mapping[str, Any]) -> dict[str, Any]:
        changes = self._epoch
        return {
            "epoch": epoch,
            "widths": self.graph.widths(),
            "removed": {k: len(v) for k, v in changes.removed.items()},
            **({"removed_blocks": changes.blocks} if changes.blocks else {}),
            "num_parameters": self.parameters(),
            "macs": self.current_macs(),
            "pruning_seconds": round(time() - start, 4),
            **extra,
        }

    def method_state(self) -> dict:
        """The method's state for the checkpoint ({} without a method)."""
        return self.method.state() if self.method is not None else {}

    def load_method_state(self, state: Mapping | None) -> None:
        """Restore the method's state from a checkpoint (nothing for an empty state or without a method)."""
        if state and self.method is not None:
            self.method.load_state(state)

    def finish(self, records: Sequence[Mapping[str, Any]], progress: Callable[[], TrainingProgress] | None) -> None:
        """The end of training: the method's advice logged as warnings (when ``progress`` is given and there are
        ``records``: the epochs' records), then its hooks released."""
        if self.method is None:
            return
        if progress is not None and records:
            removed_any = any(sum(r["removed"].values()) or r.get("removed_blocks") for r in records)
            for line in self.method.end_advice(removed_any, progress()):
                self.log(f"WARNING: {line}")
        self.method.release()
