"""STAMP and the LUnet-paper variants without nnU-Net: criterion against a direct computation, selection rules,
schedule, stop rules, targeted dropout, state round trip (LUnet paper §II-B, §III-B, §III-C; METHODS.md)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from nnunet_prune import NnUNetPruneError
from nnunet_prune.criteria.stamp import activation_l2, layer_dropout, normalise_per_layer, rank_weights, width_dropout
from nnunet_prune.methods.base import TrainingProgress
from nnunet_prune.methods.stamp import (
    StampMethod,
    StampRandomInBlockMethod,
    StampSettings,
    StampWidestBlockMethod,
    select_lowest,
)
from nnunet_prune.surgery import build_channel_graph
from nnunet_prune.surgery.removal import Removal, apply_removal
from tests.helpers import make_network, randomize_norms

pytestmark = pytest.mark.usefixtures("single_thread")


def settings(**kw) -> StampSettings:
    return StampSettings.resolve(**kw)


def progress(epoch, num_epochs=10, dice=(), **kw) -> TrainingProgress:
    return TrainingProgress(epoch, num_epochs, [1.0] * (epoch + 1), [1.0] * (epoch + 1), pseudo_dice=list(dice),
                            **kw)


def train_batches(net, n=3, dim=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    net.train()
    batches = [torch.randn((2, 2) + (16,) * dim, generator=g) for _ in range(n)]
    with torch.no_grad():
        for x in batches:
            net(x)
    return batches


def direct_scores(net, batches, post_activation=False) -> dict[str, np.ndarray]:
    """The criterion computed directly: per group, per pre-activation point (norm output, else conv output; or
    the group's output after the nonlinearity), the L2 norm of every channel's map per sample, averaged over samples
    and batches, divided by the layer's L2 norm; max over points."""
    graph = build_channel_graph(net)
    seen: dict[tuple[str, int], list[np.ndarray]] = {}
    hooks = []

    def points(g):
        return g.outputs if post_activation else (g.norms or g.producers)
    for g in graph:
        for j, m in enumerate(points(g)):
            def hook(mod, inp, out, key=(g.name, j)):
                x = out.detach().double().numpy()
                per_sample = np.sqrt((x.reshape(x.shape[0], x.shape[1], -1) ** 2).sum(axis=2))
                seen.setdefault(key, []).append(per_sample.mean(axis=0))
            hooks.append(m.register_forward_hook(hook))
    with torch.no_grad():
        for x in batches:
            net(x)
    for h in hooks:
        h.remove()
    out = {}
    for g in graph:
        per_point = []
        for j in range(len(points(g))):
            mean = np.mean(seen[(g.name, j)], axis=0)
            per_point.append(mean / np.linalg.norm(mean))
        out[g.name] = np.max(per_point, axis=0)
    return out


@pytest.mark.parametrize("arch,dim,post", [("plain", 2, False), ("plain", 3, False), ("resenc", 2, False),
                                           ("plain", 2, True), ("resenc", 2, True)])
def test_activation_l2_ranking_equals_direct_reference(arch, dim, post):
    torch.manual_seed(0)
    net = make_network(arch, dim=dim)
    randomize_norms(net)
    method = StampMethod(settings(post_activation=post))
    assert method.observer.tap.points == ("outputs" if post else "pre_activation")
    graph = build_channel_graph(net)
    method.bind(graph)
    batches = train_batches(net, n=3, dim=dim)
    got = method.observer.scores(graph)
    method.release()
    expected = direct_scores(net, batches, post)
    assert got.keys() == expected.keys() and len(got) == len(graph)
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-5, atol=1e-7)
    assert method.observer.batches() == 3
    # eval passes are not statistics
    net.eval()
    method.bind(graph)
    with torch.no_grad():
        net(batches[0])
    assert method.observer.batches() == 3


