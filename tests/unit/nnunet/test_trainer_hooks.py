"""nnUNetTrainerPruning's hook overrides wired to the driver and the records, with nnU-Net's own hooks replaced by
minimal stand-ins (no dataset, no nnU-Net training; seconds on a CPU): settings before the fold folder, the training
context, the method's hooks, surgeries and their records, the extra loss, ``checkpoint_best.pth`` withheld after a
surgery, no surgery in the final epoch, ``pruning_config.json`` / ``pruning_history.json`` / ``pruning_widths.png``,
each method line once in the training log. (Training through stock nnU-Net: tests/integration, slow.)"""

from __future__ import annotations

import json
from time import time
from types import SimpleNamespace

import pytest
import torch
from nnunetv2.training.logging.nnunet_logger import MetaLogger
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_prune.methods.base import MethodSettings, PruningMethod
from nnunet_prune.nnunet.trainers.base import LossWithExtraTerm, nnUNetTrainerPruning
from nnunet_prune.nnunet.trainers.budget import BUDGET_VARS
from nnunet_prune.nnunet.trainers.records import CONFIG_FILE, HISTORY_FILE
from nnunet_prune.surgery.removal import Removal
from tests.helpers import make_network

EPOCHS, STEPS = 3, 2


class Shrink(PruningMethod):
    """Removes one channel of every group wider than 4 after each epoch; a zero extra loss; one line per epoch."""

    log_keys = ("shrink_epoch",)

    def __init__(self, settings, rng=None):
        super().__init__(settings, rng)
        self.steps = 0

    def batch_start(self, data, target):
        self.steps += 1

    def extra_loss(self):
        return torch.zeros(())

    def decide(self, graph, progress):
        self.say(f"shrink: decided after epoch {progress.epoch}")
        return Removal(channels={g.name: [0] for g in graph if g.size > 4})

    def scalars(self, graph):
        return {"shrink_epoch": len(self.rng.random(1))}

    def state(self):
        return {"steps": self.steps}


class _HookTrainer(nnUNetTrainerPruning):
    method_class = Shrink


def _fake_init(self, plans, configuration, fold, dataset_json, device=torch.device("cpu")):
    """What nnU-Net's __init__ sets that the pruning trainer reads."""
    folder = plans["_folder"]
    self.fold, self.device, self.local_rank, self.is_ddp = fold, device, 0, False
    self.output_folder, self.log_file = folder, f"{folder}/training_log.txt"
    self.configuration_manager = SimpleNamespace(patch_size=[16, 16])
    self.label_manager = SimpleNamespace(ignore_label=None, has_regions=False, foreground_regions=[1, 2])
    self.num_epochs, self.num_iterations_per_epoch, self.num_val_iterations_per_epoch = EPOCHS, STEPS, 1
    self.initial_lr, self.current_epoch, self.was_initialized = 1e-2, 0, False
    self.network = self.optimizer = None
    self.logger = MetaLogger(folder, False)
    self.saved: list[str] = []


class _DeepSupervisionLoss(torch.nn.Module):
    def forward(self, output, target):
        return sum(o.square().mean() for o in output)


def _fake_on_train_start(self):
    torch.manual_seed(0)
    self.network = make_network("plain", 2, ds=True)
    self.optimizer = torch.optim.SGD(self.network.parameters(), lr=self.initial_lr, momentum=0.9)
    self.loss = self._build_loss()
    self.dataloader_train = iter([{"data": torch.randn(2, 2, 16, 16), "target": None} for _ in range(99)])


def _fake_train_step(self, batch):
    self.optimizer.zero_grad()
    loss = self.loss(self.network(batch["data"]), batch["target"])
    loss.backward()
    self.optimizer.step()
    return {"loss": float(loss)}


def _fake_on_epoch_end(self):
    self.logger.log("epoch_end_timestamps", time(), self.current_epoch)
    self.save_checkpoint(f"{self.output_folder}/checkpoint_best.pth")
    self.current_epoch += 1


@pytest.fixture
def trainer(tmp_path, monkeypatch):
    for var in (*BUDGET_VARS, "NNUNET_PRUNE_SEED"):
        monkeypatch.delenv(var, raising=False)
    patches = {"__init__": _fake_init, "on_train_start": _fake_on_train_start, "train_step": _fake_train_step,
               "on_epoch_end": _fake_on_epoch_end, "_build_loss": lambda self: _DeepSupervisionLoss(),
               "on_train_epoch_start": lambda self: self.logger.log("epoch_start_timestamps", time(),
                                                                    self.current_epoch),
               "save_checkpoint": lambda self, filename: self.saved.append(filename.rpartition("/")[2]),
               "on_train_end": lambda self: None}
    for name, fake in patches.items():
        monkeypatch.setattr(nnUNetTrainer, name, fake)
    return _HookTrainer({"_folder": str(tmp_path)}, "2d", 0, {}, torch.device("cpu"))


def test_the_hooks_drive_the_method_and_write_the_records(trainer, tmp_path):
    trainer.on_train_start()
    method = trainer.method
    assert isinstance(method, Shrink) and isinstance(method.settings, MethodSettings)
    assert method.context.rank == 0 and method.context.patch_size == (16, 16) and method.context.ignore_label is None
    assert next(iter(method.context.calibration_batches())).shape == (2, 2, 16, 16)  # the training loader's data
    initial = trainer.driver.graph.widths()
    best_saved = []
    for epoch in range(EPOCHS):
        trainer.on_train_epoch_start()
        for _ in range(STEPS):
            trainer.train_step(next(trainer.dataloader_train))
        for key, value in (("train_losses", 1.0), ("val_losses", 1.0), ("mean_fg_dice", 0.5)):
            trainer.logger.log(key, value, epoch)
        trainer.saved.clear()
        trainer.on_epoch_end()
        best_saved.append("checkpoint_best.pth" in trainer.saved)
    trainer.on_train_end()

    assert isinstance(trainer.loss, LossWithExtraTerm) and trainer.loss.last_extra == 0.0
    assert method.steps == EPOCHS * STEPS
    assert best_saved == [False, False, True]  # pruned after the validation of epochs 0 and 1; none after the last
    config = json.loads((tmp_path / CONFIG_FILE).read_text())
    assert config["trainer"] == "_HookTrainer" and config["method_class"] == "Shrink"
    assert config["initial_widths"] == initial and config["resumes"] == []
    history = json.loads((tmp_path / HISTORY_FILE).read_text())
    epochs = history["epochs"]
    assert history["trainer"] == "_HookTrainer" and [r["epoch"] for r in epochs] == [0, 1, 2]
    assert [sum(r["widths"].values()) for r in epochs][1] < [sum(r["widths"].values()) for r in epochs][0]
    assert epochs[2]["widths"] == epochs[1]["widths"] and epochs[2]["removed"] == {}
    assert all(r["shrink_epoch"] == 1 and "train_loss" in r for r in epochs)
    log = trainer.logger.local_logger
    assert log.last("nnunet_prune_state") == {"steps": EPOCHS * STEPS} and len(log.my_fantastic_logging["macs"]) == 3
    text = (tmp_path / "training_log.txt").read_text()
    for epoch in range(EPOCHS):
        assert text.count(f"shrink: decided after epoch {epoch}") == 1
    assert "no surgery in the last 1 epoch(s)" in text
    assert (tmp_path / "pruning_widths.png").is_file()
