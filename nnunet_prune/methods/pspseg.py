"""PSP-Seg: progressive block-wise pruning of a redundant U-Net while it trains (Li et al., AAAI 2026, §3.2-3.3,
Appendix B).

Read next to the paper:

* **Functional-decoupling loss** (§3.2, Eq. 3-5), added to nnU-Net's deep-supervision loss with weights 0.1 each:
  TR = 1 - cos(E(x), sg(E(x * GT))) at the encoder's output (the masked image's path without gradient: the
  ground truth keeps the foreground, the background becomes 0); RL = mean over decoder stages of
  BCE(mean over channels of the stage output, binarised ground truth at that scale) (the channel mean is used as
  a logit).
* **Convergence** (Appendix B): neither TR nor RL reached a new minimum in the last ``patience`` (10) epochs,
  counting only epochs since the last pruning event.
* **Block-wise pruning** (§3.3, Eq. 6): at a convergence where the FD loss (TR + RL) is not worse than its best +
  ``tolerance`` (0.01), every PRM masks the subset of ``k`` active branches whose masking changes its output least
  on a calibration set (``calibration_patches`` training patches, streamed: one module, one batch at a time). At
  the next convergence, if the lowest FD loss since the masking is worse than the best before it + ``tolerance``,
  the masked branches are restored and ``k <- k - 1``; else they are deleted. A module with fewer than ``k``
  active branches masks what it has. Pruning stops when ``k`` reaches 0 or, for new masks, after
  ``stop_fraction`` (0.4) of the epochs. Branches still masked when training ends stay masked in
  ``checkpoint_final.pth``: that is the network that was trained and validated (a masked branch computes nothing);
  ``nnunet-prune export`` deletes them, output-identical, and ``--c`` with a longer budget settles them.
  ``patience=0`` makes every epoch a convergence (a forced schedule for tests and short demos).

Defaults: the paper's k = 1 (S, B; the L planner's plans entry sets 2), patience 10, tolerance 0.01, 100 calibration
patches; stop at 40 % of the epochs and FD weights 0.1 from the authors' code (METHODS.md). Everything the method
needs from the training comes through the protocol's :class:`~nnunet_prune.methods.base.TrainingContext`: its
calibration batches (``calibration_batches``, drawn on rank 0 only: the other DDP ranks take rank 0's decision),
nnU-Net's ignore label and whether targets are regions; the calibration's per-module inputs come from
:class:`~nnunet_prune.surgery.taps.ModuleInputTap`. The method runs forwards but never changes a tensor's shape: it
answers with a :class:`~nnunet_prune.surgery.removal.Removal` (``mask_blocks``, ``restore_blocks``, ``blocks``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from time import time
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from nnunet_prune.criteria.pspseg import least_important_subset, subset_discrepancies
from nnunet_prune.methods.base import MethodSettings, PruningMethod, TrainingProgress
from nnunet_prune.surgery.branches import ACTIVE, DELETED, MASKED, block_states, branch_states, prm_modules
from nnunet_prune.surgery.graph import ChannelGraph
from nnunet_prune.surgery.removal import Removal, SurgeryResult
from nnunet_prune.surgery.taps import ModuleInputTap

ENV_VAR = "NNUNET_PRUNE_PSPSEG"


@dataclass
class PSPSegSettings(MethodSettings):
    """PSP-Seg's settings (see the module docstring); ``NNUNET_PRUNE_PSPSEG='k=1,patience=10,...'``."""

    NAME: ClassVar[str] = "PSPSeg"
    ENV_VAR: ClassVar[str] = ENV_VAR
    EXAMPLE: ClassVar[str] = ("k=1,patience=10,tolerance=0.01,stop_fraction=0.4,calibration_patches=100,"
                              "tr_weight=0.1,rl_weight=0.1")

    k: int = 1  # pruning step: branches masked per module at each pruning event (paper: 1 for S/B, 2 for L)
    patience: int = 10  # epochs without a new TR or RL minimum that make a convergence (0: every epoch)
    tolerance: float = 0.01  # the FD loss may exceed its best by this much and still count as not worse
    stop_fraction: float = 0.4  # no new masks after this fraction of the epochs
    calibration_patches: int = 100  # training patches the block-wise criterion is computed on
    tr_weight: float = 0.1  # weight of the target-representation loss
    rl_weight: float = 0.1  # weight of the region-localisation loss

    def problems(self) -> list[str]:
        """Ranges: k >= 1, patience >= 0, tolerance >= 0, 0 < stop_fraction <= 1, calibration_patches >= 1,
        weights >= 0."""
        out = super().problems()
        out += ["k must be >= 1"] * (self.k < 1) + ["patience must be >= 0"] * (self.patience < 0)
        out += ["tolerance must be >= 0"] * (self.tolerance < 0)
        out += ["stop_fraction must be in (0, 1]"] * (not 0 < self.stop_fraction <= 1)
        out += ["calibration_patches must be >= 1"] * (self.calibration_patches < 1)
        out += ["tr_weight and rl_weight must be >= 0"] * (self.tr_weight < 0 or self.rl_weight < 0)
        return out