def test_pre_activation_l2_after_instance_norm_is_the_affine_parameters_only():
    """Documented property: after an InstanceNorm the pre-activation criterion is sqrt(N (gamma^2 + beta^2))."""
    torch.manual_seed(0)
    net = make_network("plain", norm="instance")
    randomize_norms(net)
    graph = build_channel_graph(net)
    method = StampMethod(settings(post_activation=False))
    method.bind(graph)
    train_batches(net, n=2)
    got = method.observer.scores(graph)
    method.release()
    g = graph["enc1.conv0"]
    norm = g.norms[0]
    expected = normalise_per_layer(np.sqrt(norm.weight.detach().double().numpy() ** 2 +
                                           norm.bias.detach().double().numpy() ** 2))
    np.testing.assert_allclose(got[g.name], expected, rtol=1e-3)


def test_criterion_functions():
    x = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4, 1)
    expected = np.sqrt((x.numpy().reshape(2, 3, -1) ** 2).sum(-1)).mean(0)
    np.testing.assert_allclose(activation_l2(x).numpy(), expected, rtol=1e-6)
    s = normalise_per_layer(np.array([3.0, 4.0]))
    np.testing.assert_allclose(s, [0.6, 0.8])
    assert np.all(normalise_per_layer(np.zeros(3)) == 0)
    w = rank_weights({"a": np.array([0.5, 0.1]), "b": np.array([0.9, 0.2])})
    np.testing.assert_allclose(w["a"], [1 / 3, 1.0])
    np.testing.assert_allclose(w["b"], [0.0, 2 / 3])
    p = layer_dropout(w, 0.05)  # q_a = 2/3, q_b = 1/3
    assert p["a"] == pytest.approx(0.05) and p["b"] == pytest.approx(0.025)
    assert width_dropout({"a": 8, "b": 32}, 0.1) == {"a": pytest.approx(0.025), "b": pytest.approx(0.1)}


def test_dropout_changes_nothing_in_eval_and_drops_channels_in_training():
    torch.manual_seed(0)
    net = make_network("plain", ds=False)
    randomize_norms(net)
    graph = build_channel_graph(net)
    x = torch.randn(2, 2, 16, 16)
    net.eval()
    with torch.no_grad():
        plain = net(x)
    method = StampMethod(settings(p_base=0.5))
    method.bind(graph)
    method.set_dropout(graph, {g.name: 0.5 for g in graph})
    with torch.no_grad():
        assert torch.equal(net(x), plain)  # eval: deterministic, identical
        net.train()
        dropped = []

        def count_zero_channels(mod, inp, out):
            dropped.append(int((out.flatten(2).abs().sum(-1) == 0).sum()))
        h = graph[0].outputs[0].register_forward_hook(count_zero_channels)
        net(x)
        h.remove()
    assert dropped[0] > 0  # half of 2 x 8 channels, in expectation
    method.release()


def make_scored(arch="plain"):
    torch.manual_seed(1)
    net = make_network(arch)
    randomize_norms(net)
    graph = build_channel_graph(net)
    return net, graph


def reference_one_at_a_time(scores_raw: dict[str, np.ndarray], count: int) -> list[tuple[str, int]]:
    """The paper's one-channel steps without training in between: normalise every layer's surviving channels by their
    L2 norm, take the global minimum, repeat."""
    alive = {g: list(range(r.shape[1])) for g, r in scores_raw.items()}
    out = []
    for _ in range(count):
        best = None
        for g, r in scores_raw.items():
            if len(alive[g]) <= 1:
                continue
            sub = r[:, alive[g]]
            norm = (sub / np.linalg.norm(sub, axis=1, keepdims=True)).max(axis=0)
            i = int(np.argmin(norm))
            if best is None or norm[i] < best[0]:
                best = (norm[i], g, alive[g][i])
        out.append((best[1], best[2]))
        alive[best[1]].remove(best[2])
    return out


