"""DDP through the real :class:`~nnunet_prune.nnunet.trainers.driver.SurgeryDriver` (2 CPU processes, gloo): every
rank applies rank 0's decision, gets rank 0's method state, rebuilds its DDP wrapper, and training continues in
sync. The driver's own steps run here (no copy of them): a regression in its DDP path fails these tests."""

from __future__ import annotations

import os
import random
import socket
from datetime import timedelta
from functools import partial

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel as DDP

from nnunet_prune.core.stats import unwrap
from nnunet_prune.methods.base import MethodSettings, PruningMethod, TrainingContext
from nnunet_prune.nnunet.trainers.driver import SurgeryDriver
from nnunet_prune.surgery.removal import Removal
from tests.helpers import make_network

EPOCHS = 4  # the decisions come after epochs 0 and 1; the last epoch allows no surgery


class Slot:
    """What the trainer is to the driver: it holds the (wrapped) network and the optimizer."""

    network: torch.nn.Module
    optimizer: torch.optim.Optimizer


class RankDependentChannels(PruningMethod):
    """Each rank would remove other channels, and keeps a state of its own: the driver must use rank 0's."""

    state_from_rank0 = True

    def __init__(self):
        super().__init__(MethodSettings())
        self.binds = 0
        self.loaded: dict | None = None

    def bind(self, graph) -> None:
        self.binds += 1

    def decide(self, graph, progress) -> Removal:
        if progress.epoch > 0:
            return Removal()
        rnd = random.Random(self.context.rank)
        return Removal(channels={g.name: rnd.sample(range(g.size), k=2) for g in graph if g.size > 2})

    def state(self) -> dict:
        return {"rank": self.context.rank}

    def load_state(self, state) -> None:
        self.loaded = dict(state)


class RankDependentBranches(PruningMethod):
    """PSP-Seg's schedule in two epochs: each rank would mask other branches after epoch 0; after epoch 1 the masked
    branches (rank 0's, as the surgery reports them) are deleted, and whether training left them alone is noted."""

    removes = "branches"

    def __init__(self):
        super().__init__(MethodSettings())
        self.masked: list[str] = []
        self.weights: dict[str, torch.Tensor] = {}
        self.unchanged: bool | None = None

    def decide(self, graph, progress) -> Removal:
        from nnunet_prune.surgery.branches import removable_branches

        net = graph.network
        if progress.epoch == 0:
            return Removal(mask_blocks=random.Random(self.context.rank).sample(removable_branches(net), k=5))
        if progress.epoch == 1:
            self.unchanged = all(torch.equal(w, net.get_submodule(p).expand.weight) for p, w in self.weights.items())
            return Removal(blocks=self.masked)
        return Removal()

    def after_surgery(self, result, graph) -> None:
        if result.masked:
            self.masked = list(result.masked)
            self.weights = {p: graph.network.get_submodule(p).expand.weight.detach().clone() for p in self.masked}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _init(rank: int, world: int, port: int) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    # a rank stuck in a collective that the other left fails the test instead of hanging it
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=120))


def _driver(slot: Slot, method: PruningMethod, rank: int, world: int) -> SurgeryDriver:
    driver = SurgeryDriver(method, get_network=lambda: slot.network, set_network=partial(setattr, slot, "network"),
                           get_optimizer=lambda: slot.optimizer, log=lambda line: None, patch_size=(16, 16),
                           final_epochs_without_pruning=1, is_ddp=True, ddp_device_ids=None)
    driver.start(TrainingContext(rank=rank, world_size=world, is_ddp=True), fresh=True, progress=lambda: None)
    return driver


def _epoch(driver: SurgeryDriver, slot: Slot, epoch: int, x: torch.Tensor, steps: int = 1):
    """One epoch as the trainer runs it: the method's step hooks around each step, then the epoch's end."""
    driver.epoch_start(epoch)
    for _ in range(steps):
        with driver.training_step(x, None, steps):
            slot.optimizer.zero_grad()
            sum(o.square().mean() for o in slot.network(x)).backward()  # every head, as deep supervision
            slot.optimizer.step()
    log = {"train_losses": [0.0] * (epoch + 1), "val_losses": [0.0] * (epoch + 1)}
    return driver.end_epoch(epoch, driver.pruning_allowed(epoch, EPOCHS),
                            lambda: driver.progress(epoch, EPOCHS, log, {}))


