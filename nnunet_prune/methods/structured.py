"""Structured filter pruning of a trained model: L1 / L2 filter norms and network slimming, one-shot or iterative
(papers/structured-pruning-pathology.txt; ../METHODS.md "Structured pruning heuristics").

The paper's procedure, for a trained network::

    score every filter (criteria.structured: L1 or L2 norm of its weights, or |gamma| of its norm layer)
    one-shot:  remove the target fraction at once, then fine-tune
    iterative: remove 5 % of the remaining filters, fine-tune a few epochs, repeat until the target

Coupled layers (skip concatenations, residual additions) lose the same filter indices: a "filter" here is a channel
of a coupling group (:mod:`nnunet_prune.surgery.graph`), scored over all of the group's producers. How the removals
spread over the groups:

* ``distribution=global`` (default): one ranking of every channel, each group's scores normalised by their L2 norm
  (the paper's non-uniform sparsity), taken one channel at a time with the chosen group normalised again
  (:func:`~nnunet_prune.methods.selection.select_lowest`);
* ``distribution=uniform``: every group keeps the same fraction of its initial width (the lowest-scored channels of
  each group go);
* caps: no group loses more than ``max_ratio`` of its initial width, and the groups on a shortcut (skip and residual:
  :meth:`~nnunet_prune.surgery.graph.ChannelGraph.coupled_groups`) no more than ``max_ratio_coupled``, so they are not
  over-pruned; a group keeps one channel at least;
* ``residual_last`` (ResEnc U-Nets): the convolutions inside residual blocks go first, the residual-stream groups only
  when those are at their caps (the paper: "the residual feature maps are presumably more important than the
  convolved ones within a residual block, we prioritize the latter").

Targets: ``pruning_ratio`` of the filters, of the parameters or of the MACs per patch (``ratio_of``); a parameter or
MAC target is met by choosing the filter count with :class:`~nnunet_prune.surgery.size.SizeModel` (exact, no
tensor touched). The schedule fits the epoch budget (see :meth:`StructuredMethod.start`). This module decides what to
remove; the trainers' driver removes it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from torch import nn

from nnunet_prune.criteria.structured import CRITERIA, can_score, gamma_l1, group_scores
from nnunet_prune.methods.base import MethodSettings, PruningMethod, TrainingProgress
from nnunet_prune.methods.selection import select_lowest
from nnunet_prune.surgery.graph import ChannelGraph
from nnunet_prune.surgery.prune import caps_from_ratio
from nnunet_prune.surgery.removal import Removal, SurgeryResult
from nnunet_prune.surgery.size import SizeModel

ENV_VAR = "NNUNET_PRUNE_STRUCTURED"
SLIMMING_ENV_VAR = "NNUNET_PRUNE_SLIMMING"


@dataclass
class StructuredSettings(MethodSettings):
    """Structured pruning's settings (module docstring). Set by a variant class (``nnUNetTrainerStructuredL2_iterative``
    fixes criterion and schedule), ``plans['nnunet_prune']['structured']`` or
    ``NNUNET_PRUNE_STRUCTURED='pruning_ratio=0.9,ratio_of=params'``."""

    NAME: ClassVar[str] = "Structured"
    ENV_VAR: ClassVar[str] = ENV_VAR
    EXAMPLE: ClassVar[str] = "criterion=l2,schedule=iterative,pruning_ratio=0.75,ratio_of=filters"
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "criterion": CRITERIA, "schedule": ("iterative", "oneshot"), "ratio_of": ("filters", "params", "macs"),
        "distribution": ("global", "uniform")}

    criterion: str = "l2"  # l1 | l2 (filter norms) | slimming (|gamma|)
    schedule: str = "iterative"  # iterative (step by step) | oneshot (all at the start)
    pruning_ratio: float = 0.5  # the fraction removed in all, in (0, 1)
    ratio_of: str = "filters"  # what pruning_ratio counts: filters | params | macs (per patch)
    step: float = 0.05  # iterative: the fraction of the remaining filters one step removes
    distribution: str = "global"  # global (normalised ranking) | uniform (the same fraction of every group)
    max_ratio: float = 0.95  # no group loses more than this fraction of its initial width
    max_ratio_coupled: float = 0.8  # the same for skip and residual groups
    residual_last: bool = True  # residual-encoder networks: block convolutions before the residual stream
    stop_fraction: float = 0.5  # iterative: no step after this fraction of the epochs (the rest fine-tunes)

    def problems(self) -> list[str]:
        """Ranges: pruning_ratio and step in (0, 1); caps in (0, 1]; stop_fraction in [0, 1]."""
        out = super().problems()
        if not 0 < self.pruning_ratio < 1:
            out.append(f"pruning_ratio must be in (0, 1) (a fraction removed; got {self.pruning_ratio})")
        if not 0 < self.step < 1:
            out.append(f"step must be in (0, 1) (a fraction of the remaining filters; got {self.step})")
        for name in ("max_ratio", "max_ratio_coupled"):
            if not 0 < getattr(self, name) <= 1:
                out.append(f"{name} must be in (0, 1] (got {getattr(self, name)})")
        if not 0 <= self.stop_fraction <= 1:
            out.append(f"stop_fraction must be in [0, 1] (got {self.stop_fraction})")
        return out

    def steps_for_filters(self) -> int:
        """Iterative steps of ``step`` each until ``pruning_ratio`` of the filters is gone (1 for one-shot)."""
        if self.schedule == "oneshot":
            return 1
        return max(1, math.ceil(math.log(1 - self.pruning_ratio) / math.log(1 - self.step) - 1e-9))


def target_filters(initial: int, pruning_ratio: float) -> int:
    """The filters left when ``pruning_ratio`` of ``initial`` go: ceil((1 - ratio) x initial)."""
    return math.ceil((1 - pruning_ratio) * initial - 1e-9)


def filters_after(initial: int, step: float, k: int) -> int:
    """The filters left after ``k`` iterative steps of ``step`` each: round((1 - step)^k x initial)."""
    return int(math.floor(initial * (1 - step) ** k + 0.5))


# ------------------------------------------------------------------------------------------------ choosing filters
def max_ratios(graph: ChannelGraph, settings: StructuredSettings) -> dict[str, float]:
    """The largest fraction of its initial width each group may lose: ``max_ratio``, and min(max_ratio,
    max_ratio_coupled) for a skip or residual group (never looser than the others'). The fewest channels a group
    keeps follow from :func:`~nnunet_prune.surgery.prune.caps_from_ratio` (initial width x (1 - ratio), rounded up,
    at least 1), the caps the trainers' ``pruning_max_ratio`` uses too."""
    coupled = set(graph.coupled_groups())
    ratio = {True: min(settings.max_ratio, settings.max_ratio_coupled), False: settings.max_ratio}
    return {g.name: ratio[g.name in coupled] for g in graph}


def tiers(graph: ChannelGraph, residual_last: bool) -> list[list[str]]:
    """Groups in the order they are pruned: [all] or, with ``residual_last`` in a network with residual groups,
    [the convolutions inside residual blocks (encoder and bottleneck groups that are not residual), everything else
    (residual streams, decoder, upsampling)]: the paper prioritises the convolved feature maps of a block over the
    residual ones; the decoder is not part of that rule and ranks with the residual streams."""
    names = [g.name for g in graph]
    inner = [g.name for g in graph if g.kind == "conv" and g.part != "decoder"]
    if residual_last and any(g.kind == "residual" for g in graph) and inner:
        return [inner, [n for n in names if n not in inner]]
    return [names]


def removal_order(scores: Mapping[str, np.ndarray], floor: Mapping[str, int], order: Sequence[Sequence[str]]
                  ) -> list[tuple[str, int, float]]:
    """Global distribution: every removable channel, most removable first (per tier, the normalised greedy ranking
    of :func:`~nnunet_prune.methods.selection.select_lowest` down to the floors). (group, channel, normalised score)."""
    out = []
    for tier in order:
        raw = {g: np.asarray(scores[g], dtype=np.float64)[None, :] for g in tier}
        out += select_lowest(raw, sum(r.shape[1] for r in raw.values()), {g: floor[g] for g in tier})
    return out


def uniform_widths(widths: Mapping[str, int], initial: Mapping[str, int], floor: Mapping[str, int],
                   order: Sequence[Sequence[str]], keep: int) -> dict[str, int]:
    """Uniform distribution: the widths (never above the current ones, never below the floors) at which every group
    of a tier keeps the same fraction f of its initial width, with the total as close to ``keep`` channels as the
    rounding allows but not above it (unless the floors forbid); tiers are narrowed in order."""
    out = dict(widths)

    def at(f: float, names: Sequence[str]) -> dict[str, int]:
        return {n: min(widths[n], max(floor[n], int(math.floor(f * initial[n] + 0.5)))) for n in names}

    for tier in order:
        out.update(at(0.0, tier))
        if sum(out.values()) <= keep:  # this tier can close the gap: the largest f that stays within keep
            lo, hi = 0.0, 1.0
            for _ in range(50):
                mid = (lo + hi) / 2
                if sum({**out, **at(mid, tier)}.values()) <= keep:
                    lo = mid
                else:
                    hi = mid
            out.update(at(lo, tier))
            return out
    return out


@dataclass
class Plan:
    """A choice of filters: group -> channels to remove (most removable first), and the widths it leaves."""

    channels: dict[str, list[int]]
    widths: dict[str, int]
    scores: dict[str, list[float]] = field(default_factory=dict)  # the removed channels' scores, per group

    @property
    def total(self) -> int:
        """Channels left in all."""
        return sum(self.widths.values())


class FilterChooser:
    """Which filters to remove from the current network for a given number of remaining channels, or for a size
    limit (parameters or MACs, through a :class:`SizeModel`). Scores are taken once, at construction."""

    def __init__(self, graph: ChannelGraph, settings: StructuredSettings, initial: Mapping[str, int]):
        self.settings = settings
        self.widths = graph.widths()
        self.initial = dict(initial)
        ranked = [g for g in graph if can_score(g, settings.criterion)]
        if not ranked:
            raise ValueError(f"criterion {settings.criterion} ranks no group of this network (network slimming needs "
                             f"affine norm layers)")
        self.scores = {g.name: group_scores(g, settings.criterion) for g in ranked}
        caps = caps_from_ratio(initial, max_ratios(graph, settings))
        self.floor = {name: caps[name] if name in self.scores else w  # groups the criterion cannot rank stay whole
                      for name, w in self.widths.items()}
        self.order = [[n for n in tier if n in self.scores] for tier in tiers(graph, settings.residual_last)]
        self._global: list[tuple[str, int, float]] | None = None

    @property
    def minimum(self) -> int:
        """The fewest channels the caps allow."""
        return sum(min(self.floor[g], w) for g, w in self.widths.items())

    def keeping(self, keep: int) -> Plan:
        """Remove channels until ``keep`` remain (or the caps stop it)."""
        keep = max(keep, self.minimum)
        if self.settings.distribution == "uniform":
            target = uniform_widths(self.widths, self.initial, self.floor, self.order, keep)
            channels = {g: [int(c) for c in np.argsort(self.scores[g], kind="stable")[:self.widths[g] - w]]
                        for g, w in target.items() if w < self.widths[g]}
            scores = {g: [round(float(self.scores[g][c]), 6) for c in cs] for g, cs in channels.items()}
            return Plan(channels, target, scores)
        if self._global is None:
            self._global = removal_order(self.scores, self.floor, self.order)
        count = max(0, sum(self.widths.values()) - keep)
        channels: dict[str, list[int]] = {}
        scores: dict[str, list[float]] = {}
        widths = dict(self.widths)
        for g, c, s in self._global[:count]:
            channels.setdefault(g, []).append(c)
            scores.setdefault(g, []).append(round(s, 6))
            widths[g] -= 1
        return Plan(channels, widths, scores)

    def within(self, size: Callable[[Mapping[str, int]], int], limit: float) -> Plan:
        """The plan that removes the fewest channels with ``size(widths) <= limit`` (the most the caps allow if no
        plan gets there)."""
        lo, hi = self.minimum, sum(self.widths.values())  # size(keeping(lo)) is the smallest reachable
        if size(self.keeping(hi).widths) <= limit:
            return self.keeping(hi)
        while hi - lo > 1:  # invariant: keeping(lo) fits (or is the floor), keeping(hi) does not
            mid = (lo + hi) // 2
            if size(self.keeping(mid).widths) <= limit:
                lo = mid
            else:
                hi = mid
        return self.keeping(lo)


# ------------------------------------------------------------------------------------------------ the method
@dataclass
class StructuredSchedule:
    """The plan of a run: the epoch after which each step comes (-1: at the start, before training), the total
    channels, parameters and MACs of the unpruned network, steps done, and whether the target is reached."""

    step_epochs: list[int] = field(default_factory=list)
    initial_widths: dict[str, int] = field(default_factory=dict)
    initial_parameters: int = 0
    initial_macs: int = 0
    steps_done: int = 0
    reached: bool = False
    patch_size: list[int] | None = None


class StructuredMethod(PruningMethod):
    """Structured pruning of a trained network (module docstring): step 1 at the start, the other steps of an
    iterative schedule after evenly spaced epochs of the first ``stop_fraction`` of the budget; the last step lands
    on the target."""

    settings_class = StructuredSettings
    log_keys = ("structured_removed_fraction",)

    def __init__(self, settings: StructuredSettings, rng: np.random.Generator | None = None):
        super().__init__(settings, rng)
        self.schedule = StructuredSchedule()
        self.size: SizeModel | None = None
        self._removed_scores: dict[str, list[float]] = {}
        self._start_scores: dict[str, list[float]] = {}
        self._planned: Plan | None = None
        self._resumed = False

    # -- targets --------------------------------------------------------------------------------------------
    def _size_fn(self) -> Callable[[Mapping[str, int]], int] | None:
        unit = self.settings.ratio_of
        return None if unit == "filters" else (self.size.parameters if unit == "params" else self.size.macs)

    def _initial_size(self) -> int:
        sch = self.schedule
        return {"filters": sum(sch.initial_widths.values()), "params": sch.initial_parameters,
                "macs": sch.initial_macs}[self.settings.ratio_of]

    def target_plan(self, chooser: FilterChooser, step: int, steps: int) -> Plan:
        """What remains after iterative step ``step`` (1-based) of ``steps``: (1 - step)^k of the initial filters, and
        on the last step (or once the size target is met) the target itself."""
        s = self.settings
        initial_filters = sum(self.schedule.initial_widths.values())
        size = self._size_fn()
        limit = (1 - s.pruning_ratio) * self._initial_size()
        if step >= steps:
            return chooser.keeping(target_filters(initial_filters, s.pruning_ratio)) if size is None \
                else chooser.within(size, limit)
        plan = chooser.keeping(filters_after(initial_filters, s.step, step))
        if size is not None and size(plan.widths) <= limit:  # the size target comes sooner: land on it
            return chooser.within(size, limit)
        if size is None and plan.total <= target_filters(initial_filters, s.pruning_ratio):
            return chooser.keeping(target_filters(initial_filters, s.pruning_ratio))
        return plan

    def planned_steps(self, graph: ChannelGraph) -> int:
        """Iterative steps to the target: from the filter rate for a filter target; for a parameter or MAC target,
        simulated with the current scores (a step's filter count is (1 - step)^k of the initial ones)."""
        s = self.settings
        if s.schedule == "oneshot":
            return 1
        initial_filters = sum(self.schedule.initial_widths.values())
        if s.ratio_of == "filters":  # steps_for_filters(), with the filter counts rounded as the steps round them
            target = target_filters(initial_filters, s.pruning_ratio)
            most = s.steps_for_filters()
            return next(k for k in range(1, most + 1)
                        if k == most or filters_after(initial_filters, s.step, k) <= target)
        chooser = FilterChooser(graph, s, self.schedule.initial_widths)
        size, limit = self._size_fn(), (1 - s.pruning_ratio) * self._initial_size()
        for k in range(1, 10_000):
            plan = chooser.keeping(filters_after(initial_filters, s.step, k))
            if size(plan.widths) <= limit or plan.total <= chooser.minimum:
                return k
        return 1

    @staticmethod
    def slot_epochs(steps: int, num_epochs: int, stop_fraction: float, final_epochs_without_pruning: int
                    ) -> list[int]:
        """The epoch after which each step comes (-1: the start). Pruning points: the start and the end of each of
        the first P = min(stop_fraction x N, N - final) epochs; ``steps`` spread evenly over the P + 1 points (several
        per point when there are more steps than points)."""
        points = 1 + max(0, min(int(math.floor(stop_fraction * num_epochs + 1e-9)),
                                num_epochs - final_epochs_without_pruning))
        return [int(math.floor(i * points / steps)) - 1 for i in range(steps)]

    # -- protocol --------------------------------------------------------------------------------------------
    def network_problems(self, network: nn.Module, graph: ChannelGraph, patch_size: Sequence[int]) -> list[str]:
        """A criterion the network cannot serve (slimming without affine norms) or a target the caps make
        unreachable."""
        s = self.settings
        try:
            chooser = FilterChooser(graph, s, graph.widths())
        except ValueError as e:
            return [str(e)]
        floor = chooser.keeping(0).widths
        total = sum(graph.widths().values())
        try:
            size = SizeModel(graph, patch_size)
        except ValueError as e:
            return [str(e)]
        reachable = {"filters": 1 - sum(floor.values()) / total,
                     "params": 1 - size.parameters(floor) / size.parameters(graph.widths()),
                     "macs": 1 - size.macs(floor) / size.macs(graph.widths())}[s.ratio_of]
        unreachable = target_filters(total, s.pruning_ratio) < sum(floor.values()) if s.ratio_of == "filters" \
            else s.pruning_ratio > reachable + 1e-9
        if unreachable:
            unranked = [g.name for g in graph if g.name not in chooser.scores]
            return [f"pruning_ratio={s.pruning_ratio:g} of the {s.ratio_of} is unreachable: the caps (max_ratio="
                    f"{s.max_ratio:g}, max_ratio_coupled={s.max_ratio_coupled:g}: at most "
                    f"{min(s.max_ratio, s.max_ratio_coupled):g} of each of the {len(graph.coupled_groups())} "
                    f"skip/residual groups; one channel per group at least) allow {reachable:.3f} at most"
                    + (f" ({len(unranked)} groups without a norm layer, e.g. {unranked[0]}, keep all their channels: "
                       f"{s.criterion} ranks only channels with a gamma)" if unranked else "")
                    + ". Lower pruning_ratio or raise max_ratio / max_ratio_coupled"
                    + (", or use criterion l1 / l2" if unranked else "")]
        return []

    def start(self, network: nn.Module, graph: ChannelGraph, progress: TrainingProgress | None = None) -> Removal:
        """Record the unpruned network, lay out the schedule for the budget in ``progress`` (none: everything at
        once), and return step 1 (at the start, before any fine-tuning).

        Raises:
            ValueError: a MAC target without a patch size in ``progress``.
        """
        s = self.settings
        patch = progress.patch_size if progress is not None else None
        if s.ratio_of == "macs" and patch is None:
            raise ValueError("ratio_of=macs needs the patch size (progress.patch_size)")
        self.size = SizeModel(graph, patch)
        widths = graph.widths()
        self.schedule = StructuredSchedule(initial_widths=widths, initial_parameters=self.size.parameters(widths),
                                           initial_macs=self.size.macs(widths) if patch is not None else 0,
                                           patch_size=list(patch) if patch is not None else None)
        steps = self.planned_steps(graph)
        self._removed_scores = {}
        if progress is None:
            epochs = [-1] * steps
        else:
            epochs = self.slot_epochs(steps, progress.num_epochs, s.stop_fraction,
                                      progress.final_epochs_without_pruning)
        self.schedule.step_epochs = epochs
        self.say(self.schedule_line(progress.num_epochs if progress is not None else 0))
        removal = self._step(graph, -1)
        self._start_scores = self._removed_scores
        return removal

    def schedule_line(self, num_epochs: int) -> str:
        """One line for the log: criterion, target, steps and where they fall."""
        s, epochs = self.settings, self.schedule.step_epochs
        points = sorted(set(epochs))
        where = ", ".join("start" if e < 0 else str(e) for e in points[:6]) + (", ..." if len(points) > 6 else "")
        return (f"Structured pruning ({s.criterion}, {s.schedule}, {s.distribution}): remove {s.pruning_ratio:g} of "
                f"the {s.ratio_of} in {len(epochs)} step(s)" + (f" of {s.step:g} of the remaining filters"
                                                                  if s.schedule == "iterative" else "")
                + f" at {len(points)} point(s) in {num_epochs} epoch(s): after epochs (0-based) {where}")

    def _step(self, graph: ChannelGraph, epoch: int) -> Removal:
        """The steps scheduled at ``epoch`` (-1: the start), as one removal (no training comes between them)."""
        sch = self.schedule
        due = [i for i, e in enumerate(sch.step_epochs) if e == epoch and i >= sch.steps_done]
        self._planned = None
        if not due or sch.reached:
            return Removal()
        last = max(due) + 1
        chooser = FilterChooser(graph, self.settings, sch.initial_widths)
        plan = self.target_plan(chooser, last, len(sch.step_epochs))
        self._planned = plan
        for g, values in plan.scores.items():
            self._removed_scores.setdefault(g, []).extend(values)
        n = sum(len(v) for v in plan.channels.values())
        self.say(
            f"Structured pruning step{'s' if len(due) > 1 else ''} {due[0] + 1}"
            + (f"-{last}" if len(due) > 1 else "") + f" of {len(sch.step_epochs)}"
            + ("" if epoch < 0 else f" after epoch {epoch}") + f": removing {n} filter(s) from "
            + f"{len(plan.channels)} group(s); {plan.total} of {sum(sch.initial_widths.values())} remain")
        sch.steps_done = last
        if last == len(sch.step_epochs) or self._reached(plan.widths):
            sch.reached = True
        return Removal(channels=plan.channels)

    def _reached(self, widths: Mapping[str, int]) -> bool:
        size = self._size_fn()
        if size is None:
            return sum(widths.values()) <= target_filters(self._initial_size(), self.settings.pruning_ratio)
        return size(widths) <= (1 - self.settings.pruning_ratio) * self._initial_size() + 1e-6

    def decide(self, graph: ChannelGraph, progress: TrainingProgress) -> Removal:
        """The steps scheduled after this epoch (none in the final epochs: the driver drops them). The first decision
        after ``--c`` warns when the restored schedule has steps the new budget leaves no room for."""
        self._removed_scores, self._start_scores = self._start_scores, {}  # the start's step shows in epoch 0
        if self._resumed:
            self._resumed = False
            last = progress.num_epochs - progress.final_epochs_without_pruning - 1
            late = [i + 1 for i, e in enumerate(self.schedule.step_epochs)
                    if i >= self.schedule.steps_done and e > last]
            if late:
                self.say(
                    f"WARNING: Structured pruning: steps {late[0]}-{late[-1]} of the schedule laid out at the start "
                    f"fall after epoch {last}, the last that allows pruning in this run of {progress.num_epochs} "
                    f"epochs: they will not run (continue with the budget the fold was started with)")
        if not progress.pruning_allowed:
            return Removal()
        return self._step(graph, progress.epoch)

    def after_surgery(self, result: SurgeryResult, graph: ChannelGraph) -> None:
        """Check that the plan was applied as chosen (the driver's own caps may have clipped it)."""
        if self._planned is not None and result.channels is not None and result.channels.clipped:
            clipped = sum(result.channels.clipped.values())
            self.say(f"Structured pruning: the trainer's caps kept {clipped} of the chosen filters")
            self.schedule.reached = self._reached(graph.widths())
        self._planned = None

    # -- records ---------------------------------------------------------------------------------------------
    def scalars(self, graph: ChannelGraph) -> dict:
        """The fraction of the initial filters removed, this epoch's step included (asked before the surgery)."""
        widths = self._planned.widths if self._planned is not None else graph.widths()
        initial = sum(self.schedule.initial_widths.values()) or sum(widths.values())
        return {"structured_removed_fraction": round(1 - sum(widths.values()) / initial, 6)}

    def record(self, graph: ChannelGraph) -> dict:
        """Steps done; the fraction of the initial filters, parameters or MACs (``ratio_of``) removed so far; the
        scores of the filters removed since the last record, per group (global distribution: the normalised score
        when the filter was chosen; uniform: the criterion's raw score)."""
        size, initial = self._size_fn(), self._initial_size()
        now = sum(graph.widths().values()) if size is None else size(graph.widths())
        return {"structured_steps_done": self.schedule.steps_done,
                f"structured_removed_{self.settings.ratio_of}": round(1 - now / initial, 6) if initial else None,
                "structured_removed_scores": self._removed_scores}

    def state(self) -> dict:
        """The schedule, for ``--c``."""
        sch = self.schedule
        return {"step_epochs": sch.step_epochs, "initial_widths": sch.initial_widths,
                "initial_parameters": sch.initial_parameters, "initial_macs": sch.initial_macs,
                "steps_done": sch.steps_done, "reached": sch.reached, "patch_size": sch.patch_size}

    def load_state(self, state: Mapping) -> None:
        """Restore what :meth:`state` returned (the size model is rebuilt at the next :meth:`bind`)."""
        self.schedule = StructuredSchedule(
            [int(e) for e in state.get("step_epochs") or []],
            {str(k): int(v) for k, v in (state.get("initial_widths") or {}).items()},
            int(state.get("initial_parameters") or 0), int(state.get("initial_macs") or 0),
            int(state.get("steps_done") or 0), bool(state.get("reached")),
            [int(v) for v in state["patch_size"]] if state.get("patch_size") else None)
        self._resumed = True

    def bind(self, graph: ChannelGraph) -> None:
        """After ``--c``: the size model of the resumed network (it holds no widths: one per run suffices)."""
        if self.size is None and self.schedule.step_epochs:
            self.size = SizeModel(graph, self.schedule.patch_size)

    def schedule_problems(self, num_epochs: int, final_epochs_without_pruning: int) -> list[str]:
        """Steps that share a pruning point (the budget is too short for fine-tuning between all of them); settings
        a one-shot schedule does not use."""
        epochs = self.schedule.step_epochs
        s, default = self.settings, StructuredSettings()
        if s.schedule == "oneshot":
            unused = [f"{k}={getattr(s, k):g}" for k in ("step", "stop_fraction")
                      if getattr(s, k) != getattr(default, k)]
            return [f"Structured pruning: {', '.join(unused)} has no effect on a one-shot schedule (everything is "
                    f"removed at the start)"] if unused else []
        if len(set(epochs)) == len(epochs):
            return []
        return [f"Structured pruning: {len(epochs)} steps of {self.settings.step:g} need {len(epochs)} pruning points, "
                f"but {num_epochs} epoch(s) give {len(set(epochs))} (the start and the first stop_fraction="
                f"{self.settings.stop_fraction:g} of the epochs): up to {max(epochs.count(e) for e in epochs)} steps "
                f"are taken at once. Give more epochs (NNUNET_PRUNE_EPOCHS) for fine-tuning between all steps."]

    def end_advice(self, removed_any: bool, progress: TrainingProgress) -> list[str]:
        """The target not reached (the run ended before its last step, or the trainer's caps clipped it)."""
        if self.schedule.reached:
            return []
        return [f"Structured pruning did not reach pruning_ratio={self.settings.pruning_ratio:g} of the "
                f"{self.settings.ratio_of}: {self.schedule.steps_done} of {len(self.schedule.step_epochs)} steps "
                f"were taken."]


# ------------------------------------------------------------------------------------------------ slimming training
@dataclass
class SlimmingSettings(MethodSettings):
    """Network slimming's sparsity training (Liu et al. 2017, eq. 1): nnU-Net's loss + lambda * sum |gamma| over the
    norm layers; lambda 1e-4 (their VGGNet setting; 1e-5 for ResNet and DenseNet).
    ``NNUNET_PRUNE_SLIMMING='lambda=1e-5'`` or ``plans['nnunet_prune']['slimming']``."""

    NAME: ClassVar[str] = "Slimming"
    ENV_VAR: ClassVar[str] = SLIMMING_ENV_VAR
    EXAMPLE: ClassVar[str] = "lambda=1e-4"
    ALIASES: ClassVar[dict[str, str]] = {"lambda": "lambda_"}

    lambda_: float = 1e-4  # weight of sum |gamma| in the loss

    def problems(self) -> list[str]:
        """lambda >= 0."""
        out = super().problems()
        if self.lambda_ < 0:
            out.append(f"lambda must be >= 0 (got {self.lambda_})")
        return out


class SlimmingSparsityMethod(PruningMethod):
    """Sparsity training for network slimming: removes nothing, adds lambda * sum |gamma| to every training step's
    loss and logs sum |gamma| and the fraction of gammas below 1e-2 (what slimming will find unimportant)."""

    settings_class = SlimmingSettings
    log_keys = ("slimming_gamma_l1", "slimming_small_gamma_fraction")

    def __init__(self, settings: SlimmingSettings, rng: np.random.Generator | None = None):
        super().__init__(settings, rng)
        self.norms: list[nn.Module] = []

    def network_problems(self, network: nn.Module, graph: ChannelGraph, patch_size: Sequence[int]) -> list[str]:
        """The network needs affine norm layers (their gammas are what slimming ranks)."""
        if any(getattr(n, "weight", None) is not None for g in graph for n in g.norms):
            return []
        return ["network slimming needs affine norm layers (InstanceNorm or BatchNorm with affine=True); this network "
                "has none"]

    def bind(self, graph: ChannelGraph) -> None:
        """The norm layers whose gammas are penalised."""
        self.norms = [n for g in graph for n in g.norms if getattr(n, "weight", None) is not None]

    def extra_loss(self):
        """lambda * sum |gamma| (None when lambda is 0)."""
        return self.settings.lambda_ * gamma_l1(self.norms) if self.settings.lambda_ > 0 and self.norms else None

    def scalars(self, graph: ChannelGraph) -> dict:
        """sum |gamma| and the fraction of |gamma| < 1e-2; a line for the training log with both and the term they
        add to the training loss (nnU-Net's train_loss includes it)."""
        if not self.norms:
            return {}
        gammas = np.concatenate([n.weight.detach().abs().cpu().numpy().ravel() for n in self.norms])
        total, small = float(gammas.sum()), float((gammas < 1e-2).mean())
        self.say(f"network slimming: sum |gamma| = {total:.2f} ({small:.1%} of the gammas below 0.01); "
                 f"lambda x sum |gamma| = {self.settings.lambda_ * total:.4f} is part of train_loss")
        return {"slimming_gamma_l1": round(total, 4), "slimming_small_gamma_fraction": round(small, 6)}