def test_one_large_step_equals_the_papers_one_channel_steps_and_does_not_collapse_a_layer():
    rng = np.random.default_rng(0)
    raw = {"wide": rng.uniform(0.9, 1.1, (1, 100)), "narrow": rng.uniform(0.9, 1.1, (1, 10)),
           "res": rng.uniform(0.5, 1.5, (2, 20))}
    got = [(g, c) for g, c, _ in select_lowest(raw, 200)]
    assert len(got) == 130 - 3  # every group keeps one channel
    assert got == reference_one_at_a_time(raw, len(got))
    kept = {g: r.shape[1] - sum(1 for h, _ in got[:100] if h == g) for g, r in raw.items()}
    assert min(kept.values()) >= 5  # 30 channels left in all after 100: spread, not one layer emptied
    # with one static ranking the wide layer (all scores ~0.1 against ~0.32) would have lost 99 of its 100 channels


def test_stamp_removes_the_lowest_ranked_and_updates_dropout():
    net, graph = make_scored()
    method = StampMethod(settings(per_step=5, start_fraction=0, max_dice_drop=0))
    method.start(net, graph)
    method.bind(graph)
    train_batches(net)
    expected = reference_one_at_a_time(method.observer.raw(graph), 5)
    removal = method.decide(graph, progress(0))
    assert sorted((g, c) for g, idx in removal.channels.items() for c in idx) == sorted(expected)
    # the driver asks for messages after decide and again after the surgery: each line is handed over once
    lines = method.messages()
    assert [line for line in lines if line.startswith("STAMP step 1: removing 5 channel(s)")] and \
        any(line.startswith("STAMP schedule") for line in lines)
    assert method.messages() == []
    widths = graph.widths()
    result = apply_removal(net, removal, graph=graph)
    graph = build_channel_graph(net)
    method.bind(graph)
    method.after_surgery(result, graph)
    assert sum(graph.widths().values()) == sum(widths.values()) - 5
    # dropout: one probability per group, the largest p_base, sized to the new widths
    p = method.dropout()
    assert max(p.values()) == pytest.approx(0.05) and min(p.values()) >= 0
    assert all(method.masks.dropout[g.name].shape == (g.size,) for g in graph if g.name in method.masks.dropout)
    record = method.record(graph)
    assert record["stamp_step"] == 1 and sum(len(v) for v in record["stamp_removed_scores"].values()) == 5
    assert method.observer.batches() == 0  # statistics start again after a step
    train_batches(net)  # the new shapes run, dropout included
    method.release()


def test_stamp_never_removes_a_groups_last_channel():
    net, graph = make_scored()
    method = StampMethod(settings(per_step=10_000, start_fraction=0, target_channels=0, max_dice_drop=0))
    method.start(net, graph)
    method.bind(graph)
    train_batches(net)
    removal = method.decide(graph, progress(0))
    assert {g: len(v) for g, v in removal.channels.items()} == {g.name: g.size - 1 for g in graph}
    method.release()


def test_random_in_block_takes_the_criterions_groups_and_counts():
    net, graph = make_scored()
    stamp = StampMethod(settings(per_step=7, start_fraction=0))
    stamp.bind(graph)
    train_batches(net)
    scores = stamp.observer.raw(graph)
    expected = stamp.select(graph, scores, 7)
    stamp.release()
    picks = set()
    for seed in range(5):
        method = StampRandomInBlockMethod(settings(per_step=7, start_fraction=0), rng=np.random.default_rng(seed))
        chosen = method.select(graph, scores, 7)
        assert {g: len(v) for g, v in chosen.items()} == {g: len(v) for g, v in expected.items()}
        assert all(len(set(v)) == len(v) and max(v) < graph[g].size for g, v in chosen.items())
        picks.add(tuple(sorted((g, c) for g, v in chosen.items() for c in v)))
    assert len(picks) > 1  # random within the groups


