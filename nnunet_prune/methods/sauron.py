"""Sauron (Gonzalez et al., "Sauron U-Net: simple automated redundancy elimination in medical image segmentation
via filter pruning", arXiv:2209.13590): the whole of Algorithm 1 in one file.

Per training step (§3.2): every coupling group's output (here: every output point of every group, i.e. encoder
and decoder convs, transposed convs, residual-block outputs, never the segmentation heads) is average-pooled with
window omega, and lambda * delta_opt (eq. 2: distance of every min-max normalised channel to channel 0, averaged
over layers) is added to the loss. During the last ``stat_batches`` training steps of each epoch, the raw pooled
maps' distances to a random reference channel pi (new per layer and epoch, §3.3) are summed per channel.

After every epoch, for every layer l (here: every coupling group):

* Procedure 1 -- raise tau_l by tau_max / kappa if tau_l < tau_max and all of
  C1 the training loss converged: the last value lies between the min and max of the previous rho values,
  C2 the validation loss is not improving: the last value is above the best before it,
  C3 the layer pruned fewer than mu % of its filters in the previous epoch,
  C4 tau_l did not rise in the last rho epochs;
* Procedure 2 -- delta_prune (eq. 3) = the mean distances normalised by their maximum, combined over a group's
  output points by max (a channel is redundant only where it is redundant everywhere); remove every channel whose
  delta_prune is below tau_l (never pi itself; the surgery layer never removes the last channel).

Scores come from :mod:`nnunet_prune.criteria.sauron`, feature maps from
:class:`~nnunet_prune.surgery.taps.ActivationTap`; tensors are changed by the trainers' driver
(:mod:`nnunet_prune.surgery.removal`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import ClassVar

import numpy as np
import torch

from nnunet_prune.criteria.sauron import delta_opt, normalise_by_max, pool, prune_distances
from nnunet_prune.methods.base import MethodSettings, PruningMethod, TrainingProgress
from nnunet_prune.surgery.graph import ChannelGraph, ChannelGroup
from nnunet_prune.surgery.removal import Removal, SurgeryResult
from nnunet_prune.surgery.taps import ActivationTap, ChannelStatistics

ENV_VAR = "NNUNET_PRUNE_SAURON"


@dataclass
class SauronConfig(MethodSettings):
    """Sauron's hyperparameters, with the paper's defaults (§3.4).

    Set by a variant class (``nnUNetTrainerSauron_lambda0``), ``plans['nnunet_prune']['sauron']`` or
    ``NNUNET_PRUNE_SAURON='tau_max=0.3,kappa=15'`` (:meth:`MethodSettings.resolve`).
    """

    NAME: ClassVar[str] = "Sauron"
    ENV_VAR: ClassVar[str] = ENV_VAR
    EXAMPLE: ClassVar[str] = "tau_max=0.3,kappa=15,rho=5,mu=2,omega=2"
    ALIASES: ClassVar[dict[str, str]] = {"lambda": "lambda_", "lambda_": "lambda_"}

    lambda_: float = 0.5  # weight of delta_opt in the loss
    tau_max: float = 0.3  # largest threshold
    kappa: int = 15  # steps to reach tau_max
    rho: int = 5  # patience (epochs) for C1 and C4
    mu: float = 2.0  # C3: percent of a layer's filters pruned in the previous epoch
    omega: int = 2  # average-pooling window and stride
    stat_batches: int = 10  # delta_prune is averaged over this many training batches at the end of each epoch
    tau_init: float = 0.0  # starting threshold (the paper starts at 0; > 0 prunes from the first epoch)

    def problems(self) -> list[str]:
        """Ranges of §3.4: lambda >= 0, 0 < tau_max <= 1, positive integers, mu >= 0, 0 <= tau_init <= tau_max."""
        problems = super().problems()
        if self.lambda_ < 0:
            problems.append("lambda must be >= 0")
        if not 0 < self.tau_max <= 1:
            problems.append("tau_max must be in (0, 1] (delta_prune is normalised to [0, 1])")
        for name in ("kappa", "rho", "omega", "stat_batches"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name} must be a positive integer")
        if self.mu < 0:
            problems.append("mu must be >= 0")
        if not 0 <= self.tau_init <= self.tau_max:
            problems.append("tau_init must be in [0, tau_max]")
        return problems

    # -- what a budget allows -----------------------------------------------------------------------
    def earliest_pruning_epoch(self) -> int:
        """The first epoch (0-based) after which channels can go: at once with tau_init > 0; else the first
        threshold rise, which needs C1 over rho + 1 training losses and C2 over two validation losses."""
        return 0 if self.tau_init > 0 else max(self.rho, 1)

    def schedule_problems(self, num_epochs: int, final_epochs_without_pruning: int = 0) -> list[str]:
        """Why a run of ``num_epochs`` epochs (the last ``final_epochs_without_pruning`` of them without surgery)
        prunes nothing or little with these settings (empty: no problem the budget alone explains). Each message
        names the setting to change."""
        advice = (f"For a short run start the thresholds high and shorten the patience, e.g. "
                  f"{ENV_VAR}='tau_init=0.25,rho=2,kappa=3', or train more epochs (NNUNET_PRUNE_EPOCHS).")
        first = self.earliest_pruning_epoch()
        last = num_epochs - 1 - final_epochs_without_pruning  # the last epoch after which channels may go
        if last < first:
            return [f"Sauron cannot prune anything in {num_epochs} epoch(s): "
                    + (f"with tau_init=0 the first threshold rise needs the training loss to be flat over "
                       f"rho+1={self.rho + 1} epochs (C1), so the earliest pruning is after epoch {first}"
                       if first else "no epoch is left for pruning")
                    + (f", and the last {final_epochs_without_pruning} epoch(s) only train the final network"
                       if final_epochs_without_pruning else "") + f". {advice}"]
        if self.tau_init == 0:
            rises = (last - first) // self.rho + 1
            if rises < self.kappa:
                return [f"At most {rises} of the {self.kappa} threshold steps (kappa) fit in {num_epochs} epochs "
                        f"(one step per rho={self.rho} epochs, and only while the training loss is flat (C1) and "
                        f"the validation loss does not improve (C2)): the thresholds stay at or below "
                        f"{rises * self.tau_max / self.kappa:.3g} of tau_max={self.tau_max}, and a short run whose "
                        f"loss still falls may prune nothing. {advice}"]
        return []


def condition_counts(train_losses: Sequence[float], val_losses: Sequence[float], rho: int) -> tuple[int, int]:
    """How many epochs C1 (training loss converged) and C2 (validation loss not improving) held, each judged on
    the losses up to that epoch as after that epoch's validation."""
    probe = SauronThresholds(SauronConfig(rho=rho))
    c1 = sum(probe.training_loss_converged(train_losses[:i + 1]) for i in range(len(train_losses)))
    c2 = sum(probe.validation_not_improving(val_losses[:i + 1]) for i in range(len(val_losses)))
    return c1, c2


