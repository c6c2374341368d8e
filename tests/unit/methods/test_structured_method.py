"""Structured filter pruning without nnU-Net: each criterion against a direct computation, the pruned network
against the dense one with the same filters zeroed (oracle), caps on coupled groups, uniform and global
distributions, parameter / MAC targets through the size model, the iterative schedule's steps and budget fitting,
the residual-stream priority, state round trip, sparsity training's loss (structured-pruning paper; Liu et al.
2017)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from nnunet_prune import NnUNetPruneError
from nnunet_prune.core.stats import count_macs, count_parameters
from nnunet_prune.criteria.structured import filter_norms, gamma_l1, slimming_scores
from nnunet_prune.methods.base import TrainingProgress
from nnunet_prune.methods.structured import (
    FilterChooser,
    SlimmingSettings,
    SlimmingSparsityMethod,
    StructuredMethod,
    StructuredSettings,
)
from nnunet_prune.surgery import build_channel_graph
from nnunet_prune.surgery.removal import apply_removal
from nnunet_prune.surgery.size import SizeModel
from tests.helpers import NETWORK_KINDS, as_list, kind_id, make_network, randomize_norms, zeroing_hooks

pytestmark = pytest.mark.usefixtures("single_thread")
PATCH = (32, 32)


def settings(**kw) -> StructuredSettings:
    return StructuredSettings.resolve(**kw)


def progress(epoch=0, num_epochs=10, **kw) -> TrainingProgress:
    return TrainingProgress(epoch, num_epochs, [1.0] * (epoch + 1), [1.0] * (epoch + 1), patch_size=PATCH, **kw)


def network(arch="plain", seed=0):
    torch.manual_seed(seed)
    net = make_network(arch)
    randomize_norms(net, seed)
    return net.eval()


# ------------------------------------------------------------------------------------------------ criteria
@pytest.mark.parametrize("arch", ["plain", "resenc"])
def test_criteria_equal_a_direct_computation(arch):
    graph = build_channel_graph(network(arch))
    for g in graph:
        rows = []
        for m in g.producers:
            w = m.weight.detach().double()
            w = w.transpose(0, 1) if isinstance(m, torch.nn.modules.conv._ConvTransposeNd) else w
            rows.append(w.reshape(w.shape[0], -1))
        cat = torch.cat(rows, dim=1)  # the group's filters concatenated over its producers
        np.testing.assert_allclose(filter_norms(g, 1), cat.abs().sum(1).numpy(), rtol=1e-12)
        np.testing.assert_allclose(filter_norms(g, 2), cat.norm(dim=1).numpy(), rtol=1e-12)
        if g.norms:
            expected = torch.stack([n.weight.detach().double().abs() for n in g.norms]).max(0).values
            np.testing.assert_allclose(slimming_scores(g), expected.numpy())
    norms = [n for g in graph for n in g.norms]
    assert gamma_l1(norms).item() == pytest.approx(sum(n.weight.abs().sum().item() for n in norms), rel=1e-6)


def test_slimming_without_affine_norms_is_refused():
    net = make_network("plain")
    for m in net.modules():
        if isinstance(m, torch.nn.InstanceNorm2d):
            m.weight = None
    graph = build_channel_graph(net)
    with pytest.raises(ValueError, match="affine"):
        slimming_scores(graph[0])
    problems = StructuredMethod(settings(criterion="slimming")).network_problems(net, graph, PATCH)
    assert problems and "affine" in problems[0]
    assert "affine" in SlimmingSparsityMethod(SlimmingSettings.resolve()).network_problems(net, graph, PATCH)[0]
    ok = network()  # transposed convolutions have no norm: fine, the others are ranked
    assert not SlimmingSparsityMethod(SlimmingSettings.resolve()).network_problems(ok, build_channel_graph(ok), PATCH)


# ------------------------------------------------------------------------------------------------ oracle
@pytest.mark.parametrize("kind", [k for k in NETWORK_KINDS if k[3] and k[4]], ids=kind_id)
@pytest.mark.parametrize("criterion", ["l1", "l2", "slimming"])
def test_pruned_equals_dense_with_those_filters_zeroed(kind, criterion):
    arch, dim, norm, bias, ds = kind
    torch.manual_seed(1)
    net = make_network(arch, dim, norm, bias, ds)
    randomize_norms(net, 1)
    net.eval()
    x = torch.randn((2, 2) + (16,) * dim)
    graph = build_channel_graph(net)
    method = StructuredMethod(settings(criterion=criterion, schedule="oneshot", pruning_ratio=0.6))
    removal = method.start(net, graph, TrainingProgress(0, 0, [], [], patch_size=(16,) * dim))
    assert removal.channels
    handles = zeroing_hooks(graph, removal.channels)
    with torch.no_grad():
        reference = [o.clone() for o in as_list(net(x))]
    for h in handles:
        h.remove()
    apply_removal(net, removal, graph=graph)
    with torch.no_grad():
        pruned = as_list(net(x))
    for a, b in zip(reference, pruned):
        assert (a - b).abs().max().item() <= 1e-5


# ------------------------------------------------------------------------------------------------ choosing
@pytest.mark.parametrize("arch", ["plain", "resenc"])
@pytest.mark.parametrize("distribution", ["global", "uniform"])
def test_caps_hold_for_every_coupled_group(arch, distribution):
    net = network(arch)
    graph = build_channel_graph(net)
    s = settings(pruning_ratio=0.75, max_ratio=0.95, max_ratio_coupled=0.5, distribution=distribution,
                 schedule="oneshot")
    initial = graph.widths()
    method = StructuredMethod(s)
    assert not method.network_problems(net, graph, PATCH)
    apply_removal(net, method.start(net, graph, progress()), graph=graph)
    widths = graph.widths()
    for name in graph.coupled_groups():
        assert widths[name] >= math.ceil(initial[name] * 0.5 - 1e-9), name
    for name, w in widths.items():
        assert w >= max(1, math.ceil(initial[name] * 0.05 - 1e-9))
    assert sum(widths.values()) <= math.ceil(0.25 * sum(initial.values()))


def test_unreachable_target_names_the_caps():
    net = network()
    graph = build_channel_graph(net)
    problems = StructuredMethod(settings(pruning_ratio=0.9, max_ratio=0.5)).network_problems(net, graph, PATCH)
    assert len(problems) == 1 and "unreachable" in problems[0] and "max_ratio" in problems[0]
    for bad in ("pruning_ratio=1", "pruning_ratio=0", "pruning_ratio=-0.2", "step=0", "criterion=l3",
                "ratio_of=flops", "max_ratio=0"):
        with pytest.raises(NnUNetPruneError, match="NNUNET_PRUNE_STRUCTURED"):
            StructuredSettings.resolve(environ={"NNUNET_PRUNE_STRUCTURED": bad})
    # a variant's name fixes criterion and schedule (the trainers pass these as fixed values)
    from nnunet_prune.nnunet.trainers.structured import nnUNetTrainerStructuredL1_oneshot as variant

    with pytest.raises(NnUNetPruneError, match="this trainer variant fixes"):
        StructuredSettings.resolve(environ={"NNUNET_PRUNE_STRUCTURED": "criterion=l2"}, fixed=variant.method_defaults)
    assert StructuredSettings.resolve(fixed=variant.method_defaults).schedule == "oneshot"


def test_uniform_keeps_the_same_fraction_of_every_group():
    graph = build_channel_graph(network())
    s = settings(distribution="uniform", max_ratio=1.0, max_ratio_coupled=1.0)
    plan = FilterChooser(graph, s, graph.widths()).keeping(sum(graph.widths().values()) // 2)
    for name, w in graph.widths().items():
        assert abs(plan.widths[name] / w - 0.5) <= 1 / w + 1e-9, name
    # within a group the lowest-scored filters go
    g = graph["enc1.conv1"]
    scores = filter_norms(g, 2)
    removed = plan.channels[g.name]
    assert max(scores[removed]) <= min(np.delete(scores, removed))


def test_global_ranking_is_normalised_per_group():
    """A group whose weights are all 100x larger is not spared by a global ranking: scores are normalised."""
    net = network()
    graph = build_channel_graph(net)
    with torch.no_grad():
        graph["enc1.conv1"].producers[0].weight.mul_(100)
    plan = FilterChooser(graph, settings(max_ratio=1.0, max_ratio_coupled=1.0), graph.widths()).keeping(
        sum(graph.widths().values()) // 2)
    assert plan.channels.get("enc1.conv1"), "a scaled group must still lose channels"


@pytest.mark.parametrize("unit", ["params", "macs"])
@pytest.mark.parametrize("distribution", ["global", "uniform"])
def test_parameter_and_mac_targets_are_met_exactly_by_the_size_model(unit, distribution):
    net = network()
    graph = build_channel_graph(net)
    before = count_parameters(net) if unit == "params" else count_macs(net, PATCH)
    method = StructuredMethod(settings(pruning_ratio=0.7, ratio_of=unit, distribution=distribution,
                                       schedule="oneshot"))
    apply_removal(net, method.start(net, graph, progress()), graph=graph)
    after = count_parameters(net) if unit == "params" else count_macs(net, PATCH)
    assert after <= 0.3 * before
    size = SizeModel(graph, PATCH)
    assert (size.parameters if unit == "params" else size.macs)(graph.widths()) == after
    assert after >= 0.2 * before  # not far beyond: the fewest filters that meet the target


@pytest.mark.parametrize("kind", NETWORK_KINDS, ids=kind_id)
def test_size_model_counts_like_the_counters(kind):
    arch, dim, norm, bias, ds = kind
    net = make_network(arch, dim, norm, bias, ds)
    graph = build_channel_graph(net)
    patch = (32,) * dim
    size = SizeModel(graph, patch)
    rng = np.random.default_rng(0)
    graph.prune({k: rng.choice(v, size=v // 2, replace=False).tolist() for k, v in graph.widths().items()})
    assert size.parameters(graph.widths()) == count_parameters(net)
    assert size.macs(graph.widths()) == count_macs(net, patch)


def test_residual_stream_is_pruned_after_the_block_convolutions():
    """residual_last: the convolutions inside residual blocks go first; the residual streams, the decoder and the
    upsampling groups only once those are at their caps."""
    net = network("resenc")
    graph = build_channel_graph(net)
    inner = [g.name for g in graph if g.kind == "conv" and g.part != "decoder"]
    later = [g.name for g in graph if g.name not in inner]
    assert any(graph[n].kind == "residual" for n in later) and any(n.startswith("dec") for n in later)
    s = settings(max_ratio=0.9, max_ratio_coupled=0.9)
    chooser = FilterChooser(graph, s, graph.widths())
    inner_room = sum(graph.widths()[n] - chooser.floor[n] for n in inner)
    plan = chooser.keeping(sum(graph.widths().values()) - inner_room)
    assert not any(plan.channels.get(n) for n in later)
    assert all(plan.widths[n] == chooser.floor[n] for n in inner)
    plan = chooser.keeping(sum(graph.widths().values()) - inner_room - 3)
    assert sum(len(plan.channels.get(n, [])) for n in later) == 3
    off = FilterChooser(graph, settings(residual_last=False), graph.widths()).keeping(
        sum(graph.widths().values()) // 2)
    assert any(off.channels.get(n) for n in later if graph[n].kind == "residual")


def test_a_coupled_cap_is_never_looser_than_the_others():
    graph = build_channel_graph(network())
    chooser = FilterChooser(graph, settings(max_ratio=0.5, max_ratio_coupled=0.8), graph.widths())
    for name in graph.coupled_groups():
        assert chooser.floor[name] == math.ceil(graph.widths()[name] * 0.5)


def test_records_show_the_start_step_once_and_nothing_after_the_schedule():
    net = network()
    graph = build_channel_graph(net)
    method = StructuredMethod(settings(pruning_ratio=0.5, step=0.2, stop_fraction=1))
    removal = method.start(net, graph, progress(num_epochs=4))
    apply_removal(net, removal, graph=graph)
    removed = [sum(len(v) for v in removal.channels.values())]  # the start's step
    records = []
    for epoch in range(4):
        removal = method.decide(graph, progress(epoch, 4, pruning_allowed=epoch < 3))
        apply_removal(net, removal, graph=graph)
        removed.append(sum(len(v) for v in removal.channels.values()))
        records.append(sum(map(len, method.record(graph)["structured_removed_scores"].values())))
    # epoch 0's record holds the start's step and epoch 0's; the last epoch (no surgery) holds nothing
    assert records == [removed[0] + removed[1], removed[2], removed[3], 0] and removed[0] > 0


def test_resuming_with_a_shorter_budget_warns_about_the_steps_it_drops():
    net = network()
    graph = build_channel_graph(net)
    method = StructuredMethod(settings(pruning_ratio=0.75))
    apply_removal(net, method.start(net, graph, progress(num_epochs=100)), graph=graph)
    resumed = StructuredMethod(settings(pruning_ratio=0.75))
    resumed.load_state(json.loads(json.dumps(method.state())))
    resumed.bind(graph)
    resumed.decide(graph, progress(0, 10))
    assert any("will not run" in line for line in resumed.messages())


# ------------------------------------------------------------------------------------------------ schedule
def test_iterative_reaches_the_target_in_the_expected_steps():
    """5 % of the remaining filters per step: ceil(log(0.25) / log(0.95)) = 28 steps to remove 75 %, one fewer for
    240 filters (round(240 x 0.95^27) = 60 is the target already); with a budget of 100 epochs they fall at the start
    and after evenly spaced epochs of the first half; the last lands on the target."""
    net = network()
    graph = build_channel_graph(net)
    total = sum(graph.widths().values())
    s = settings(pruning_ratio=0.75, max_ratio=1.0, max_ratio_coupled=1.0)
    assert s.steps_for_filters() == 28
    method = StructuredMethod(s)
    removal = method.start(net, graph, progress(num_epochs=100))
    epochs = method.schedule.step_epochs
    assert total == 240 and len(epochs) == 27 and epochs[0] == -1 and len(set(epochs)) == 27 and max(epochs) < 50
    totals = []
    apply_removal(net, removal, graph=graph)
    totals.append(sum(graph.widths().values()))
    for epoch in range(100):
        removal = method.decide(graph, progress(epoch, 100))
        if removal:
            apply_removal(net, removal, graph=graph)
            totals.append(sum(graph.widths().values()))
    assert len(totals) == 27 and method.schedule.steps_done == 27 and method.schedule.reached
    assert totals[0] == round(total * 0.95)
    assert totals[-1] == math.ceil(0.25 * total)
    assert all(a > b for a, b in zip(totals, totals[1:]))


def test_a_short_budget_groups_the_steps_and_still_fine_tunes():
    """6 epochs, 45 steps for 90 %: 4 pruning points (the start, after epochs 0-2), the target reached after epoch 2,
    three epochs of fine-tuning left; a warning says steps were grouped."""
    s = settings(pruning_ratio=0.9, max_ratio=1.0, max_ratio_coupled=1.0)
    assert s.steps_for_filters() == 45
    epochs = StructuredMethod.slot_epochs(45, 6, 0.5, 1)
    assert sorted(set(epochs)) == [-1, 0, 1, 2] and len(epochs) == 45
    net = network()
    graph = build_channel_graph(net)
    method = StructuredMethod(s)
    apply_removal(net, method.start(net, graph, progress(num_epochs=6)), graph=graph)
    assert method.schedule_problems(6, 1)
    for epoch in range(6):
        apply_removal(net, method.decide(graph, progress(epoch, 6)), graph=graph)
        if epoch == 2:
            assert method.schedule.reached
    assert sum(graph.widths().values()) == math.ceil(0.1 * sum(method.schedule.initial_widths.values()))
    assert StructuredMethod.slot_epochs(1, 6, 0.5, 1) == [-1]
    assert StructuredMethod.slot_epochs(3, 0, 0.5, 1) == [-1, -1, -1]  # prune and save: all at the start


def test_state_round_trip_continues_the_schedule():
    net = network()
    graph = build_channel_graph(net)
    method = StructuredMethod(settings(pruning_ratio=0.5, ratio_of="params"))
    apply_removal(net, method.start(net, graph, progress(num_epochs=40)), graph=graph)
    for epoch in range(5):
        apply_removal(net, method.decide(graph, progress(epoch, 40)), graph=graph)
    state = json.loads(json.dumps(method.state()))
    resumed = StructuredMethod(settings(pruning_ratio=0.5, ratio_of="params"))
    resumed.load_state(state)
    resumed.bind(graph)
    for epoch in range(5, 40):
        a, b = method.decide(graph, progress(epoch, 40)), resumed.decide(graph, progress(epoch, 40))
        assert a.channels == b.channels
        apply_removal(net, a, graph=graph)
    assert resumed.schedule.reached and count_parameters(net) <= 0.5 * method.schedule.initial_parameters


# ------------------------------------------------------------------------------------------------ sparsity training
def test_slimming_loss_is_lambda_times_sum_of_gammas():
    net = network()
    graph = build_channel_graph(net)
    method = SlimmingSparsityMethod(SlimmingSettings.resolve(environ={"NNUNET_PRUNE_SLIMMING": "lambda=0.001"}))
    method.bind(graph)
    expected = 0.001 * sum(n.weight.abs().sum().item() for g in graph for n in g.norms)
    loss = method.extra_loss()
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    gamma = graph[0].norms[0].weight
    assert torch.allclose(gamma.grad, 0.001 * gamma.detach().sign())
    assert SlimmingSparsityMethod(SlimmingSettings.resolve(fixed={"lambda": 0})).extra_loss() is None
    scalars = method.scalars(graph)
    assert scalars["slimming_gamma_l1"] == pytest.approx(expected / 0.001, rel=1e-4)