def test_widest_block_removes_from_the_widest_group_only():
    net, graph = make_scored()
    method = StampWidestBlockMethod(settings(per_step=3, start_fraction=0, max_dice_drop=0),
                                    rng=np.random.default_rng(0))
    assert method.observer is None  # no criterion, no statistics
    method.start(net, graph)
    method.bind(graph)
    widths = graph.widths()
    top = max(widths.values())
    widest = {g for g, w in widths.items() if w == top}
    removal = method.decide(graph, progress(0))
    assert sum(len(v) for v in removal.channels.values()) == 3
    assert set(removal.channels) <= widest
    # many channels at once: the widths level out from the top (no group ends narrower than a wider one was cut)
    removal = method.select(graph, {}, 40)
    after = {g: w - len(removal.get(g, [])) for g, w in widths.items()}
    cut_to = min(after[g] for g in removal)
    assert all(after[g] <= cut_to + 1 for g in removal)
    assert all(w <= cut_to + 1 for w in after.values())
    # dropout follows width
    result = apply_removal(net, method.decide(graph, progress(1)), graph=graph)
    graph = build_channel_graph(net)
    method.bind(graph)
    method.after_surgery(result, graph)
    w = graph.widths()
    assert method.dropout() == {g: pytest.approx(0.05 * w[g] / max(w.values()), abs=1e-6) for g in w}
    method.release()


def test_schedule_scales_with_the_budget_and_reaches_the_paper_schedule():
    s = settings()
    assert s.step_epochs(10) == [0, 1, 2, 3, 4]
    assert s.step_epochs(10, final_epochs_without_pruning=6) == [0, 1, 2, 3]
    steps = s.step_epochs(1000)
    assert steps[0] == 99 and steps[-1] == 499 and len(steps) == 401
    assert s.channels_per_step(4000, 4000, 1000) == math.ceil(0.75 * 4000 / 401)
    assert s.channels_per_step(200, 200, 10) == 30
    assert settings(per_step=0.1).channels_per_step(500, 1000, 10) == 50
    assert settings(per_step=3).channels_per_step(500, 1000, 10) == 3
    paper = settings(per_step=1, recovery_epochs=5, start_fraction=0, stop_fraction=1, target_channels=0,
                     max_dice_drop=0)
    # train recovery_epochs, then every step after recovery_epochs more
    assert paper.step_epochs(30) == [4, 9, 14, 19, 24] and paper.channels_per_step(99, 100, 30) == 1
    assert settings().step_epochs(1) == [] and settings().schedule_problems(1)
    assert settings(recovery_epochs=2).step_epochs(10) == [1, 3]


@pytest.mark.parametrize("text,needle", [
    ("per_step=2.5", "per_step"), ("per_step=-1", "per_step"), ("recovery_epochs=0", "recovery_epochs"),
    ("start_fraction=0.6,stop_fraction=0.5", "start_fraction"), ("target_macs=1", "target_macs"),
    ("p_base=1", "p_base"), ("per_step=0,target_channels=0", "automatic"), ("max_dice_drop=-0.1", "max_dice_drop"),
    ("dropout=0.1", "unknown STAMP setting"),
])
def test_invalid_settings_are_one_clear_error(text, needle):
    with pytest.raises(NnUNetPruneError, match=needle):
        StampSettings.resolve(environ={"NNUNET_PRUNE_STAMP": text})