@dataclass
class LayerState:
    """One layer's threshold tau_l, the epoch of its last rise (C4) and the fraction it pruned in the last epoch
    (C3)."""
    tau: float = 0.0
    last_rise_epoch: int | None = None
    pruned_fraction_last_epoch: float = 0.0


@dataclass
class SauronThresholds:
    """Per-layer thresholds tau_l and the bookkeeping of conditions C1-C4."""

    config: SauronConfig
    layers: dict[str, LayerState] = field(default_factory=dict)

    def ensure(self, names: Sequence[str]) -> None:
        """Add a state at tau_init for every layer not known yet (the others keep theirs)."""
        for n in names:
            self.layers.setdefault(n, LayerState(tau=self.config.tau_init))

    # -- global conditions (they depend on the losses only) ------------------------------------------
    def training_loss_converged(self, train_losses: Sequence[float]) -> bool:
        """C1: the last training loss lies between the min and max of the rho values before it."""
        rho = self.config.rho
        if len(train_losses) < rho + 1:
            return False
        window = train_losses[-rho - 1:-1]
        return min(window) <= train_losses[-1] <= max(window)

    @staticmethod
    def validation_not_improving(val_losses: Sequence[float]) -> bool:
        """C2: the last validation loss is above the best (lowest) one before it."""
        if len(val_losses) < 2:
            return False
        return val_losses[-1] > min(val_losses[:-1])

    # -- Procedure 1 ------------------------------------------------------------------------------------
    def update(self, epoch: int, train_losses: Sequence[float], val_losses: Sequence[float]) -> list[str]:
        """Raise the thresholds whose conditions hold after ``epoch``; returns the names of the layers raised."""
        cfg = self.config
        c1 = self.training_loss_converged(train_losses)
        c2 = self.validation_not_improving(val_losses)
        raised = []
        if not (c1 and c2):
            return raised
        for name, s in self.layers.items():
            c3 = s.pruned_fraction_last_epoch * 100 < cfg.mu
            c4 = s.last_rise_epoch is None or epoch - s.last_rise_epoch >= cfg.rho
            if c3 and c4 and s.tau < cfg.tau_max - 1e-12:
                s.tau = min(cfg.tau_max, s.tau + cfg.tau_max / cfg.kappa)
                s.last_rise_epoch = epoch
                raised.append(name)
        return raised

    # -- Procedure 2 ------------------------------------------------------------------------------------
    def select(self, name: str, delta_prune: np.ndarray, reference: int) -> list[int]:
        """Channels of layer ``name`` to remove: delta_prune < tau (the reference channel is never removed).
        Returned most-redundant first, so a width limit keeps the least redundant ones."""
        tau = self.layers[name].tau
        if tau <= 0:
            return []
        order = np.argsort(delta_prune, kind="stable")
        return [int(i) for i in order if i != reference and delta_prune[i] < tau]

    def record_pruned(self, name: str, removed: int, width_before: int) -> None:
        """Record what layer ``name`` lost in the last surgery, for C3 of the next epoch."""
        self.layers[name].pruned_fraction_last_epoch = removed / width_before if width_before else 0.0

    # -- checkpointing ----------------------------------------------------------------------------------
    def state(self) -> dict:
        """JSON-serialisable state of every layer (saved in each checkpoint)."""
        return {n: asdict(s) for n, s in self.layers.items()}

    def load(self, state: Mapping) -> None:
        """Restore what :meth:`state` returned."""
        self.layers = {n: LayerState(**s) for n, s in state.items()}


