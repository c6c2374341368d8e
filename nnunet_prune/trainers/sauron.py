"""``nnUNetTrainerSauron``: Sauron filter pruning during nnU-Net training (arXiv:2209.13590).

Glue only: forward hooks on every prunable layer output (the output points of the coupling groups: encoder and
decoder convs, transposed convs, residual-block outputs; never the segmentation heads) pool the feature maps;
:mod:`nnunet_prune.criteria.sauron` turns them into delta_opt (added to the loss) and delta_prune (collected over
the last ``stat_batches`` training batches of each epoch); :mod:`nnunet_prune.methods.sauron` decides after each
epoch; the base class does the surgery and the bookkeeping.

Hyperparameters: defaults of the paper; override with plans['nnunet_prune']['sauron'] or the environment variable
``NNUNET_PRUNE_SAURON='tau_max=0.3,kappa=15,rho=5,mu=2,omega=2,stat_batches=10'``. The ablation variants
``_lambda0/_lambda1/_lambda2`` set lambda. The values used are written to pruning_config.json.
"""

from __future__ import annotations

import os
from functools import partial

import numpy as np
import torch

from nnunet_prune.criteria.sauron import delta_opt, normalise_by_max, pool, prune_distances
from nnunet_prune.methods.sauron import SauronConfig, SauronThresholds, condition_counts
from nnunet_prune.surgery import PruneResult
from nnunet_prune.trainers.base import nnUNetTrainerPruning
from nnunet_prune.trainers.logging import RECORD_KEY


