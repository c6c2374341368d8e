"""PSP-Seg's network, branch surgery, criterion and method on tiny networks (CPU, seconds)."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from torch import nn

from nnunet_prune.criteria.pspseg import least_important_subset, subset_discrepancies
from nnunet_prune.methods.base import TrainingContext, TrainingProgress
from nnunet_prune.methods.pspseg import (
    PSPSegMethod,
    PSPSegSettings,
    region_localisation_loss,
    target_representation_loss,
)
from nnunet_prune.networks.pspseg import PSPSegUNet, branch_kernel_set
from nnunet_prune.surgery import architectures, build_channel_graph
from nnunet_prune.surgery.branches import (
    branch_states,
    match_branches,
    prm_modules,
    removable_branches,
    remove_branches,
    set_branches_active,
)
from nnunet_prune.surgery.removal import Removal, apply_removal


def tiny(dim: int = 2, m: int = 4, deep_supervision: bool = True, seed: int = 0) -> PSPSegUNet:
    torch.manual_seed(seed)
    conv = nn.Conv3d if dim == 3 else nn.Conv2d
    n = 3
    net = PSPSegUNet(1, n, [4, 8, 16], conv, [[3] * dim] * n, [[1] * dim] + [[2] * dim] * (n - 1), 3,
                     [branch_kernel_set(m, dim) for _ in range(n)], deep_supervision=deep_supervision)
    net.apply(net.initialize)
    with torch.no_grad():  # non-zero branch weights: every branch contributes
        for p in net.parameters():
            if p.dim() == 0:
                p.uniform_(0.5, 1.5)
    return net.eval()


def test_branch_kernels_are_the_documented_sets():
    assert branch_kernel_set(4, 3) == [[3, 3, 3], [3, 3, 1], [3, 1, 3], [1, 3, 3]]
    assert len({tuple(k) for k in branch_kernel_set(7, 3)}) == 7 and [1, 1, 1] not in branch_kernel_set(7, 3)
    assert branch_kernel_set(4, 2) == [[3, 3], [3, 1], [1, 3], [1, 1]]
    assert branch_kernel_set(7, 2)[4:] == [[3, 3], [3, 1], [1, 3]]
    assert branch_kernel_set(4, 3, [1, 3, 3]) == [[1, 3, 3], [1, 3, 1], [1, 1, 3], [1, 3, 3]]  # anisotropic stage
    with pytest.raises(ValueError):
        branch_kernel_set(0, 3)


@pytest.mark.parametrize("dim", [2, 3])
def test_forward_shapes_and_deep_supervision_switch(dim):
    net = tiny(dim)
    x = torch.randn(2, 1, *([16] * dim))
    outs = net(x)
    assert [tuple(o.shape) for o in outs] == [(2, 3, *([16] * dim)), (2, 3, *([8] * dim))]
    net.decoder.deep_supervision = False  # nnU-Net's set_deep_supervision_enabled
    assert tuple(net(x).shape) == (2, 3, *([16] * dim))
    assert len(prm_modules(net)) == 5 and architectures.of(net).removes == ("branches",)
    assert len(build_channel_graph(net)) == 0  # no channel groups: PSP-Seg prunes branches


def test_branch_weights_start_at_zero_so_the_network_starts_as_plain_stages():
    net = PSPSegUNet(1, 2, [4, 8], nn.Conv2d, [[3, 3]] * 2, [[1, 1], [2, 2]], 2, [branch_kernel_set(4, 2)] * 2)
    net.apply(net.initialize)
    assert all(float(b.branch_weight.detach()) == 0 for prm in prm_modules(net).values() for b in prm.branches.values())


@pytest.mark.parametrize("dim", [2, 3])
def test_masked_branches_equal_deleted_branches(dim):
    """The oracle: masking a subset == deleting it (max abs diff <= 1e-5, float32), every head."""
    net = tiny(dim)
    x = torch.randn(2, 1, *([16] * dim))
    paths = removable_branches(net)
    gen = torch.Generator().manual_seed(1)
    chosen = [paths[i] for i in torch.randperm(len(paths), generator=gen)[:9].tolist()]
    masked = copy.deepcopy(net)
    assert set_branches_active(masked, chosen, False) == chosen
    deleted = copy.deepcopy(net)
    result = remove_branches(deleted, chosen)
    assert result.params_after < result.params_before
    with torch.no_grad():
        a, b, dense = masked(x), deleted(x), net(x)
    for u, v, w in zip(a, b, dense):
        assert (u - v).abs().max() <= 1e-5
        assert (u - w).abs().max() > 1e-4  # masking changed the output: the test can fail
    states = branch_states(deleted)
    assert sum(s.count("deleted") for s in states.values()) == 9


def test_restore_puts_back_exactly_the_masked_weights_and_training_leaves_them_alone():
    net = tiny(2).train()
    path = removable_branches(net)[0]
    branch = net.get_submodule(path)
    before = {k: v.clone() for k, v in branch.state_dict().items() if k != "active"}
    set_branches_active(net, [path], False)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=3e-5)
    for _ in range(3):
        opt.zero_grad(set_to_none=True)
        sum(o.square().mean() for o in net(torch.randn(2, 1, 16, 16))).backward()
        opt.step()
    set_branches_active(net, [path], True)
    after = branch.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert bool(branch.active)


def test_state_dict_says_which_branches_remain_and_folds_load_in_any_order():
    """A checkpoint with deleted and masked branches loads into a freshly built network; the predictor's single
    network loads a fold with more branches after one with fewer."""
    net = tiny(2)
    paths = removable_branches(net)
    remove_branches(net, paths[:3])
    set_branches_active(net, [paths[5]], False)
    pruned_sd = copy.deepcopy(net.state_dict())
    full_sd = copy.deepcopy(tiny(2, seed=3).state_dict())
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        expected = net(x)[0]
    fresh = tiny(2, seed=5)
    fresh.load_state_dict(pruned_sd)
    assert branch_states(fresh) == branch_states(net)
    with torch.no_grad():
        assert (fresh(x)[0] - expected).abs().max() == 0
    fresh.load_state_dict(full_sd)  # the next fold has every branch again
    assert all(s == "active" for row in branch_states(fresh).values() for s in row)
    other = tiny(2, seed=3)
    with torch.no_grad():
        assert (fresh(x)[0] - other(x)[0]).abs().max() == 0
    assert not match_branches(fresh, full_sd)


def test_apply_removal_masks_restores_and_deletes_with_the_optimizer():
    net = tiny(2).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    paths = removable_branches(net)
    r = apply_removal(net, Removal(mask_blocks=paths[:2]))
    assert r.masked == paths[:2] and not r.structure_changed
    r = apply_removal(net, Removal(restore_blocks=paths[:1], blocks=paths[1:2]), optimizer=opt)
    assert r.restored == paths[:1] and r.structure_changed
    ids = {id(p) for g in opt.param_groups for p in g["params"]}
    assert ids == {id(p) for p in net.parameters()}
    with pytest.raises(Exception, match="not branches"):
        apply_removal(net, Removal(blocks=paths[1:2]))


def test_subset_discrepancy_is_the_change_of_the_module_output():
    x = torch.randn(2, 4, 8, 8)
    outs = {"0": torch.randn(2, 4, 8, 8), "1": torch.zeros(2, 4, 8, 8), "2": 0.01 * torch.randn(2, 4, 8, 8)}
    act = nn.LeakyReLU(0.01)
    errors = subset_discrepancies(x, outs, act, itertools.combinations(outs, 1))
    assert errors[("1",)] == 0 and least_important_subset(errors) == ("1",)
    z = x + sum(outs.values())
    assert errors[("0",)] == pytest.approx(float((act(z) - act(z - outs["0"])).double().pow(2).sum()), rel=1e-6)
    two = subset_discrepancies(x, outs, act, itertools.combinations(outs, 2))
    assert least_important_subset(two) == ("1", "2")


def test_fd_losses():
    f = torch.randn(2, 8, 4, 4)
    assert float(target_representation_loss(f, f)) == pytest.approx(0, abs=1e-6)
    assert float(target_representation_loss(f, -f)) == pytest.approx(2, abs=1e-6)
    target = torch.zeros(2, 1, 8, 8)
    target[:, :, 2:5, 2:5] = 1
    good = torch.where(target > 0, 10.0, -10.0).repeat(1, 3, 1, 1)
    assert float(region_localisation_loss([good], [target])) < 1e-3
    assert float(region_localisation_loss([-good], [target])) > 5
    ignored = target.clone()
    ignored[:, :, 2:5, 2:5] = 2  # the ignore label: no loss there
    background = torch.full_like(good, -10.0)  # right outside the square, wrong inside it
    assert float(region_localisation_loss([background], [target])) > 0.5
    assert float(region_localisation_loss([background], [ignored], ignore_label=2)) < 1e-3


def run_method(method, net, fd_per_epoch, num_epochs, calibration):
    """Drive the method's decisions with given per-epoch TR=RL values; apply what it returns."""
    graph = build_channel_graph(net)
    if method.context.calibration_batches is None:  # (a test may attach its own context first)
        method.attach(TrainingContext(calibration_batches=calibration))
    method.bind(graph)
    events = []
    for epoch, value in enumerate(fd_per_epoch):
        method.epoch_start(epoch, graph)
        method._sums = [value, value, 1]
        progress = TrainingProgress(epoch, num_epochs, [], [], pruning_allowed=epoch < num_epochs - 1)
        removal = method.decide(graph, progress)
        apply_removal(net, removal)
        graph = build_channel_graph(net)
        method.after_surgery(None, graph)
        events += [(epoch, e["kind"]) for e in method._events_now]
    return events


