"""Sauron (arXiv:2209.13590, Algorithm 1): layer-wise thresholds and the pruning rule.

After every epoch, for every layer l (here: every coupling group):

* Procedure 1 -- raise tau_l by tau_max / kappa if tau_l < tau_max and all of
  C1 the training loss converged: the last value lies between the min and max of the previous rho values,
  C2 the validation loss is not improving: the last value is above the best before it,
  C3 the layer pruned fewer than mu % of its filters in the previous epoch,
  C4 tau_l did not rise in the last rho epochs;
* Procedure 2 -- remove every channel whose normalised distance delta_prune to a random reference channel pi is
  below tau_l (never pi itself; the surgery layer never removes the last channel).

This module holds the decisions only; statistics come from :mod:`nnunet_prune.criteria.sauron`, tensors are
changed by :mod:`nnunet_prune.surgery`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from nnunet_prune import NnUNetPruneError

ENV_VAR = "NNUNET_PRUNE_SAURON"


@dataclass
class SauronConfig:
    """Sauron's hyperparameters, with the paper's defaults (§3.4)."""

    lambda_: float = 0.5  # weight of delta_opt in the loss
    tau_max: float = 0.3  # largest threshold
    kappa: int = 15  # steps to reach tau_max
    rho: int = 5  # patience (epochs) for C1 and C4
    mu: float = 2.0  # C3: percent of a layer's filters pruned in the previous epoch
    omega: int = 2  # average-pooling window and stride
    stat_batches: int = 10  # delta_prune is averaged over this many training batches at the end of each epoch
    tau_init: float = 0.0  # starting threshold (the paper starts at 0; > 0 prunes from the first epoch)

    def validate(self) -> SauronConfig:
        problems = [f"{f.name.rstrip('_')} must be a finite number" for f in fields(self)
                    if not math.isfinite(getattr(self, f.name))]
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
        if problems:
            raise NnUNetPruneError("Invalid Sauron settings: " + "; ".join(problems) +
                                   f". Set them as {ENV_VAR}='tau_max=0.3,kappa=15,rho=5,mu=2,omega=2'.")
        return self

    @classmethod
    def resolve(cls, plans: Mapping | None = None, environ: Mapping[str, str] | None = None,
                **defaults) -> SauronConfig:
        """Defaults (``defaults`` override the paper's), then plans['nnunet_prune']['sauron'], then ``environ``'s
        NNUNET_PRUNE_SAURON='key=value,...' (keys: lambda, tau_max, kappa, rho, mu, omega, stat_batches, tau_init).
        ``environ`` is given by the caller (the trainer passes ``os.environ``); None means no environment.

        Raises:
            NnUNetPruneError: an unknown key, a value that is not a finite number, or one out of range.
        """
        cfg = cls(**defaults)
        sources = []
        if plans is not None:
            sources.append(("plans['nnunet_prune']['sauron']", dict(plans.get("nnunet_prune", {}).get("sauron", {}))))
        text = (environ or {}).get(ENV_VAR, "")  # the caller (nnU-Net glue) passes os.environ; methods never read it
        if text.strip():
            try:
                pairs = dict(item.split("=", 1) for item in text.replace(";", ",").split(",") if item.strip())
            except ValueError:
                raise NnUNetPruneError(f"{ENV_VAR}={text!r}: expected comma-separated key=value pairs, e.g. "
                                       f"'tau_max=0.3,kappa=15'.") from None
            sources.append((ENV_VAR, pairs))
        types = {f.name: f.type for f in fields(cls)}
        for origin, values in sources:
            for key, value in values.items():
                name = "lambda_" if key.strip() in ("lambda", "lambda_") else key.strip()
                if name not in types:
                    raise NnUNetPruneError(f"{origin}: unknown Sauron setting {key!r} (known: lambda, "
                                           f"{', '.join(n for n in types if n != 'lambda_')}).")
                try:
                    number = float(value)
                    if not math.isfinite(number):
                        raise ValueError
                except (TypeError, ValueError):
                    raise NnUNetPruneError(f"{origin}: {key}={value!r} is not a number (finite numbers only).") \
                        from None
                if types[name] in (int, "int"):
                    if not number.is_integer():
                        raise NnUNetPruneError(f"{origin}: {key}={value!r} must be a whole number.")
                    number = int(number)
                setattr(cfg, name, number)
        return cfg.validate()

    def as_dict(self) -> dict:
        d = asdict(self)
        d["lambda"] = d.pop("lambda_")
        return d

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
    tau: float = 0.0
    last_rise_epoch: int | None = None
    pruned_fraction_last_epoch: float = 0.0


@dataclass
class SauronThresholds:
    """Per-layer thresholds tau_l and the bookkeeping of conditions C1-C4."""

    config: SauronConfig
    layers: dict[str, LayerState] = field(default_factory=dict)

    def ensure(self, names: Sequence[str]) -> None:
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
        self.layers[name].pruned_fraction_last_epoch = removed / width_before if width_before else 0.0

    # -- checkpointing ----------------------------------------------------------------------------------
    def state(self) -> dict:
        return {n: asdict(s) for n, s in self.layers.items()}

    def load(self, state: Mapping) -> None:
        self.layers = {n: LayerState(**s) for n, s in state.items()}
