"""DDP: every rank applies rank 0's pruning decision, training continues in sync (2 CPU processes, gloo)."""

from __future__ import annotations

import gc
import os
import random
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel as DDP

from nnunet_prune.core.stats import unwrap
from nnunet_prune.nnunet.trainers.base import broadcast_decision
from nnunet_prune.surgery import build_channel_graph
from tests.helpers import make_network


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _step(net, opt, x):
    opt.zero_grad()
    sum(o.square().mean() for o in net(x)).backward()  # every head used, as in nnU-Net's deep supervision
    opt.step()


def _worker(rank: int, world: int, port: int, result_dir: str) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)  # identical initial weights on every rank
    module = make_network("plain", 2, ds=True)
    opt = torch.optim.SGD(module.parameters(), lr=1e-2, momentum=0.99, nesterov=True)
    net = DDP(module)
    x = torch.randn(2, 2, 16, 16, generator=torch.Generator().manual_seed(rank))  # different data per rank
    _step(net, opt, x)

    graph = build_channel_graph(unwrap(net))
    rnd = random.Random(rank)  # each rank would decide differently...
    mine = {g.name: rnd.sample(range(g.size), k=2) for g in graph if g.size > 2}
    decision = broadcast_decision(mine)  # ...but all apply rank 0's decision
    graph.prune(decision, optimizer=opt)
    # as nnUNetTrainerPruning._rewrap_network: drop the old wrapper first (its reducer holds gradient accumulators
    # of the old shapes), then wrap again
    module = unwrap(net)
    del net
    gc.collect()
    net = DDP(module)
    for _ in range(2):
        _step(net, opt, x)

    state = {k: v.detach().clone() for k, v in unwrap(net).state_dict().items()}
    momentum = [opt.state[p]["momentum_buffer"].clone() for p in unwrap(net).parameters()]
    torch.save({"decision": decision, "state": state, "momentum": momentum, "widths": graph.widths()},
               os.path.join(result_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_ddp_ranks_apply_rank0_decision_and_stay_in_sync(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=False)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=False)
    assert r0["decision"] == r1["decision"]
    assert r0["widths"] == r1["widths"]
    assert any(w < 8 for w in r0["widths"].values())
    for k in r0["state"]:
        assert torch.allclose(r0["state"][k], r1["state"][k], atol=1e-6), k
    for a, b in zip(r0["momentum"], r1["momentum"]):
        assert torch.allclose(a, b, atol=1e-6)


def _psp_worker(rank: int, world: int, port: int, result_dir: str) -> None:
    """PSP-Seg under DDP as the driver runs it: rank 0's mask on every rank, the wrapper rebuilt with
    find_unused_parameters while branches are masked, then rank 0's deletion."""
    from nnunet_prune.surgery.branches import removable_branches
    from nnunet_prune.surgery.removal import Removal, apply_removal
    from tests.unit.methods.test_pspseg import tiny

    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    dist.init_process_group("gloo", rank=rank, world_size=world)
    module = tiny(2).train()
    opt = torch.optim.SGD(module.parameters(), lr=1e-2, momentum=0.99, nesterov=True)
    x = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(rank))
    _step(DDP(module), opt, x)
    paths = removable_branches(module)
    mine = random.Random(rank).sample(paths, k=5)
    masked = broadcast_decision(mine)
    apply_removal(module, Removal(mask_blocks=masked), optimizer=opt)
    before = {p: module.get_submodule(p).expand.weight.detach().clone() for p in masked}
    gc.collect()
    net = DDP(module, find_unused_parameters=True)  # masked branches get no gradient
    for _ in range(2):
        _step(net, opt, x)
    unchanged = all(torch.equal(before[p], module.get_submodule(p).expand.weight) for p in masked)
    del net
    apply_removal(module, Removal(blocks=masked), optimizer=opt)
    gc.collect()
    net = DDP(module)
    _step(net, opt, x)
    state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    torch.save({"masked": masked, "state": state, "unchanged": unchanged},
               os.path.join(result_dir, f"psp_rank{rank}.pt"))
    dist.destroy_process_group()


def test_ddp_pspseg_masks_and_deletes_rank0s_branches_in_sync(tmp_path):
    mp.spawn(_psp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "psp_rank0.pt", weights_only=False)
    r1 = torch.load(tmp_path / "psp_rank1.pt", weights_only=False)
    assert r0["masked"] == r1["masked"] and r0["unchanged"] and r1["unchanged"]
    assert r0["state"].keys() == r1["state"].keys()
    assert not any(k.startswith(tuple(p + "." for p in r0["masked"])) for k in r0["state"])
    for k in r0["state"]:
        assert torch.allclose(r0["state"][k].float(), r1["state"][k].float(), atol=1e-6), k