def binarised_foreground(target: torch.Tensor, ignore_label: int | None = None, regions: bool = False
                         ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(foreground, valid) from an nnU-Net target: a (B, 1, *S) label map (foreground: any label > 0 other than the
    ignore label) or, with ``regions``, (B, R, *S) 0/1 region channels (foreground: any region; with an ignore label
    nnU-Net appends the ignore mask as the last channel). foreground is float (B, 1, *S); valid is None or a bool
    mask of the voxels that are not ignored."""
    if regions:
        if ignore_label is not None:
            valid = target[:, -1:] == 0
            return ((target[:, :-1] > 0).any(1, keepdim=True) & valid).float(), valid
        return (target > 0).any(1, keepdim=True).float(), None
    valid = (target != ignore_label) if ignore_label is not None else None
    fg = target > 0
    if valid is not None:
        fg = fg & valid
    return fg.float(), valid


def target_representation_loss(features: torch.Tensor, masked_features: torch.Tensor) -> torch.Tensor:
    """TR (Eq. 3): 1 - cosine similarity of the encoder outputs of the image and of the GT-masked image, per sample
    over all elements, averaged; (B, C, *S) twice -> scalar. ``masked_features`` carries no gradient."""
    return 1 - F.cosine_similarity(features.flatten(1).float(), masked_features.flatten(1).float().detach(),
                                   dim=1).mean()


def region_localisation_loss(stage_outputs: Iterable[torch.Tensor], targets: Iterable[torch.Tensor],
                             ignore_label: int | None = None, regions: bool = False) -> torch.Tensor:
    """RL (Eq. 4): mean over decoder stages of BCE(channel mean of the stage output as a logit, binarised ground
    truth at that scale); stage outputs (B, C_s, *S_s) paired with targets (B, 1, *S_s) in the same order."""
    losses = []
    for feat, target in zip(stage_outputs, targets):
        fg, valid = binarised_foreground(target, ignore_label, regions)
        logits = feat.float().mean(1, keepdim=True)
        weight = valid.float() if valid is not None else None
        losses.append(F.binary_cross_entropy_with_logits(logits, fg, weight=weight))
    if not losses:
        raise ValueError("no decoder stage outputs to supervise")
    return torch.stack(losses).mean()


class PSPSegMethod(PruningMethod):
    """PSP-Seg's progressive pruning (module docstring). Needs a PSP-Seg network (``record_features``, PRMs)."""

    settings_class = PSPSegSettings
    removes = "branches"
    state_from_rank0 = True
    log_keys = ("tr_loss", "rl_loss", "pspseg_k", "active_branches", "masked_branches", "deleted_branches")

    def __init__(self, settings: PSPSegSettings, rng=None):
        super().__init__(settings, rng)
        s = settings
        self.k = s.k
        self.tr: list[float | None] = []  # per epoch
        self.rl: list[float | None] = []
        self.last_event = -1  # epoch of the last pruning event
        self.best_fd = math.inf  # lowest FD loss before the current mask
        self.masked: list[str] = []  # branch paths masked at the last event, not yet settled
        self.events: list[dict] = []
        self.network: nn.Module | None = None
        self._sums = [0.0, 0.0, 0]
        self._batch: tuple[torch.Tensor, Any] | None = None
        self._events_now: list[dict] = []  # this epoch's events

    # -- structure ----------------------------------------------------------------------------------------
    def bind(self, graph: ChannelGraph) -> None:
        """Remember the network (PSP-Seg's)."""
        self.network = graph.network

    def network_problems(self, network: nn.Module, graph: ChannelGraph, patch_size) -> list[str]:
        """A network without PRMs cannot be pruned by PSP-Seg."""
        return [] if prm_modules(network) else ["it has no Parallel Redundant Modules (not a PSP-Seg network)"]

    def start(self, network: nn.Module, graph: ChannelGraph, progress: TrainingProgress | None = None) -> Removal:
        """A fresh fold whose weights come with masked branches (``-pretrained_weights`` of a PSP-Seg fold): restore
        them, this run's schedule decides anew."""
        masked = [p for p, s in block_states(network).items() if s == MASKED]
        if masked:
            self.say(f"PSP-Seg: {len(masked)} branch(es) masked in the starting weights restored")
        return Removal(restore_blocks=masked)

    def release(self) -> None:
        """Stop recording features."""
        if self.network is not None:
            self.network.record_features = False

    # -- training: the functional-decoupling loss ------------------------------------------------------------
    def epoch_start(self, epoch: int, graph: ChannelGraph) -> None:
        """Reset the epoch's TR / RL sums."""
        self._sums = [0.0, 0.0, 0]

    def batch_start(self, data: torch.Tensor, target) -> None:
        """Keep the batch for the FD loss and let the network record its features."""
        self._batch = (data, target)
        self.network.record_features = True

    def extra_loss(self) -> torch.Tensor | None:
        """tr_weight * TR + rl_weight * RL of the current training step (None outside a recorded step)."""
        net, batch = self.network, self._batch
        if batch is None or getattr(net, "bottleneck", None) is None or not net.decoder.features:
            return None
        data, target = batch
        targets = list(target) if isinstance(target, (list, tuple)) else [target]
        device = net.bottleneck.device
        targets = [t.to(device, non_blocking=True) for t in targets]
        ignore, regions = self.context.ignore_label, self.context.has_regions
        fg, _ = binarised_foreground(targets[0], ignore, regions)
        with torch.no_grad():
            masked = net.encoder(data.to(device, non_blocking=True) * fg)[-1]
        tr = target_representation_loss(net.bottleneck, masked)
        # stage outputs and targets are both highest resolution first (one target without deep supervision)
        rl = region_localisation_loss(net.decoder.features, targets, ignore, regions)
        self._sums[0] += float(tr.detach())
        self._sums[1] += float(rl.detach())
        self._sums[2] += 1
        s = self.settings
        return s.tr_weight * tr + s.rl_weight * rl

    def step_end(self) -> None:
        """Drop the step's batch and features."""
        self._batch = None
        if self.network is not None:
            self.network.record_features = False
            self.network.bottleneck = None
            self.network.decoder.features = []

    # -- decisions ----------------------------------------------------------------------------------------------
    def _converged(self, epoch: int) -> bool:
        p = self.settings.patience
        window = range(self.last_event + 1, epoch + 1)
        if p == 0:
            return True  # forced: every epoch
        if len(window) <= p:
            return False
        for series in (self.tr, self.rl):
            values = [series[e] for e in window]
            if any(v is None for v in values):
                return False
            if min(values[-p:]) < min(values[:-p]):
                return False  # a new minimum in the last `patience` epochs
        return True

    def _window_fd(self, epoch: int) -> float:
        values = [self.tr[e] + self.rl[e] for e in range(self.last_event + 1, epoch + 1)
                  if self.tr[e] is not None and self.rl[e] is not None]
        return min(values) if values else math.inf

    def decide(self, graph: ChannelGraph, progress: TrainingProgress) -> Removal:
        """Record the epoch's TR / RL; at a convergence settle pending masks (restore or delete) or mask the least
        important ``k`` branches of every PRM."""
        s = self.settings
        epoch = progress.epoch
        n = self._sums[2]
        while len(self.tr) <= epoch:
            self.tr.append(None)
            self.rl.append(None)
        self.tr[epoch] = self._sums[0] / n if n else None
        self.rl[epoch] = self._sums[1] / n if n else None
        self._events_now = []
        if not progress.pruning_allowed or not self._converged(epoch):
            return Removal()
        stopped = self.k <= 0 or epoch + 1 > s.stop_fraction * progress.num_epochs
        if stopped and not self.masked:
            return Removal()  # pruning has stopped and nothing is pending
        removal = Removal()
        current = self._window_fd(epoch)  # the lowest FD loss since the last event
        best = self.best_fd
        self.last_event = epoch
        if self.masked:  # settle the pending masks
            paths, self.masked = self.masked, []
            self.best_fd = min(best, current)
            if current > best + s.tolerance:
                self.k -= 1
                self._note("restore", epoch, paths, f"FD loss {current:.4f} > best {best:.4f} + {s.tolerance}: "
                                                    f"{len(paths)} branch(es) restored, k -> {self.k}")
                return Removal(restore_blocks=paths)  # the restored network converges again before the next mask
            self._note("delete", epoch, paths, f"FD loss {current:.4f} <= best {best:.4f} + {s.tolerance}: "
                                               f"{len(paths)} masked branch(es) deleted")
            removal.blocks = paths  # and the same event masks the next subset (as the authors' code)
        elif current > best + s.tolerance:
            self._note("wait", epoch, [], f"converged, but FD loss {current:.4f} > best {best:.4f} + "
                                          f"{s.tolerance}: nothing masked")
            return removal
        else:
            self.best_fd = min(best, current)
        if stopped or not self.context.is_main:
            return removal  # pruning has stopped (or another rank decides)
        start = time()
        chosen = self.least_important_branches(self.k)  # (branches being deleted are masked: not candidates)
        if chosen:
            self.masked = chosen
            self._note("mask", epoch, chosen, f"converged (FD loss {current:.4f}): masked {len(chosen)} branch(es) "
                                              f"with k={self.k} in {time() - start:.1f} s of calibration")
            removal.mask_blocks = chosen
        return removal

    def least_important_branches(self, k: int) -> list[str]:
        """Per PRM, the subset of ``min(k, active)`` active branches whose masking changes the module's output least
        over ``calibration_patches`` patches (Eq. 6), as branch paths. Streamed: each module scores its subsets when
        its input passes (a :class:`~nnunet_prune.surgery.taps.ModuleInputTap`), then drops its branch outputs.

        Raises:
            RuntimeError: the training context gives no calibration batches.
        """
        calibration = self.context.calibration_batches
        if calibration is None:
            raise RuntimeError("PSP-Seg needs calibration batches (TrainingContext.calibration_batches)")
        net = self.network
        candidates: dict[str, list[tuple[str, ...]]] = {}
        for path, prm in prm_modules(net).items():
            active = [i for i, b in prm.branches.items() if b.is_active]
            if active:
                candidates[path] = list(itertools.combinations(active, min(k, len(active))))
        errors: dict[str, dict[tuple[str, ...], float]] = {p: dict.fromkeys(c, 0.0) for p, c in candidates.items()}
        prms = prm_modules(net)

        def score(path: str, module: nn.Module, x: torch.Tensor) -> None:
            outs = {i: module.branches[i](x) for i in {i for c in candidates[path] for i in c} |
                    {i for i, b in module.branches.items() if b.is_active}}
            for subset, e in subset_discrepancies(x, outs, module.act, candidates[path]).items():
                errors[path][subset] += e

        tap = ModuleInputTap(score).attach({p: prms[p] for p in candidates})
        was_training = net.training
        device = next(net.parameters()).device
        net.eval()
        try:
            seen = 0
            with torch.no_grad():
                for data in calibration():
                    net(data.to(device))
                    seen += data.shape[0]
                    if seen >= self.settings.calibration_patches:
                        break
        finally:
            tap.detach()
            net.train(was_training)
        return [f"{p}.branches.{i}" for p in candidates for i in least_important_subset(errors[p])]

    def after_surgery(self, result: SurgeryResult, graph: ChannelGraph) -> None:
        """Re-bind (a deletion rebuilds the graph)."""
        self.network = graph.network

    def _note(self, kind: str, epoch: int, paths: list[str], text: str) -> None:
        event = {"kind": kind, "epoch": epoch, "branches": list(paths), "k": self.k}
        self._events_now.append(event)
        self.events.append(event)
        self.say(f"PSP-Seg: {text}")

    # -- records ------------------------------------------------------------------------------------------------
    def _states_after_decision(self) -> dict[str, list[str]]:
        """The branch map with this epoch's decision applied (scalars are asked before the surgery)."""
        states = {k: list(v) for k, v in branch_states(self.network).items()}
        for event in self._events_now:
            new = {"mask": MASKED, "delete": DELETED, "restore": ACTIVE}.get(event["kind"])
            for path in event["branches"] if new else []:
                prm, _, index = path.rpartition(".branches.")
                if prm in states and int(index) < len(states[prm]):
                    states[prm][int(index)] = new
        return states

    def scalars(self, graph: ChannelGraph) -> dict[str, Any]:
        """TR, RL, k and how many branches are active / masked / deleted after this epoch's decision."""
        states = [v for row in self._states_after_decision().values() for v in row]
        epoch = len(self.tr) - 1
        return {"tr_loss": self.tr[epoch] if epoch >= 0 else None, "rl_loss": self.rl[epoch] if epoch >= 0 else None,
                "pspseg_k": self.k, "active_branches": states.count(ACTIVE),
                "masked_branches": states.count(MASKED), "deleted_branches": states.count(DELETED)}

    def record(self, graph: ChannelGraph) -> dict[str, Any]:
        """The branch map (module -> state per branch) and this epoch's events."""
        return {"branch_map": branch_states(self.network), "pspseg_events": list(self._events_now)}

    def state(self) -> dict:
        """k, the TR / RL history, the last event, the best FD loss, pending masks, the events."""
        return {"k": self.k, "tr": self.tr, "rl": self.rl, "last_event": self.last_event,
                "best_fd": None if math.isinf(self.best_fd) else self.best_fd, "masked": self.masked,
                "events": self.events}

    def load_state(self, state: Mapping) -> None:
        """Restore :meth:`state`."""
        self.k = int(state.get("k", self.k))
        self.tr, self.rl = list(state.get("tr", [])), list(state.get("rl", []))
        self.last_event = int(state.get("last_event", -1))
        best = state.get("best_fd")
        self.best_fd = math.inf if best is None else float(best)
        self.masked = list(state.get("masked", []))
        self.events = list(state.get("events", []))

    def schedule_problems(self, num_epochs: int, final_epochs_without_pruning: int) -> list[str]:
        """PSP-Seg masks first after patience + 1 epochs and stops masking at stop_fraction of the budget."""
        s = self.settings
        # the first convergence ends epoch `patience` (0-based: epoch 0 always sets a new minimum unless patience is
        # 0); new masks end with epoch floor(stop_fraction * epochs) - 1 and before the final epochs
        last_mask = min(math.floor(s.stop_fraction * num_epochs) - 1, num_epochs - final_epochs_without_pruning - 1)
        if s.patience > last_mask:
            return [f"PSP-Seg cannot prune in {num_epochs} epoch(s): a convergence needs more than patience="
                    f"{s.patience} epochs and new masks stop after stop_fraction={s.stop_fraction} of the epochs "
                    f"(epoch {last_mask}). For a short run set {ENV_VAR}='patience=2,stop_fraction=0.8' or train "
                    f"longer (NNUNET_PRUNE_EPOCHS)."]
        return []

    def end_advice(self, removed_any: bool, progress: TrainingProgress) -> list[str]:
        """Branches still masked (kept in the checkpoint, deleted by the export), or why none was deleted."""
        out = []
        if self.masked:
            out.append(f"PSP-Seg: {len(self.masked)} branch(es) are still masked at the end (masked after epoch "
                       f"{self.last_event}, no convergence since): the saved network is the one trained and validated "
                       f"without them; `nnunet-prune export` deletes them (no output changes), `--c` with more epochs "
                       f"settles them.")
        elif not removed_any and progress.epoch >= 0:
            out.append(f"PSP-Seg deleted no branch in {progress.epoch + 1} epochs ({len(self.events)} pruning "
                       f"event(s)). It needs TR and RL to converge (patience={self.settings.patience}) before "
                       f"stop_fraction={self.settings.stop_fraction} of the epochs; set {ENV_VAR}='patience=...' or "
                       f"train longer.")
        return out