def _snapshot(slot: Slot) -> dict:
    module = unwrap(slot.network)
    return {"state": {k: v.detach().clone() for k, v in module.state_dict().items()},
            "momentum": [slot.optimizer.state[p]["momentum_buffer"].clone() for p in module.parameters()
                         if "momentum_buffer" in slot.optimizer.state.get(p, {})]}


def _channels_worker(rank: int, world: int, port: int, result_dir: str) -> None:
    _init(rank, world, port)
    torch.manual_seed(0)  # identical initial weights on every rank
    slot = Slot()
    module = make_network("plain", 2, ds=True)
    slot.optimizer = torch.optim.SGD(module.parameters(), lr=1e-2, momentum=0.99, nesterov=True)
    slot.network = DDP(module)
    first_wrapper = id(slot.network)
    method = RankDependentChannels()
    driver = _driver(slot, method, rank, world)
    x = torch.randn(2, 2, 16, 16, generator=torch.Generator().manual_seed(rank))  # different data per rank
    records = [_epoch(driver, slot, e, x).record for e in range(2)]
    rewrapped = isinstance(slot.network, DDP) and id(slot.network) != first_wrapper
    torch.save({"records": records, "rewrapped": rewrapped, "binds": method.binds, "loaded": method.loaded,
                **_snapshot(slot)}, os.path.join(result_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_ddp_driver_applies_rank0s_decision_and_state_and_ranks_stay_in_sync(tmp_path):
    mp.spawn(_channels_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=False)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=False)
    assert r0["records"][0]["removed"] == r1["records"][0]["removed"] and sum(r0["records"][0]["removed"].values())
    assert r0["records"][-1]["widths"] == r1["records"][-1]["widths"]
    assert any(w < 8 for w in r0["records"][-1]["widths"].values())
    assert r0["rewrapped"] and r1["rewrapped"]  # a new DDP wrapper over the pruned module
    assert r0["binds"] == r1["binds"] == 2  # at the start and after the surgery
    assert r0["loaded"] == r1["loaded"] == {"rank": 0}  # rank 0's state on every rank
    for k in r0["state"]:
        assert torch.allclose(r0["state"][k], r1["state"][k], atol=1e-6), k
    assert len(r0["momentum"]) == len(r1["momentum"]) > 0
    for a, b in zip(r0["momentum"], r1["momentum"]):
        assert torch.allclose(a, b, atol=1e-6)


def _branches_worker(rank: int, world: int, port: int, result_dir: str) -> None:
    from tests.unit.methods.test_pspseg import tiny

    _init(rank, world, port)
    slot = Slot()
    module = tiny(2).train()
    slot.optimizer = torch.optim.SGD(module.parameters(), lr=1e-2, momentum=0.99, nesterov=True)
    slot.network = DDP(module)
    method = RankDependentBranches()
    driver = _driver(slot, method, rank, world)
    x = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(rank))
    masked = _epoch(driver, slot, 0, x).result.masked
    tolerant = slot.network.find_unused_parameters  # the wrapper rebuilt: masked branches get no gradient
    deleted = _epoch(driver, slot, 1, x).record.get("removed_blocks", [])
    strict = not slot.network.find_unused_parameters  # rebuilt again: nothing masked any more
    _epoch(driver, slot, 2, x)
    torch.save({"masked": masked, "deleted": deleted, "tolerant": tolerant, "strict": strict,
                "unchanged": method.unchanged, **_snapshot(slot)}, os.path.join(result_dir, f"psp_rank{rank}.pt"))
    dist.destroy_process_group()


def test_ddp_driver_masks_and_deletes_rank0s_branches_in_sync(tmp_path):
    mp.spawn(_branches_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "psp_rank0.pt", weights_only=False)
    r1 = torch.load(tmp_path / "psp_rank1.pt", weights_only=False)
    assert len(r0["masked"]) == 5 and r0["masked"] == r1["masked"] == r0["deleted"] == r1["deleted"]
    assert r0["tolerant"] and r1["tolerant"] and r0["strict"] and r1["strict"]
    assert r0["unchanged"] is True and r1["unchanged"] is True  # masked weights untouched while training
    assert r0["state"].keys() == r1["state"].keys()
    assert not any(k.startswith(tuple(p + "." for p in r0["masked"])) for k in r0["state"])
    for k in r0["state"]:
        assert torch.allclose(r0["state"][k].float(), r1["state"][k].float(), atol=1e-6), k