class SauronObserver:
    """Sauron's forward hooks on the output points of a channel graph, and what is computed from them.

    Used by :class:`nnUNetTrainerSauron` and by ``benchmarks/sauron_step.py`` (which thereby times this code).
    Per training forward pass every hooked output (B, C, *spatial) is average-pooled (omega); the pooled maps are
    kept for :meth:`extra_loss` (lambda * delta_opt, eq. 2) when lambda > 0, and while :attr:`collecting` the
    distances of every channel to the group's reference channel (eq. 3, raw pooled maps) are summed per output
    point. Nothing is recorded in eval mode or for meta tensors.
    """

    def __init__(self, omega: int, lambda_: float):
        self.omega = omega
        self.lambda_ = lambda_
        self.collecting = False
        #: group name -> reference channel pi (only groups listed here get distances)
        self.references: dict[str, int] = {}
        #: (group name, output point) -> sum over batches of the (C,) distances, and the number of batches
        self.distances: dict[tuple[str, int], torch.Tensor] = {}
        self.distance_batches: dict[tuple[str, int], int] = {}
        self.delta_opt_sum = torch.zeros(())
        self.delta_opt_steps = 0
        self._pooled: list[torch.Tensor] = []
        self._hooks: list = []

    def attach(self, graph) -> None:
        """Hook every output point of every group of ``graph`` (earlier hooks are removed)."""
        self.detach()
        self._hooks = [m.register_forward_hook(partial(self._observe, g.name, j))
                       for g in graph for j, m in enumerate(g.outputs)]

    def detach(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def _observe(self, group: str, point: int, module, inputs, output) -> None:
        if not module.training or output.device.type == "meta":
            return
        pooled = pool(output, self.omega)
        if self.lambda_ > 0:
            self._pooled.append(pooled)
        if self.collecting and group in self.references:
            with torch.no_grad():
                d = prune_distances(pooled.detach().float(), self.references[group])
            key = (group, point)
            self.distances[key] = self.distances[key] + d if key in self.distances else d
            self.distance_batches[key] = self.distance_batches.get(key, 0) + 1

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
        self.references = references
        self.distances, self.distance_batches = {}, {}
        self.delta_opt_sum, self.delta_opt_steps = torch.zeros(()), 0

    def mean_distances(self, group: str, point: int) -> torch.Tensor | None:
        """(C,) distances of one output point averaged over the collected batches (None if none)."""
        key = (group, point)
        return self.distances[key] / self.distance_batches[key] if key in self.distances else None

    def mean_delta_opt(self) -> float:
        return float(self.delta_opt_sum) / self.delta_opt_steps if self.delta_opt_steps else float("nan")


class nnUNetTrainerSauron(nnUNetTrainerPruning):
    """nnU-Net + Sauron: loss + lambda * delta_opt, layer-wise thresholds raised under C1-C4, pruning every epoch."""

    sauron_lambda: float = 0.5
    method_log_keys = ("delta_opt", "sauron_tau", "sauron_layers_raised")

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.thresholds = SauronThresholds(self.sauron)
        self.observer = SauronObserver(self.sauron.omega, self.sauron.lambda_)
        self._iteration = 0
        self._rng = np.random.default_rng()

    def resolve_settings(self, plans: dict, configuration: str, fold: int, dataset_json: dict) -> None:
        self.sauron = SauronConfig.resolve(plans, environ=os.environ, lambda_=self.sauron_lambda)

    def method_config(self) -> dict:
        return self.sauron.as_dict()

    def method_state(self) -> dict:
        return {"thresholds": self.thresholds.state()}

    def load_method_state(self, state: dict) -> None:
        self.thresholds.load(state.get("thresholds", {}))

    # ------------------------------------------------------------------ statistics
    def on_train_start(self):
        super().on_train_start()
        self.thresholds.ensure([g.name for g in self.graph])
        self.observer.attach(self.graph)
        if self._resumed_from_epoch is None and self.local_rank == 0:
            for problem in self.sauron.schedule_problems(self.num_epochs, self.final_epochs_without_pruning):
                self.print_to_log_file(f"WARNING: {problem}")

    def on_train_end(self):
        super().on_train_end()
        records = [r for r in self.logger.local_logger.my_fantastic_logging.get(RECORD_KEY, []) if r]
        if self.local_rank == 0 and records and not any(sum(r["removed"].values()) for r in records):
            log = self.logger.local_logger.my_fantastic_logging
            c1, c2 = condition_counts(log["train_losses"], log["val_losses"], self.sauron.rho)
            self.print_to_log_file(
                f"WARNING: Sauron removed no channel in {len(records)} epochs. Thresholds rise only when the training "
                f"loss is flat (C1: held after {c1} epochs) and the validation loss does not improve (C2: held after "
                f"{c2}); tau_init={self.sauron.tau_init}. For a short run set NNUNET_PRUNE_SAURON='tau_init=0.25,"
                f"rho=2,kappa=3' or train longer (NNUNET_PRUNE_EPOCHS).")

    def extra_training_loss(self) -> torch.Tensor | None:
        return self.observer.extra_loss()

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        self._iteration = 0
        # a new random reference channel pi per layer and epoch (§3.3)
        self.observer.reset_epoch({g.name: int(self._rng.integers(g.size)) for g in self.graph if g.size > 1})

    def train_step(self, batch: dict) -> dict:
        self.observer.collecting = self._iteration >= self.num_iterations_per_epoch - self.sauron.stat_batches
        try:
            return super().train_step(batch)
        finally:
            self.observer.end_step()
            self._iteration += 1

    def delta_prune(self, group) -> np.ndarray | None:
        """Normalised distances of the group's channels to its reference, combined over the group's output
        points by max (a channel is redundant only where it is redundant everywhere)."""
        means = [self.observer.mean_distances(group.name, j) for j in range(len(group.outputs))]
        per_point = [normalise_by_max(d) for d in means if d is not None]
        if not per_point:
            return None
        return torch.stack(per_point).amax(dim=0).cpu().numpy()

    # ------------------------------------------------------------------ decision
    def decide_pruning(self):
        log = self.logger.local_logger.my_fantastic_logging
        raised = self.thresholds.update(self.current_epoch, log["train_losses"], log["val_losses"])
        removal = {}
        for g in self.graph:
            d = self.delta_prune(g) if g.name in self.observer.references else None
            if d is not None:
                idx = self.thresholds.select(g.name, d, self.observer.references[g.name])
                if idx:
                    removal[g.name] = idx
        self.log_method_scalar("delta_opt", self.observer.mean_delta_opt())
        self.log_method_scalar("sauron_tau", [round(self.thresholds.layers[g.name].tau, 6) for g in self.graph])
        self.log_method_scalar("sauron_layers_raised", len(raised))
        if raised:
            self.print_to_log_file(f"Sauron: raised tau of {len(raised)} layers; "
                                   f"mean tau {np.mean([s.tau for s in self.thresholds.layers.values()]):.3f}")
        return removal

    def apply_pruning(self, removal) -> PruneResult:
        result = super().apply_pruning(removal)
        for name, width in result.widths_before.items():
            self.thresholds.record_pruned(name, len(result.removed.get(name, [])), width)  # C3 of next epoch
        return result


class nnUNetTrainerSauron_lambda0(nnUNetTrainerSauron):
    """Ablation: no delta_opt regularisation (lambda = 0), thresholds and pruning unchanged."""

    sauron_lambda = 0.0


class nnUNetTrainerSauron_lambda1(nnUNetTrainerSauron):
    """Ablation: lambda = 1."""

    sauron_lambda = 1.0


class nnUNetTrainerSauron_lambda2(nnUNetTrainerSauron):
    """Ablation: lambda = 2."""

    sauron_lambda = 2.0