class SauronObserver:
    """What Sauron computes from the feature maps, fed by an :class:`~nnunet_prune.surgery.taps.ActivationTap`.

    Per training forward pass every tapped output (B, C, *spatial) is average-pooled (omega); the pooled maps are
    kept for :meth:`extra_loss` (lambda * delta_opt, eq. 2) when lambda > 0, and while :attr:`collecting` the
    distances of every channel to the group's reference channel (eq. 3, raw pooled maps) are summed per output
    point (:class:`~nnunet_prune.surgery.taps.ChannelStatistics`). Used by :class:`SauronMethod` and timed by
    ``benchmarks/sauron_step.py``.
    """

    def __init__(self, omega: int, lambda_: float):
        self.omega = omega
        self.lambda_ = lambda_
        self.collecting = False
        #: group name -> reference channel pi (only groups listed here get distances)
        self.references: dict[str, int] = {}
        self.distances = ChannelStatistics()
        self.delta_opt_sum = torch.zeros(())
        self.delta_opt_steps = 0
        self._pooled: list[torch.Tensor] = []
        self.tap = ActivationTap(self._observe)

    def attach(self, graph: ChannelGraph) -> None:
        """Tap every output point of every group of ``graph`` (earlier hooks are removed)."""
        self.tap.attach(graph)

    def detach(self) -> None:
        """Remove the tap's hooks."""
        self.tap.detach()

    def _observe(self, group: ChannelGroup, point: int, output: torch.Tensor) -> None:
        pooled = pool(output, self.omega)
        if self.lambda_ > 0:
            self._pooled.append(pooled)
        if self.collecting and group.name in self.references:
            with torch.no_grad():
                d = prune_distances(pooled.detach().float(), self.references[group.name])
            self.distances.add(group.name, point, d)

    def extra_loss(self) -> torch.Tensor | None:
        """lambda * delta_opt of the maps pooled since the last call (None if lambda is 0 or nothing was seen);
        the maps are released and delta_opt is added to the running sum."""
        maps, self._pooled = self._pooled, []
        if self.lambda_ == 0 or not maps:
            return None
        value = delta_opt([m.float() for m in maps])
        self.delta_opt_sum = self.delta_opt_sum.to(value.device) + value.detach()
        self.delta_opt_steps += 1
        return self.lambda_ * value

    def end_step(self) -> None:
        """Drop maps a step did not consume (e.g. a failed step) and stop collecting."""
        self._pooled = []
        self.collecting = False

    def reset_epoch(self, references: dict[str, int]) -> None:
        """New reference channels; the distances and the delta_opt sum start again."""
        self.references = references
        self.distances.reset()
        self.delta_opt_sum, self.delta_opt_steps = torch.zeros(()), 0

    def mean_distances(self, group: str, point: int) -> torch.Tensor | None:
        """(C,) distances of one output point averaged over the collected batches (None if none)."""
        return self.distances.mean(group, point)

    def mean_delta_opt(self) -> float:
        """delta_opt averaged over this epoch's training steps (nan if none)."""
        return float(self.delta_opt_sum) / self.delta_opt_steps if self.delta_opt_steps else float("nan")


