"""The surgery driver on its own (no nnU-Net, one CPU process): the protocol's hooks in order, the context attached
once before the first bind, decisions applied with caps, none in the final epochs, a held zero pattern, the epoch
record, each method line logged once. (DDP: test_distributed.py.)"""

from __future__ import annotations

from functools import partial

import pytest
import torch

from nnunet_prune.core.stats import count_parameters
from nnunet_prune.methods.base import MethodSettings, PruningMethod, TrainingContext
from nnunet_prune.nnunet.trainers.driver import SurgeryDriver
from nnunet_prune.surgery.removal import Removal
from tests.helpers import make_network

EPOCHS = 3


class Slot:
    network: torch.nn.Module
    optimizer: torch.optim.Optimizer


class Recorder(PruningMethod):
    """Logs every hook call; removes two channels of every group wider than 2 after each epoch; zeroes nothing."""

    log_keys = ("calls",)

    def __init__(self, remove: int = 2, start_removal: Removal | None = None):
        super().__init__(MethodSettings())
        self.calls: list[str] = []
        self.remove = remove
        self.start_removal = start_removal or Removal()

    def attach(self, context):
        super().attach(context)
        self.calls.append("attach")

    def bind(self, graph):
        self.calls.append("bind")

    def start(self, network, graph, progress=None):
        self.calls.append("start")
        self.say("started")
        return self.start_removal

    def epoch_start(self, epoch, graph):
        self.calls.append(f"epoch_start {epoch}")

    def step_start(self, step, steps_per_epoch):
        self.calls.append(f"step_start {step}/{steps_per_epoch}")

    def batch_start(self, data, target):
        self.calls.append("batch_start")

    def step_end(self):
        self.calls.append("step_end")

    def decide(self, graph, progress):
        self.calls.append(f"decide {progress.epoch} allowed={progress.pruning_allowed}")
        self.say(f"decided after epoch {progress.epoch}")
        return Removal(channels={g.name: list(range(self.remove)) for g in graph if g.size > 2})

    def scalars(self, graph):
        return {"calls": len(self.calls)}

    def after_surgery(self, result, graph):
        self.calls.append("after_surgery")

    def record(self, graph):
        return {"detail": "x"}

    def release(self):
        self.calls.append("release")


def driver_for(method, **kw) -> tuple[SurgeryDriver, Slot, list[str]]:
    torch.manual_seed(0)
    slot, lines = Slot(), []
    slot.network = make_network("plain", 2, ds=True)
    slot.optimizer = torch.optim.SGD(slot.network.parameters(), lr=1e-2, momentum=0.9)
    driver = SurgeryDriver(method, get_network=lambda: slot.network, set_network=partial(setattr, slot, "network"),
                           get_optimizer=lambda: slot.optimizer, log=lines.append, patch_size=(16, 16), **kw)
    return driver, slot, lines


def run_epoch(driver, slot, epoch, steps=2):
    x = torch.randn(2, 2, 16, 16)
    driver.epoch_start(epoch)
    for _ in range(steps):
        with driver.training_step(x, None, steps):
            slot.optimizer.zero_grad()
            sum(o.square().mean() for o in slot.network(x)).backward()
            slot.optimizer.step()
    log = {"train_losses": [1.0] * (epoch + 1), "val_losses": [1.0] * (epoch + 1)}
    return driver.end_epoch(epoch, driver.pruning_allowed(epoch, EPOCHS),
                            lambda: driver.progress(epoch, EPOCHS, log, {"initial_parameters": 5}))