def test_method_masks_at_convergence_then_deletes_or_restores_and_stops_at_k_zero():
    net = tiny(2)
    calib = lambda: iter([torch.randn(2, 1, 16, 16)] * 5)  # noqa: E731
    settings = PSPSegSettings(k=1, patience=2, tolerance=0.01, stop_fraction=1.0, calibration_patches=4)
    method = PSPSegMethod(settings)
    # falling, then flat: converged after epoch 4 -> mask; flat -> delete (not worse) and the next mask at 7 and
    # at 10; worse -> restore at 13 and k -> 0: nothing more
    fd = [1.0, 0.9, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9]
    events = run_method(method, net, fd, 20, calib)
    assert events == [(4, "mask"), (7, "delete"), (7, "mask"), (10, "delete"), (10, "mask"), (13, "restore")]
    assert method.k == 0
    states = [s for row in branch_states(net).values() for s in row]
    assert states.count("deleted") == 2 * len(prm_modules(net))  # one per module (k=1) twice, the third restored
    assert states.count("masked") == 0
    # the state round-trips (--c)
    again = PSPSegMethod(settings)
    again.load_state(method.state())
    assert again.state() == method.state()


def test_method_waits_when_the_loss_is_worse_than_its_best_and_stops_at_stop_fraction():
    calib = lambda: iter([torch.randn(2, 1, 16, 16)] * 5)  # noqa: E731
    method = PSPSegMethod(PSPSegSettings(k=2, patience=2, stop_fraction=1.0, calibration_patches=4))
    fd = [1.0, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9]
    assert run_method(method, tiny(2), fd, 20, calib) == [(3, "mask"), (6, "delete"), (6, "mask"), (9, "restore"),
                                                          (12, "wait")]
    assert method.k == 1
    late = PSPSegMethod(PSPSegSettings(k=1, patience=2, stop_fraction=0.1, calibration_patches=4))
    assert run_method(late, tiny(2), fd, 20, calib) == []  # no new mask after 10 % of 20 epochs