class SauronMethod(PruningMethod):
    """Algorithm 1 of the paper behind the method protocol (see the module docstring)."""

    settings_class = SauronConfig
    log_keys = ("delta_opt", "sauron_tau", "sauron_layers_raised")

    def __init__(self, settings: SauronConfig, rng: np.random.Generator | None = None):
        super().__init__(settings, rng)
        self.thresholds = SauronThresholds(settings)
        self.observer = SauronObserver(settings.omega, settings.lambda_)
        self._raised: list[str] = []

    def bind(self, graph: ChannelGraph) -> None:
        """Thresholds for new groups; the observer's tap on the graph's output points."""
        self.thresholds.ensure([g.name for g in graph])
        self.observer.attach(graph)

    def release(self) -> None:
        """Remove the observer's hooks."""
        self.observer.detach()

    def epoch_start(self, epoch: int, graph: ChannelGraph) -> None:
        """Draw a new reference channel pi per group (§3.3); distances and delta_opt start again."""
        self.observer.reset_epoch({g.name: int(self.rng.integers(g.size)) for g in graph if g.size > 1})

    def step_start(self, step: int, steps_per_epoch: int) -> None:
        """Collect distances during the last ``stat_batches`` steps of the epoch."""
        self.observer.collecting = step >= steps_per_epoch - self.settings.stat_batches

    def extra_loss(self) -> torch.Tensor | None:
        """lambda * delta_opt of this step's feature maps (eq. 2), None with lambda = 0."""
        return self.observer.extra_loss()

    def step_end(self) -> None:
        """Drop unconsumed maps and stop collecting."""
        self.observer.end_step()

    def delta_prune(self, group: ChannelGroup) -> np.ndarray | None:
        """Eq. (3): normalised distances of the group's channels to its reference, combined over the group's output
        points by max (None if no batch was collected)."""
        means = [self.observer.mean_distances(group.name, j) for j in range(len(group.outputs))]
        per_point = [normalise_by_max(d) for d in means if d is not None]
        if not per_point:
            return None
        return torch.stack(per_point).amax(dim=0).cpu().numpy()

    def decide(self, graph: ChannelGraph, progress: TrainingProgress) -> Removal:
        """Procedure 1 (raise thresholds under C1-C4), then Procedure 2 (channels with delta_prune < tau_l)."""
        self._raised = self.thresholds.update(progress.epoch, progress.train_losses, progress.val_losses)
        if self._raised:
            self.say(f"Sauron: raised tau of {len(self._raised)} layers; "
                     f"mean tau {np.mean([s.tau for s in self.thresholds.layers.values()]):.3f}")
        channels = {}
        for g in graph:
            d = self.delta_prune(g) if g.name in self.observer.references else None
            if d is not None:
                idx = self.thresholds.select(g.name, d, self.observer.references[g.name])
                if idx:
                    channels[g.name] = idx
        return Removal(channels=channels)

    def after_surgery(self, result: SurgeryResult, graph: ChannelGraph) -> None:
        """C3 feedback: the fraction of each group removed in this surgery (0 where none, and in epochs without
        surgery)."""
        removed = result.channels.removed if result.channels is not None else {}
        for g in graph:  # C3 of the next epoch; the width before = the width now + what went
            n = len(removed.get(g.name, []))
            self.thresholds.record_pruned(g.name, n, g.size + n)

    def scalars(self, graph: ChannelGraph) -> dict:
        """delta_opt (epoch mean), every group's tau, the number of thresholds raised."""
        return {"delta_opt": self.observer.mean_delta_opt(),
                "sauron_tau": [round(self.thresholds.layers[g.name].tau, 6) for g in graph],
                "sauron_layers_raised": len(self._raised)}

    def state(self) -> dict:
        """The thresholds and their C3/C4 bookkeeping."""
        return {"thresholds": self.thresholds.state()}

    def load_state(self, state: Mapping) -> None:
        """Restore the thresholds (on ``--c``)."""
        self.thresholds.load(state.get("thresholds", {}))

    def schedule_problems(self, num_epochs: int, final_epochs_without_pruning: int) -> list[str]:
        """See :meth:`SauronConfig.schedule_problems`."""
        return self.settings.schedule_problems(num_epochs, final_epochs_without_pruning)

    def end_advice(self, removed_any: bool, progress: TrainingProgress) -> list[str]:
        """Why no channel went, with how often C1 and C2 held (empty if any channel went)."""
        if removed_any or progress.epoch < 0:
            return []
        s = self.settings
        c1, c2 = condition_counts(progress.train_losses, progress.val_losses, s.rho)
        return [f"Sauron removed no channel in {progress.epoch + 1} epochs. Thresholds rise only when the training "
                f"loss is flat (C1: held after {c1} epochs) and the validation loss does not improve (C2: held after "
                f"{c2}); tau_init={s.tau_init}. For a short run set {ENV_VAR}='tau_init=0.25,rho=2,kappa=3' or train "
                f"longer (NNUNET_PRUNE_EPOCHS)."]