def test_hooks_run_in_the_protocols_order_and_each_line_is_logged_once():
    method = Recorder()
    driver, slot, lines = driver_for(method)
    assert driver.start(TrainingContext(rank=0, patch_size=(16, 16)), fresh=True, progress=lambda: None) is None
    assert method.context.patch_size == (16, 16)
    end = run_epoch(driver, slot, 0)
    assert method.calls[:3] == ["attach", "bind", "start"]
    assert method.calls[3:10] == ["epoch_start 0", "step_start 0/2", "batch_start", "step_end", "step_start 1/2",
                                  "batch_start", "step_end"]
    assert method.calls[10:] == ["decide 0 allowed=True", "bind", "after_surgery"]  # re-bound after the surgery
    assert lines.count("started") == 1 and lines.count("decided after epoch 0") == 1
    assert any(line.startswith("pruning: ") for line in lines) and lines[-1].startswith("parameters ")
    assert end.cut and end.result.structure_changed and end.scalars == {"calls": 11}
    widths = driver.graph.widths()
    assert end.record["widths"] == widths and end.record["detail"] == "x" and end.record["calls"] == 11
    assert end.record["removed"] == {g.name: 2 for g in driver.graph}  # every group was wider than 2
    assert end.record["num_parameters"] == count_parameters(slot.network) == driver.parameters()
    assert list(end.record)[:7] == ["epoch", "widths", "removed", "num_parameters", "macs", "pruning_seconds",
                                    "calls"]
    driver.finish([end.record], None)
    assert method.calls[-1] == "release"


def test_no_surgery_in_the_final_epochs_but_the_method_still_decides():
    method = Recorder()
    driver, slot, lines = driver_for(method, final_epochs_without_pruning=2)
    driver.start(TrainingContext(), fresh=True, progress=lambda: None)
    widths = driver.graph.widths()
    end = run_epoch(driver, slot, EPOCHS - 2)
    assert "decide 1 allowed=False" in method.calls
    assert driver.graph.widths() == widths and end.record["removed"] == {} and not end.cut
    assert any(line.startswith("nnunet-prune: no surgery in the last 2 epoch(s)") for line in lines)


def test_caps_and_minimum_width_clip_the_decision():
    driver, slot, _ = driver_for(Recorder(remove=6), min_width=3)
    initial = driver.graph.widths()
    driver.set_caps(initial, 0.5)
    driver.start(TrainingContext(), fresh=True, progress=lambda: None)
    run_epoch(driver, slot, 0)
    for name, width in driver.graph.widths().items():
        assert width >= max(3, initial[name] // 2), name


def test_a_start_surgery_is_recorded_with_the_first_epoch_and_the_macs_follow_the_structure():
    method = Recorder(remove=0)
    driver, slot, _ = driver_for(method)
    before = driver.current_macs()
    group = next(g.name for g in driver.graph)
    method.start_removal = Removal(channels={group: [0, 1]})
    result = driver.start(TrainingContext(), fresh=True, progress=lambda: None)
    assert result is not None and result.structure_changed and driver.current_macs() < before
    assert method.calls[:5] == ["attach", "bind", "start", "bind", "after_surgery"]
    end = run_epoch(driver, slot, 0)
    assert end.record["removed"] == {group: 2}


def test_a_held_zero_pattern_is_reapplied_after_each_step_but_not_after_a_failed_one():
    class Zeroing(Recorder):
        holds_zero_pattern = True

    method = Zeroing(remove=0)
    driver, slot, _ = driver_for(method)
    conv = next(m for m in slot.network.modules() if isinstance(m, torch.nn.Conv2d))
    with torch.no_grad():
        conv.weight[0].zero_()
    driver.start(TrainingContext(), fresh=False, progress=lambda: None)  # --c: the fold's zeros are held
    run_epoch(driver, slot, 0)
    assert conv.weight[0].abs().sum() == 0
    calls = len(method.calls)
    with pytest.raises(RuntimeError, match="boom"):
        with driver.training_step(torch.zeros(1), None, 1):
            with torch.no_grad():
                conv.weight[0].fill_(1.0)
            raise RuntimeError("boom")
    assert method.calls[calls:] == ["step_start 2/1", "batch_start", "step_end"]  # step_end also after a failure
    assert conv.weight[0].abs().sum() > 0  # the failed step is not followed by the zero pattern


def test_without_a_method_the_driver_keeps_records_and_changes_nothing():
    driver, slot, lines = driver_for(None)
    assert driver.start(TrainingContext(), fresh=True, progress=lambda: None) is None
    network = slot.network
    end = run_epoch(driver, slot, 0)
    assert slot.network is network and end.scalars == {} and not end.cut and lines == []
    assert end.record["removed"] == {} and end.record["num_parameters"] == count_parameters(network)
    assert driver.method_state() == {} and driver.schedule_warnings(10) == []
