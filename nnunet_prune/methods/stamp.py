"""STAMP (Dinsdale et al., "STAMP: Simultaneous Training and Model Pruning") and the two simplified variants of the
Lean U-Net paper (papers/lunet.txt §II-B Algorithm 1, §III-B, §III-C), in one file.

Algorithm 1 of the LUnet paper (STAMP), at nnU-Net scale::

    train (the first start_fraction of the epochs)
    repeat every recovery_epochs epochs, until a stop rule holds:
        rank every channel by the L2 norm of its activation map, averaged over the training batches since the
            last step and normalised per layer                                     (criteria.stamp)
        remove the lowest-ranked channels, one at a time, the layer re-normalised   (this file; the driver cuts)
        update the targeted dropout probabilities                                  (p_l = p_base * q_l / max q)
    train the final architecture for the rest of the budget

The papers remove one channel per step; a default nnU-Net has thousands of channels, so a step removes
``per_step`` channels: a count (>= 1), a fraction of the remaining channels (< 1), or -- the default, 0 -- the number
that spreads ``1 - target_channels`` of the initial channels evenly over the steps the epoch budget allows, so the
schedule scales with the budget (a 10-epoch run prunes as far as a 1000-epoch one, in larger steps). Stop rules:
``target_channels`` / ``target_params`` / ``target_macs`` (fractions of the unpruned network), ``max_dice_drop``
(nnU-Net's smoothed validation pseudo Dice fell by more than this from its best), ``max_steps``, and
``stop_fraction`` of the epochs. The paper's own schedule: ``per_step=1,recovery_epochs=5,start_fraction=0,
stop_fraction=1,target_channels=0,max_dice_drop=0``.

Variants (same schedule and dropout, another choice of channels):

* :class:`StampRandomInBlockMethod` -- the criterion picks the group(s), random channels of those groups go (§III-B);
* :class:`StampWidestBlockMethod` -- no criterion: a random channel of the currently widest group, one at a time
  (§III-C); its dropout follows the same rule (p_l = p_base * width_l / max width).

A "layer" or "block" of the paper is a coupling group here (a conv's output channels with everything coupled to
them); a group measured at several points (the summands of a residual addition) takes the max of its normalised
scores.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from nnunet_prune.criteria.stamp import activation_l2, layer_dropout, rank_weights, width_dropout
from nnunet_prune.methods.base import MethodSettings, PruningMethod, TrainingProgress
from nnunet_prune.methods.selection import layer_scores, select_lowest
from nnunet_prune.surgery.graph import ChannelGraph, ChannelGroup
from nnunet_prune.surgery.removal import Removal, SurgeryResult
from nnunet_prune.surgery.taps import ActivationTap, ChannelMasks, ChannelStatistics

ENV_VAR = "NNUNET_PRUNE_STAMP"


def _round(x: float) -> int:
    return int(math.floor(x + 0.5))


@dataclass
class StampSettings(MethodSettings):
    """STAMP's schedule, stop rules and dropout (module docstring). Defaults: p_base 5 % (LUnet paper §II-C),
    one epoch of recovery per step (the LUnet paper's setting for large 3D U-Nets), pruning during the second tenth to
    the first half of the budget down to a quarter of the channels (the paper's 25 %-remaining point).

    Set by a variant class (``nnUNetTrainerSTAMP_noDropout``: p_base = 0), ``plans['nnunet_prune']['stamp']`` or
    ``NNUNET_PRUNE_STAMP='per_step=0.02,recovery_epochs=2'`` (:meth:`MethodSettings.resolve`).
    """

    NAME: ClassVar[str] = "STAMP"
    ENV_VAR: ClassVar[str] = ENV_VAR
    EXAMPLE: ClassVar[str] = "per_step=0,recovery_epochs=1,start_fraction=0.1,stop_fraction=0.5,target_channels=0.25"

    per_step: float = 0.0  # channels per step: 0 auto (see module docstring), >= 1 a count, (0, 1) a fraction left
    recovery_epochs: int = 1  # epochs of training between two steps
    start_fraction: float = 0.1  # the first step after this fraction of the epochs (at least one epoch)
    stop_fraction: float = 0.5  # no step after this fraction of the epochs: the final architecture trains on
    target_channels: float = 0.25  # stop at this fraction of the initial channels (0: no channel target)
    target_params: float = 0.0  # stop at this fraction of the initial parameters (0: off)
    target_macs: float = 0.0  # stop at this fraction of the initial MACs per patch (0: off)
    max_dice_drop: float = 0.05  # stop when the smoothed pseudo Dice is this far below its best (0: off)
    max_steps: int = 0  # at most this many steps (0: no limit)
    p_base: float = 0.05  # targeted dropout: the largest probability (0: no dropout)
    post_activation: bool = True  # measure after the nonlinearity (the consumers' input); 0: before it
    seed: int = -1  # the random draws of the variants (channels, ties); -1: unseeded

    def problems(self) -> list[str]:
        """Ranges: per_step >= 0 and whole when >= 1; recovery_epochs >= 1; 0 <= start_fraction <= stop_fraction
        <= 1; targets in [0, 1); max_dice_drop >= 0; max_steps >= 0; 0 <= p_base < 1; the automatic step size
        needs target_channels > 0."""
        problems = super().problems()
        if self.seed < -1:
            problems.append("seed must be -1 (unseeded) or >= 0")
        if self.per_step < 0 or (self.per_step >= 1 and not float(self.per_step).is_integer()):
            problems.append("per_step must be 0 (automatic), a fraction in (0, 1) or a whole count >= 1")
        if self.recovery_epochs < 1:
            problems.append("recovery_epochs must be >= 1")
        if not 0 <= self.start_fraction <= self.stop_fraction <= 1:
            problems.append("start_fraction and stop_fraction must satisfy 0 <= start_fraction <= stop_fraction <= 1")
        for name in ("target_channels", "target_params", "target_macs"):
            if not 0 <= getattr(self, name) < 1:
                problems.append(f"{name} must be in [0, 1) (a fraction of the unpruned network; 0 turns it off)")
        if not 0 <= self.max_dice_drop <= 1:
            problems.append("max_dice_drop must be in [0, 1] (a Dice difference; 0 turns it off)")
        if self.max_steps < 0:
            problems.append("max_steps must be >= 0 (0: no limit)")
        if not 0 <= self.p_base < 1:
            problems.append("p_base must be in [0, 1)")
        if self.per_step == 0 and self.target_channels == 0:
            problems.append("per_step=0 (automatic) spreads the channel target over the budget: set target_channels "
                            "> 0 or a per_step")
        return problems

    # -- the schedule ------------------------------------------------------------------------------------
    def step_epochs(self, num_epochs: int, final_epochs_without_pruning: int = 1) -> list[int]:
        """The epochs (0-based) after which a step is scheduled in a run of ``num_epochs``: after
        max(recovery_epochs, start_fraction * N) epochs (training comes first), then every recovery_epochs epochs,
        up to stop_fraction * N epochs and never in the last ``final_epochs_without_pruning``."""
        first = max(self.recovery_epochs, _round(self.start_fraction * num_epochs))
        last = min(int(math.floor(self.stop_fraction * num_epochs + 1e-9)),
                   num_epochs - final_epochs_without_pruning)
        return [k - 1 for k in range(first, last + 1, self.recovery_epochs)]

    def channels_per_step(self, remaining: int, initial: int, num_epochs: int,
                          final_epochs_without_pruning: int = 1) -> int:
        """How many channels the next step removes, before the channel target clips it."""
        if self.per_step >= 1:
            return int(self.per_step)
        if self.per_step > 0:
            return max(1, _round(self.per_step * remaining))
        steps = max(1, len(self.step_epochs(num_epochs, final_epochs_without_pruning)))
        return max(1, math.ceil((1 - self.target_channels) * initial / steps))

    def schedule_problems(self, num_epochs: int, final_epochs_without_pruning: int = 1) -> list[str]:
        """Why a run of ``num_epochs`` epochs prunes nothing (empty: the schedule has steps)."""
        if not self.step_epochs(num_epochs, final_epochs_without_pruning):
            return [f"STAMP has no pruning step in {num_epochs} epoch(s): a step needs at least "
                    f"max(recovery_epochs, start_fraction x N) = "
                    f"{max(self.recovery_epochs, _round(self.start_fraction * num_epochs))} epoch(s) of training "
                    f"before it, may come at most stop_fraction x N = {int(self.stop_fraction * num_epochs)} "
                    f"epoch(s) into the run, and never in the last {final_epochs_without_pruning} epoch(s). Train "
                    f"more epochs (NNUNET_PRUNE_EPOCHS) or set "
                    f"{ENV_VAR}='start_fraction=0,stop_fraction=1'."]
        return []


class StampObserver:
    """Activation-L2 statistics per group and point, summed over training batches (eval passes are not seen).

    Tapped at the group outputs, after the nonlinearity (``post_activation``, the default of the settings), or at the
    pre-activation points (:attr:`~nnunet_prune.surgery.graph.ChannelGroup.pre_activation`, as METHODS.md reads
    STAMP).

    Note: after an InstanceNorm (nnU-Net's default) a channel's pre-activation map is gamma * x_hat + beta with x_hat
    of zero mean and unit variance per sample, so its L2 norm is exactly sqrt(N * (gamma^2 + beta^2)) (N voxels):
    the pre-activation criterion then depends on the norm's affine parameters only, whatever the batches. After the
    nonlinearity it depends on the data.
    """

    def __init__(self, post_activation: bool = True):
        self.statistics = ChannelStatistics()
        self.tap = ActivationTap(self._observe, points="outputs" if post_activation else "pre_activation")

    def _observe(self, group: ChannelGroup, point: int, output: torch.Tensor) -> None:
        with torch.no_grad():
            self.statistics.add(group.name, point, activation_l2(output))

    def raw(self, graph: ChannelGraph) -> dict[str, np.ndarray]:
        """Group name -> (P, C) mean activation L2 per measuring point and channel (not normalised), for every group
        seen at all its points since the last reset."""
        out = {}
        for g in graph:
            means = [self.statistics.mean(g.name, j) for j in range(len(getattr(g, self.tap.points)))]
            if means and all(m is not None and m.shape[0] == g.size for m in means):
                out[g.name] = np.stack([m.detach().cpu().double().numpy() for m in means])
        return out

    def scores(self, graph: ChannelGraph) -> dict[str, np.ndarray]:
        """Group name -> (C,) normalised scores (:func:`layer_scores` of :meth:`raw`)."""
        return {name: layer_scores(r) for name, r in self.raw(graph).items()}

    def batches(self) -> int:
        """Training batches averaged so far (the most of any point)."""
        return max(self.statistics.batches.values(), default=0)


@dataclass
class StampSchedule:
    """Where a run is: steps done, why pruning stopped (None: it has not), the unpruned channel count."""

    initial_channels: int = 0
    steps_done: int = 0
    stop_reason: str | None = None


class StampMethod(PruningMethod):
    """STAMP (LUnet paper Algorithm 1) behind the method protocol: criterion-ranked channels removed step by step,
    targeted dropout on the group outputs in training."""

    settings_class = StampSettings
    log_keys = ("stamp_dropout_mean", "stamp_cut_score")
    #: whether the rule ranks channels by the activation criterion (the widest-block rule does not)
    uses_criterion: ClassVar[bool] = True

    def __init__(self, settings: StampSettings, rng: np.random.Generator | None = None):
        if rng is None and settings.seed >= 0:
            rng = np.random.default_rng(settings.seed)
        super().__init__(settings, rng)
        self.schedule = StampSchedule()
        self.observer = StampObserver(settings.post_activation) if self.uses_criterion else None
        self.masks = ChannelMasks(rescale=True)
        self._raw: dict[str, np.ndarray] = {}
        self._removed_scores: dict[str, list[float]] = {}
        self._stepped = False  # this epoch's decision was a step
        self._finished = False  # no step is left (a stop rule, or the schedule is over)
        self._announced = False
        self._pending_dropout: dict[str, float] = {}

    # -- structure --------------------------------------------------------------------------------------
    def bind(self, graph: ChannelGraph) -> None:
        """Taps for the criterion (not for the widest-block rule, nor once no step is left), dropout at the group
        outputs."""
        if not self.schedule.initial_channels:
            self.schedule.initial_channels = sum(graph.widths().values())
        if self.observer is not None and not self._finished and self.schedule.stop_reason is None:
            self.observer.tap.attach(graph)
        if self._pending_dropout:  # restored by load_state (--c)
            probabilities, self._pending_dropout = self._pending_dropout, {}
            self.set_dropout(graph, probabilities)
        self.masks.attach(graph)

    def release(self) -> None:
        """Remove every hook (the dropout probabilities stay in :meth:`state`)."""
        if self.observer is not None:
            self.observer.tap.detach()
        self.masks.detach()

    def start(self, network, graph: ChannelGraph, progress: TrainingProgress | None = None) -> Removal:
        """Record the unpruned channel count (a fresh fold only; ``--c`` restores it from the state)."""
        self.schedule.initial_channels = sum(graph.widths().values())
        return Removal()

    # -- decisions ----------------------------------------------------------------------------------------
    def stop_rule(self, graph: ChannelGraph, progress: TrainingProgress) -> str | None:
        """The first stop rule that holds at a scheduled step (None: this step may go ahead). The Dice rule compares
        with the best smoothed pseudo Dice since the first scheduled step (the noisy rise of early training never
        stops a schedule that has not started)."""
        s = self.settings
        remaining, initial = sum(graph.widths().values()), self.schedule.initial_channels
        if s.max_steps and self.schedule.steps_done >= s.max_steps:
            return f"max_steps={s.max_steps} reached"
        if s.target_channels and remaining <= math.ceil(s.target_channels * initial):
            return f"target_channels={s.target_channels} reached ({remaining} of {initial} channels)"
        for name, now, first in (("target_params", progress.parameters, progress.initial_parameters),
                                 ("target_macs", progress.macs, progress.initial_macs)):
            limit = getattr(s, name)
            if limit and now is not None and first and now <= limit * first:
                return f"{name}={limit} reached ({now / first:.3f} of the unpruned network)"
        steps = s.step_epochs(progress.num_epochs, progress.final_epochs_without_pruning)
        window = [float(d) for d in list(progress.pseudo_dice)[steps[0]:progress.epoch + 1]
                  if d is not None and math.isfinite(float(d))] if steps else []
        if s.max_dice_drop and len(window) >= 2 and max(window[:-1]) - window[-1] > s.max_dice_drop:
            return (f"max_dice_drop={s.max_dice_drop} exceeded (smoothed pseudo Dice {window[-1]:.4f}, best since "
                    f"the first step {max(window[:-1]):.4f})")
        return None

    def decide(self, graph: ChannelGraph, progress: TrainingProgress) -> Removal:
        """At a scheduled epoch, unless a stop rule holds: rank, and choose the channels of this step."""
        s, sch = self.settings, self.schedule
        self._removed_scores, self._stepped = {}, False
        steps = s.step_epochs(progress.num_epochs, progress.final_epochs_without_pruning)
        if not self._announced:  # the first decision of this run (also after --c: the budget may have changed)
            self._announced = True
            ahead = [e for e in steps if e >= progress.epoch]
            n = s.channels_per_step(1, sch.initial_channels, progress.num_epochs,
                                    progress.final_epochs_without_pruning)
            per = f"{n} channels" if s.per_step == 0 or s.per_step >= 1 else f"{s.per_step:g} of the remaining channels"
            self.say(
                f"STAMP schedule for {progress.num_epochs} epochs: {len(steps)} step(s), after epochs (0-based) "
                f"{_epochs_text(steps)}" + (f", {len(ahead)} of them still ahead" if progress.epoch > 0 else "")
                + f"; {per} per step, recovery {s.recovery_epochs} epoch(s); target "
                + (f"{s.target_channels:g} of {sch.initial_channels} channels" if s.target_channels else "none"))
        self._finished = sch.stop_reason is not None or not steps or progress.epoch >= steps[-1]
        if sch.stop_reason is not None or progress.epoch not in steps or not progress.pruning_allowed:
            return Removal()
        reason = self.stop_rule(graph, progress)
        if reason is not None:
            sch.stop_reason, self._finished = reason, True
            self.say(f"STAMP: pruning stops after epoch {progress.epoch}: {reason}; the architecture "
                               f"trains on as it is")
            return Removal()
        remaining = sum(graph.widths().values())
        count = s.channels_per_step(remaining, sch.initial_channels, progress.num_epochs,
                                    progress.final_epochs_without_pruning)
        if s.target_channels:
            count = min(count, remaining - math.ceil(s.target_channels * sch.initial_channels))
        self._raw = self.observer.raw(graph) if self.observer is not None else {}
        if self.uses_criterion and not self._raw:
            self.say("STAMP: no activation statistics were collected since the last step; no step")
            return Removal()
        self._stepped = True
        selected = self.select(graph, self._raw, max(count, 0))
        n = sum(len(v) for v in selected.values())
        cut = self.cut_score()
        self.say(
            f"STAMP step {sch.steps_done + 1}: removing {n} channel(s) from {len(selected)} group(s)"
            + (f" (normalised activation L2 up to {cut:.4f}, "
               f"{self.observer.batches()} batches)" if cut is not None else "")
            + f"; {remaining - n} of {sch.initial_channels} channels remain"
            + ("; the schedule's last step" if progress.epoch == steps[-1] else ""))
        return Removal(channels=selected)

    def cut_score(self) -> float | None:
        """The highest score among the channels chosen at this epoch's step (None: no step, or no criterion)."""
        return max((v for vs in self._removed_scores.values() for v in vs), default=None)

    def select(self, graph: ChannelGraph, raw: Mapping[str, np.ndarray], count: int) -> dict[str, list[int]]:
        """STAMP: the ``count`` lowest-ranked channels (:func:`select_lowest`: one at a time, re-normalised); group ->
        channels in the order chosen. Their scores go to the record."""
        chosen: dict[str, list[int]] = {}
        self._removed_scores = {}
        for g, c, score in select_lowest(raw, count):
            chosen.setdefault(g, []).append(c)
            self._removed_scores.setdefault(g, []).append(round(score, 6))
        return chosen

    def after_surgery(self, result: SurgeryResult, graph: ChannelGraph) -> None:
        """After a step: dropout re-indexed to the surviving channels (whoever decided: under DDP rank 0's decision is
        applied on every rank), then set from the new ranking; statistics start again; the taps come off when the
        schedule is over."""
        removed = result.channels.removed if result.channels is not None else {}
        if removed:
            self.masks.reindex(removed)
            self.schedule.steps_done += 1
        if self._stepped or removed:
            survivors = {name: layer_scores(np.delete(r, removed.get(name, []), axis=1))
                         for name, r in self._raw.items()
                         if r.shape[1] == graph[name].size + len(removed.get(name, [])) and graph[name].size > 0}
            self.update_dropout(graph, survivors)
            if self.observer is not None:
                self.observer.statistics.reset()
        if self._finished:
            if self.observer is not None:
                self.observer.tap.detach()  # no more steps: no statistics either
            if self.masks.dropout:  # and no targeted dropout: nothing is next in line any more
                self.masks.dropout = {}
                self.masks.attach(graph)

    def update_dropout(self, graph: ChannelGraph, scores: Mapping[str, np.ndarray]) -> None:
        """p_l = p_base * q_l / max q from the surviving channels' rank weights (per group, every channel of it)."""
        if self.settings.p_base <= 0:
            return
        probabilities = layer_dropout(rank_weights(scores), self.settings.p_base)
        self.set_dropout(graph, probabilities)

    def set_dropout(self, graph: ChannelGraph, probabilities: Mapping[str, float]) -> None:
        """Per-group dropout probabilities (every channel of a group the same), hooks re-attached. A group down to one
        channel gets none (that channel can never go; dropping it would only blank the layer)."""
        self.masks.dropout = {g.name: torch.full((g.size,), float(probabilities[g.name]))
                              for g in graph if probabilities.get(g.name, 0) > 0 and g.size > 1}
        self.masks.attach(graph)

    # -- records ----------------------------------------------------------------------------------------------
    def dropout(self) -> dict[str, float]:
        """Group -> current dropout probability."""
        return {name: round(float(p[0]), 6) if len(p) else 0.0 for name, p in self.masks.dropout.items()}

    def scalars(self, graph: ChannelGraph) -> dict:
        """Mean dropout probability over the groups, and the highest score among the channels chosen now."""
        p = self.dropout()
        return {"stamp_dropout_mean": float(np.mean([p.get(g.name, 0.0) for g in graph])) if len(graph) else 0.0,
                "stamp_cut_score": self.cut_score()}

    def record(self, graph: ChannelGraph) -> dict:
        """The channels this epoch's step chose with their scores, the dropout per group, the stop reason."""
        reason = self.schedule.stop_reason or ("the schedule's last step is done" if self._finished else None)
        return {"stamp_step": self.schedule.steps_done, "stamp_removed_scores": self._removed_scores,
                "stamp_dropout": self.dropout(), "stamp_stop_reason": reason}

    def state(self) -> dict:
        """Schedule position and dropout probabilities."""
        sch = self.schedule
        return {"initial_channels": sch.initial_channels, "steps_done": sch.steps_done,
                "stop_reason": sch.stop_reason, "dropout": self.dropout(), "rng": self.rng.bit_generator.state}

    def load_state(self, state: Mapping) -> None:
        """Restore what :meth:`state` returned (statistics start again)."""
        self.schedule = StampSchedule(int(state.get("initial_channels") or 0), int(state.get("steps_done") or 0),
                                      state.get("stop_reason"))
        self._pending_dropout = dict(state.get("dropout") or {})
        if isinstance(state.get("rng"), dict) and state["rng"].get("bit_generator") == \
                type(self.rng.bit_generator).__name__:
            self.rng.bit_generator.state = state["rng"]  # the variants' draws continue where they were

    def schedule_problems(self, num_epochs: int, final_epochs_without_pruning: int) -> list[str]:
        """See :meth:`StampSettings.schedule_problems`."""
        return self.settings.schedule_problems(num_epochs, final_epochs_without_pruning)

    def end_advice(self, removed_any: bool, progress: TrainingProgress) -> list[str]:
        """Why nothing was removed (empty if any channel went)."""
        if removed_any:
            return []
        why = self.schedule.stop_reason or "no scheduled step ran"
        return [f"STAMP removed no channel in {progress.epoch + 1} epochs ({why}). See the schedule line at the "
                f"first epoch of the log; {ENV_VAR} sets it."]


class StampRandomInBlockMethod(StampMethod):
    """LUnet paper §III-B: the criterion chooses how many channels each group loses; which channels is random."""

    def select(self, graph: ChannelGraph, raw: Mapping[str, np.ndarray], count: int) -> dict[str, list[int]]:
        """As many channels per group as STAMP would remove there, drawn at random within the group."""
        counts = {g: len(v) for g, v in super().select(graph, raw, count).items()}
        self._removed_scores = {}  # the criterion's scores belong to other channels
        sizes = graph.widths()
        return {g: sorted(int(c) for c in self.rng.choice(sizes[g], size=n, replace=False))
                for g, n in counts.items()}


class StampWidestBlockMethod(StampMethod):
    """LUnet paper §III-C: no criterion; each channel of a step is a random channel of the currently widest group
    (ties broken at random)."""

    uses_criterion = False

    def select(self, graph: ChannelGraph, raw: Mapping[str, np.ndarray], count: int) -> dict[str, list[int]]:
        """``count`` times: the widest group (widths as they will be after the channels chosen so far), a random
        channel of it not chosen yet; never a group's last channel."""
        widths = graph.widths()
        chosen: dict[str, list[int]] = {}
        for _ in range(count):
            top = max(widths.values(), default=0)
            if top <= 1:
                break
            candidates = [g for g, w in widths.items() if w == top]
            group = candidates[int(self.rng.integers(len(candidates)))]
            free = sorted(set(range(graph[group].size)) - set(chosen.get(group, [])))
            chosen.setdefault(group, []).append(int(free[int(self.rng.integers(len(free)))]))
            widths[group] -= 1
        return chosen

    def update_dropout(self, graph: ChannelGraph, scores: Mapping[str, np.ndarray]) -> None:
        """p_l = p_base * width_l / max width (the rule's own order: the widest group is next)."""
        if self.settings.p_base > 0:
            self.set_dropout(graph, width_dropout(graph.widths(), self.settings.p_base))


def _epochs_text(epochs: list[int]) -> str:
    if not epochs:
        return "none"
    if len(epochs) <= 6:
        return ", ".join(map(str, epochs))
    return f"{epochs[0]}, {epochs[1]}, ..., {epochs[-1]}"