def test_method_scores_subsets_of_modules_with_fewer_active_branches_than_k():
    net = tiny(2, m=4)
    paths = removable_branches(net)
    prm = next(iter(prm_modules(net)))
    remove_branches(net, [p for p in paths if p.startswith(prm + ".")][:3])  # one branch left in that module
    method = PSPSegMethod(PSPSegSettings(k=2, calibration_patches=2))
    method.bind(build_channel_graph(net))
    method.attach(TrainingContext(calibration_batches=lambda: iter([torch.randn(2, 1, 16, 16)])))
    chosen = method.least_important_branches(2)
    assert sum(c.startswith(prm + ".") for c in chosen) == 1
    assert len(chosen) == 1 + 2 * (len(prm_modules(net)) - 1)


def test_settings_are_validated():
    from nnunet_prune import NnUNetPruneError

    assert PSPSegSettings.resolve(environ={"NNUNET_PRUNE_PSPSEG": "k=2,patience=3"}).k == 2
    assert PSPSegSettings.resolve(plans={"nnunet_prune": {"pspseg": {"k": 2}}}).k == 2
    for bad in ("k=0", "stop_fraction=0", "patience=-1", "calibration_patches=0", "tolerance=-1", "k=1.5"):
        with pytest.raises(NnUNetPruneError, match="NNUNET_PRUNE_PSPSEG"):
            PSPSegSettings.resolve(environ={"NNUNET_PRUNE_PSPSEG": bad})
    method = PSPSegMethod(PSPSegSettings())
    assert method.schedule_problems(20, 1)  # patience 10 + stop at 40 %: nothing in 20 epochs
    assert not method.schedule_problems(1000, 1)
    forced = PSPSegMethod(PSPSegSettings(patience=0, stop_fraction=1.0))
    assert not forced.schedule_problems(2, 1)  # masks after epoch 0 (then export deletes them)
    late = PSPSegMethod(PSPSegSettings(patience=2, stop_fraction=0.1))
    assert late.schedule_problems(20, 1) and not late.schedule_problems(30, 1)  # masks end with epoch 1 / epoch 2


