"""``nnUNetTrainerSauron``: Sauron filter pruning during nnU-Net training (papers/sauron.txt).

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

from functools import partial

import numpy as np
import torch

from nnunet_prune.criteria.sauron import delta_opt, normalise_by_max, pool, prune_distances
from nnunet_prune.methods.sauron import SauronConfig, SauronThresholds
from nnunet_prune.surgery import PruneResult
from nnunet_prune.trainers.base import nnUNetTrainerPruning


class nnUNetTrainerSauron(nnUNetTrainerPruning):
    """nnU-Net + Sauron: loss + lambda * delta_opt, layer-wise thresholds raised under C1-C4, pruning every epoch."""

    sauron_lambda: float = 0.5
    method_log_keys = ("delta_opt", "sauron_tau", "sauron_layers_raised")

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.sauron = SauronConfig.resolve(self.plans_manager.plans, lambda_=self.sauron_lambda)
        self.thresholds = SauronThresholds(self.sauron)
        self._hooks: list = []
        self._pooled: list[torch.Tensor] = []
        self._delta_opt_sum = torch.zeros(())
        self._delta_opt_steps = 0
        self._references: dict[str, int] = {}
        self._distances: dict[tuple[str, int], torch.Tensor] = {}
        self._distance_batches: dict[tuple[str, int], int] = {}
        self._iteration = 0
        self._collecting = False
        self._rng = np.random.default_rng()

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
        for h in self._hooks:
            h.remove()
        self._hooks = [m.register_forward_hook(partial(self._observe, g.name, j))
                       for g in self.graph for j, m in enumerate(g.outputs)]

    def _observe(self, group: str, point: int, module, inputs, output) -> None:
        if not module.training or output.device.type == "meta":
            return
        pooled = pool(output, self.sauron.omega)
        if self.sauron.lambda_ > 0:
            self._pooled.append(pooled)
        if self._collecting and group in self._references:
            with torch.no_grad():
                d = prune_distances(pooled.detach().float(), self._references[group])
            key = (group, point)
            self._distances[key] = self._distances[key] + d if key in self._distances else d
            self._distance_batches[key] = self._distance_batches.get(key, 0) + 1

    def extra_training_loss(self) -> torch.Tensor | None:
        maps, self._pooled = self._pooled, []
        if self.sauron.lambda_ == 0 or not maps:
            return None
        value = delta_opt([m.float() for m in maps])
        self._delta_opt_sum = self._delta_opt_sum.to(value.device) + value.detach()
        self._delta_opt_steps += 1
        return self.sauron.lambda_ * value

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        self._iteration = 0
        self._distances, self._distance_batches = {}, {}
        self._delta_opt_sum, self._delta_opt_steps = torch.zeros(()), 0
        # a new random reference channel pi per layer and epoch (§3.3)
        self._references = {g.name: int(self._rng.integers(g.size)) for g in self.graph if g.size > 1}

    def train_step(self, batch: dict) -> dict:
        self._collecting = self._iteration >= self.num_iterations_per_epoch - self.sauron.stat_batches
        try:
            return super().train_step(batch)
        finally:
            self._pooled = []
            self._collecting = False
            self._iteration += 1

    def delta_prune(self, group) -> np.ndarray | None:
        """Normalised distances of the group's channels to its reference, combined over the group's output
        points by max (a channel is redundant only where it is redundant everywhere)."""
        per_point = [normalise_by_max(self._distances[(group.name, j)] / self._distance_batches[(group.name, j)])
                     for j in range(len(group.outputs)) if (group.name, j) in self._distances]
        if not per_point:
            return None
        return torch.stack(per_point).amax(dim=0).cpu().numpy()

    # ------------------------------------------------------------------ decision
    def decide_pruning(self):
        log = self.logger.local_logger.my_fantastic_logging
        raised = self.thresholds.update(self.current_epoch, log["train_losses"], log["val_losses"])
        removal = {}
        for g in self.graph:
            d = self.delta_prune(g) if g.name in self._references else None
            if d is not None:
                idx = self.thresholds.select(g.name, d, self._references[g.name])
                if idx:
                    removal[g.name] = idx
        self.log_method_scalar("delta_opt", float(self._delta_opt_sum) / self._delta_opt_steps
                               if self._delta_opt_steps else float("nan"))
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