def test_stop_rules():
    net, graph = make_scored()
    total = sum(graph.widths().values())

    def fresh(**kw):
        m = StampMethod(settings(**{"per_step": 4, "start_fraction": 0, "stop_fraction": 1, **kw}))
        m.start(net, graph)
        m.bind(graph)
        train_batches(net, n=1)
        return m

    # the channel target clips the step and then stops pruning
    m = fresh(target_channels=(total - 2) / total + 1e-6)
    assert sum(len(v) for v in m.decide(graph, progress(0)).channels.values()) == 1
    m.release()
    # Dice fell more than max_dice_drop below its best since the first step: stop for good
    m = fresh(max_dice_drop=0.05)
    assert not m.decide(graph, progress(2, dice=[0.5, 0.8, 0.7]))
    assert "max_dice_drop" in m.schedule.stop_reason
    assert not m.decide(graph, progress(3, dice=[0.5, 0.8, 0.7, 0.9]))
    m.release()
    m = fresh(max_dice_drop=0.05)
    assert m.decide(graph, progress(2, dice=[0.5, 0.8, 0.76]))
    m.release()
    # a dip before the first scheduled step (here after epoch 2) does not count
    m = fresh(max_dice_drop=0.05, start_fraction=0.3)
    assert not m.decide(graph, progress(1, dice=[0.5, 0.3]))
    assert m.decide(graph, progress(2, dice=[0.5, 0.3, 0.35]))
    assert m.schedule.stop_reason is None
    m.release()
    m = fresh(target_params=0.5)
    assert not m.decide(graph, progress(1, parameters=49, initial_parameters=100))
    assert "target_params" in m.schedule.stop_reason
    m.release()
    m = fresh(target_macs=0.5)
    assert m.decide(graph, progress(1, macs=60, initial_macs=100))
    m.release()
    # a step not allowed by the driver is no step
    m = fresh()
    assert not m.decide(graph, TrainingProgress(1, 10, [1, 1], [1, 1], pruning_allowed=False))
    m.release()
    # the last scheduled step ends the schedule for this budget only (nothing permanent: --c may extend it)
    m = fresh(stop_fraction=0.3)
    assert m.decide(graph, progress(2, num_epochs=10))
    m.after_surgery(apply_removal(net, Removal(), graph=graph), graph)
    assert m.record(graph)["stamp_stop_reason"] == "the schedule's last step is done"
    assert m.state()["stop_reason"] is None and not m.observer.tap.attached
    m2 = StampMethod(m.settings)
    m2.load_state(m.state())
    m2.bind(graph)
    train_batches(net, n=1)
    assert m2.decide(graph, progress(3, num_epochs=20))  # a longer budget has more steps
    m2.release()


def test_state_round_trip_restores_schedule_and_dropout():
    net, graph = make_scored()
    method = StampMethod(settings(per_step=3, start_fraction=0))
    method.start(net, graph)
    method.bind(graph)
    train_batches(net)
    result = apply_removal(net, method.decide(graph, progress(0)), graph=graph)
    graph = build_channel_graph(net)
    method.bind(graph)
    method.after_surgery(result, graph)
    state = method.state()
    method.release()
    state = json.loads(json.dumps(state))  # as the checkpoint's logger keeps it
    again = StampMethod(settings(per_step=3, start_fraction=0))
    again.load_state(state)
    again.bind(graph)
    assert again.schedule == method.schedule and again.dropout() == method.dropout()
    assert again.schedule.initial_channels == sum(graph.widths().values()) + 3
    again.release()
    # a seed makes the variants' draws reproducible, and --c continues the same random stream
    a = StampWidestBlockMethod(settings(seed=7))
    b = StampWidestBlockMethod(settings(seed=7))
    assert a.select(graph, {}, 5) == b.select(graph, {}, 5)
    c = StampWidestBlockMethod(settings(seed=7))
    c.load_state(json.loads(json.dumps(a.state())))
    assert c.select(graph, {}, 5) == a.select(graph, {}, 5)


def test_adaptive_network_built_at_given_widths_and_bad_widths_are_one_clear_error():
    from nnunet_prune.networks import AdaptivePlainConvUNet

    net = make_network("plain", cls=AdaptivePlainConvUNet)
    widths = build_channel_graph(net).widths()
    small = make_network("plain", cls=lambda *a, **k: AdaptivePlainConvUNet(
        *a, channel_widths={"enc0.conv0": 3, "bottleneck.conv1": 5}, **k))
    got = build_channel_graph(small).widths()
    assert got == {**widths, "enc0.conv0": 3, "bottleneck.conv1": 5}
    small(torch.randn(1, 2, 16, 16))
    with pytest.raises(NnUNetPruneError, match="unknown group"):
        make_network("plain", cls=lambda *a, **k: AdaptivePlainConvUNet(*a, channel_widths={"nope": 3}, **k))
    with pytest.raises(NnUNetPruneError, match="allowed 1..8"):
        make_network("plain", cls=lambda *a, **k: AdaptivePlainConvUNet(*a, channel_widths={"enc0.conv0": 9}, **k))