def test_a_module_with_every_branch_deleted_loads_in_any_fold_order():
    net = tiny(2)
    prm = next(iter(prm_modules(net)))
    remove_branches(net, [p for p in removable_branches(net) if p.startswith(prm + ".")])
    assert net.get_submodule(prm).present.tolist() == [False] * 4
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        expected = net(x)[0]
    sd = copy.deepcopy(net.state_dict())
    full = copy.deepcopy(tiny(2, seed=2).state_dict())
    fresh = tiny(2, seed=7)
    for state in (sd, full, sd):  # the predictor's one network, fold after fold
        fresh.load_state_dict(state)
    assert branch_states(fresh) == branch_states(net)
    with torch.no_grad():
        assert (fresh(x)[0] - expected).abs().max() == 0
    from nnunet_prune.networks.checkpoints import check_state_dict

    check_state_dict(tiny(2, seed=9), sd, "test", (16, 16))


def test_region_targets_with_an_ignore_channel():
    from nnunet_prune.methods.pspseg import binarised_foreground

    target = torch.zeros(1, 3, 4, 4)  # two regions + nnU-Net's ignore channel last
    target[:, 0, 0, 0] = 1
    target[:, 1, 1, 1] = 1
    target[:, 2, 1, 1] = 1  # ignored
    target[:, 2, 3, 3] = 1
    fg, valid = binarised_foreground(target, ignore_label=3, regions=True)
    assert fg.sum() == 1 and fg[0, 0, 0, 0] == 1 and valid.sum() == 14
    fg, valid = binarised_foreground(target[:, :2], regions=True)
    assert fg.sum() == 2 and valid is None


def test_extra_loss_runs_on_a_recorded_step_and_fresh_starts_restore_masked_branches():
    net = tiny(2).train()
    method = PSPSegMethod(PSPSegSettings())
    graph = build_channel_graph(net)
    method.bind(graph)
    x = torch.randn(2, 1, 16, 16)
    targets = [torch.randint(0, 3, (2, 1, 16, 16)).float(), torch.randint(0, 3, (2, 1, 8, 8)).float()]
    method.epoch_start(0, graph)
    method.batch_start(x, targets)
    net(x)
    loss = method.extra_loss()
    method.step_end()
    assert loss is not None and loss.requires_grad and method._sums[2] == 1
    assert 0 <= method._sums[0] <= 2 and method._sums[1] > 0
    assert net.bottleneck is None and not net.record_features
    loss.backward()
    assert any(p.grad is not None for p in net.encoder.parameters())
    set_branches_active(net, removable_branches(net)[:2], False)
    removal = PSPSegMethod(PSPSegSettings()).start(net, graph)
    assert removal.restore_blocks == removable_branches(net)[:2]


def test_the_training_context_says_who_calibrates_and_what_is_ignored():
    """Everything the method needs from the training comes through the protocol's TrainingContext: a rank other
    than 0 never draws calibration batches (rank 0's decision is used), no calibration source is an error, and the
    ignore label shapes the FD loss."""
    def never():
        raise AssertionError("a rank other than 0 drew calibration batches")

    fd = [1.0, 0.8, 0.8, 0.8, 0.8]
    settings = PSPSegSettings(k=1, patience=2, stop_fraction=1.0, calibration_patches=2)
    method = PSPSegMethod(settings)
    method.attach(TrainingContext(rank=1, world_size=2, is_ddp=True, calibration_batches=never))
    assert run_method(method, tiny(2), fd, 20, never) == []
    calib = lambda: iter([torch.randn(2, 1, 16, 16)] * 2)  # noqa: E731
    assert run_method(PSPSegMethod(settings), tiny(2), fd, 20, calib) == [(3, "mask")]  # rank 0 masks there
    with pytest.raises(RuntimeError, match="calibration batches"):
        PSPSegMethod(settings).least_important_branches(1)

    net = tiny(2).train()
    x = torch.randn(2, 1, 16, 16)
    targets = [torch.randint(0, 3, (2, 1, 16, 16)).float(), torch.randint(0, 3, (2, 1, 8, 8)).float()]

    def fd_loss(context):
        m = PSPSegMethod(PSPSegSettings())
        m.attach(context)
        m.bind(build_channel_graph(net))
        m.batch_start(x, targets)
        torch.manual_seed(0)
        net(x)
        try:
            return float(m.extra_loss())
        finally:
            m.step_end()

    assert fd_loss(TrainingContext()) == fd_loss(TrainingContext(ignore_label=None))
    assert fd_loss(TrainingContext(ignore_label=2)) != fd_loss(TrainingContext())
