"""Post-training magnitude pruning (papers/magnitude-pruning-nnunet.txt): zeroing, sparsity accounting by stage,
dead channels, masks, the sweep schedule and compact sparse storage."""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd

from nnunet_prune.core.compact import decode, decode_state_dict, encode, encode_state_dict, is_compact
from nnunet_prune.criteria.magnitude import thresholds
from nnunet_prune.methods.magnitude import (
    PAPER_GRID,
    SweepPoint,
    critical_point,
    first_failure,
    refinement_taus,
    taus_for_sparsities,
)
from nnunet_prune.networks import AdaptivePlainConvUNet
from nnunet_prune.surgery import build_channel_graph
from nnunet_prune.surgery.layout import conv_stages
from nnunet_prune.surgery.layout import stage_labels as stage_order
from nnunet_prune.surgery.masks import hold_masks as reapply_masks
from nnunet_prune.surgery.masks import prunable_convs
from nnunet_prune.surgery.masks import zero_pattern as weight_masks
from nnunet_prune.tools.export.transforms import magnitude_prune as apply_magnitude_pruning
from tests.helpers import as_list, make_network, randomize_norms


def dead_channels(graph):
    return graph.dead_channels()


def stage_of(name: str, n_stages: int) -> str:
    """Reference labels from module names (an independent oracle for the graph-based layout)."""
    import re

    if ".seg_layers." in f".{name}.":
        return "heads"
    m = re.match(r"(?:decoder\.)?encoder\.stages\.(\d+)\.", name)
    if m:
        s = int(m.group(1))
        return "bottleneck" if s == n_stages - 1 else f"enc{s}"
    if name.startswith(("encoder.stem", "decoder.encoder.stem")):
        return "enc0"
    m = re.match(r"decoder\.(?:stages|transpconvs)\.(\d+)", name)
    if m:
        return f"dec{n_stages - 2 - int(m.group(1))}"
    return "other"

ARCHS = ["plain", "resenc"]


def net_for(arch: str, seed: int = 0, **kw) -> nn.Module:
    torch.manual_seed(seed)
    net = make_network(arch, 2, **kw).eval()
    randomize_norms(net, seed)
    return net


def unique_convs(net: nn.Module) -> dict[nn.Module, str]:
    """Every conv / transposed conv, once, by its first name (the encoder is also registered as decoder.encoder)."""
    out = {}
    for name, m in net.named_modules():
        if isinstance(m, _ConvNd):
            out.setdefault(m, name)
    return out


def outputs(net: nn.Module, seed: int = 0) -> list[torch.Tensor]:
    x = torch.randn(2, 2, 16, 16, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return as_list(net(x))


def max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    assert [t.shape for t in a] == [t.shape for t in b]
    return max((x - y).abs().max().item() for x, y in zip(a, b))



pytestmark = pytest.mark.usefixtures("single_thread")

# ----------------------------------------------------------------------------------------------- stage labels
@pytest.mark.parametrize("name, n_stages, expected", [
    ("encoder.stages.0.0.convs.0.conv", 4, "enc0"),
    ("encoder.stages.2.0.convs.0.all_modules.0", 4, "enc2"),
    ("encoder.stages.3.0.convs.1.conv", 4, "bottleneck"),
    ("decoder.encoder.stages.1.0.convs.1.conv", 4, "enc1"),
    ("decoder.encoder.stages.3.0.convs.0.conv", 4, "bottleneck"),
    ("encoder.stem.convs.0.conv", 4, "enc0"),
    ("decoder.encoder.stem.convs.0.conv", 4, "enc0"),
    ("encoder.stages.1.blocks.0.skip.1.conv", 4, "enc1"),
    ("decoder.encoder.stages.2.blocks.1.conv2.conv", 4, "enc2"),
    ("encoder.stages.3.blocks.0.conv1.conv", 4, "bottleneck"),
    ("decoder.stages.0.convs.0.conv", 4, "dec2"),
    ("decoder.stages.2.convs.1.conv", 4, "dec0"),
    ("decoder.transpconvs.0", 4, "dec2"),
    ("decoder.transpconvs.2", 4, "dec0"),
    ("decoder.seg_layers.0", 4, "heads"),
    ("decoder.seg_layers.2", 4, "heads"),
    ("encoder.stages.5.0.convs.0.conv", 6, "bottleneck"),
    ("encoder.stages.4.0.convs.0.conv", 6, "enc4"),
    ("decoder.stages.0.convs.0.conv", 6, "dec4"),
    ("decoder.transpconvs.4", 6, "dec0"),
    ("encoder.stages.10.0.convs.0.conv", 12, "enc10"),
    ("decoder.stages.10.convs.0.conv", 12, "dec0"),
])
def test_stage_of(name, n_stages, expected):
    assert stage_of(name, n_stages) == expected


def test_stage_order_lists_every_stage_in_network_order():
    assert stage_order(4) == ["enc0", "enc1", "enc2", "bottleneck", "dec2", "dec1", "dec0", "heads"]
    assert len(stage_order(6)) == 2 * 5 + 2


@pytest.mark.parametrize("arch", ARCHS)
def test_stage_of_agrees_with_the_channel_graph(arch):
    """Every conv of the real networks gets a known label, and it matches the resolution level the surgery graph
    assigns to the conv's output (an independent walk of the same network)."""
    net = net_for(arch)
    graph = build_channel_graph(net)
    labels = {}
    for m, name in unique_convs(net).items():
        labels[m] = stage_of(name, 4)
        assert labels[m] in stage_order(4), name
    for name, m in net.named_modules(remove_duplicate=False):  # aliases (decoder.encoder, all_modules): same label
        if isinstance(m, _ConvNd):
            assert stage_of(name, 4) == labels[m], name
    for g in graph:
        if g.kind == "residual":
            continue
        expected = "bottleneck" if g.part == "bottleneck" else f"{g.part[:3]}{g.level}"
        for p in g.producers:
            assert labels[p] == expected, graph.module_names[p]
    assert {labels[h] for h in graph.heads} == {"heads"}
    # the layout the package uses (read off the graph) gives every conv the same label as the name-based oracle
    layout = conv_stages(graph)
    assert set(layout) == set(labels)
    assert {m: s.label for m, s in layout.items()} == labels


def test_layout_of_a_six_level_network():
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    net = PlainConvUNet(1, 6, [4, 8, 8, 8, 8, 8], nn.Conv2d, 3, [1, 2, 2, 2, 2, 2], 2, 2, 2, conv_bias=True,
                        norm_op=nn.InstanceNorm2d, norm_op_kwargs={"affine": True}, nonlin=nn.LeakyReLU)
    layout = conv_stages(build_channel_graph(net))
    names = {m: n for n, m in net.named_modules() if isinstance(m, _ConvNd)}
    assert {names[m]: s.label for m, s in layout.items()} == {n: stage_of(n, 6) for n in names.values()}


# ----------------------------------------------------------------------------------------------- zeroing
@pytest.mark.parametrize("arch", ARCHS)
def test_tau_zero_prunes_nothing_and_existing_zeros_are_not_counted(arch):
    net = net_for(arch)
    convs = list(unique_convs(net))
    preset = 0
    with torch.no_grad():
        for m in convs[::3]:
            m.weight.view(-1)[::4] = 0.0
            preset += int((m.weight == 0).sum())
    assert preset > 0
    before = copy.deepcopy(net.state_dict())
    stats = apply_magnitude_pruning(net, 0.0)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert stats.prunable.zero_before == stats.prunable.zero_after == preset
    assert stats.prunable.pruned == 0
    assert stats.sparsity_of_nonzero == 0.0
    assert stats.sparsity_all_parameters == pytest.approx(preset / sum(p.numel() for p in net.parameters()))
    # the same preset zeros with a positive tau: only the new zeros count as pruned
    stats = apply_magnitude_pruning(net, 0.01)
    new = sum(int(((before[n + ".weight"].abs() <= 0.01) & (before[n + ".weight"] != 0)).sum())
              for m, n in unique_convs(net).items())
    assert stats.prunable.zero_before == preset
    assert stats.prunable.pruned == new > 0
    assert stats.sparsity_of_nonzero == pytest.approx(new / (stats.prunable.weights - preset))


@pytest.mark.parametrize("arch", ARCHS)
def test_counts_every_conv_once_and_all_parameters(arch):
    net = net_for(arch)
    stats = apply_magnitude_pruning(net, 0.0)
    convs = unique_convs(net)
    assert stats.prunable.weights == sum(m.weight.numel() for m in convs)
    assert sum(s.weights for s in stats.stages.values()) == stats.prunable.weights
    assert stats.total_parameters == sum(p.numel() for p in net.parameters())
    assert [n for n, _ in prunable_convs(net)] == list(convs.values())


@pytest.mark.parametrize("arch", ARCHS)
def test_sparsity_grows_monotonically_with_tau(arch):
    net = net_for(arch)
    taus = [0.0, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 1.0]
    stats = [apply_magnitude_pruning(copy.deepcopy(net), t) for t in taus]
    sparsities = [s.sparsity_of_nonzero for s in stats]
    assert sparsities[0] == 0.0
    assert all(a < b for a, b in zip(sparsities, sparsities[1:])), sparsities
    assert sparsities[-1] == 1.0  # every |w| <= 1 with this initialisation
    for name in stats[0].stages:
        per_stage = [s.stages[name].sparsity_of_nonzero for s in stats]
        assert all(a <= b for a, b in zip(per_stage, per_stage[1:])), (name, per_stage)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("prune_bias", [False, True])
def test_only_conv_weights_change(arch, prune_bias):
    net = net_for(arch)
    with torch.no_grad():  # some biases small enough to be pruned
        for m in unique_convs(net):
            if m.bias is not None:
                m.bias.view(-1)[::2] *= 1e-3
    before = copy.deepcopy(net.state_dict())
    tau = 0.05
    stats = apply_magnitude_pruning(net, tau, prune_bias=prune_bias)
    conv_names = {n for n in unique_convs(net).values()}
    aliases = {name for name, m in net.named_modules(remove_duplicate=False) if isinstance(m, _ConvNd)}
    changed = {k for k, v in net.state_dict().items() if not torch.equal(before[k], v)}
    weights_changed = {k for k in changed if k.endswith(".weight")}
    biases_changed = {k for k in changed if k.endswith(".bias")}
    assert changed == weights_changed | biases_changed
    assert {k.rsplit(".", 1)[0] for k in weights_changed} <= aliases
    # heads are pruned too
    assert any(k.startswith("decoder.seg_layers.") for k in weights_changed)
    assert stats.stages["heads"].pruned > 0
    # exactly |w| <= tau became zero, everything else is unchanged
    for name in conv_names:
        w0, w1 = before[name + ".weight"], net.state_dict()[name + ".weight"]
        assert torch.equal(w1, torch.where(w0.abs() <= tau, torch.zeros_like(w0), w0))
    if prune_bias:
        assert biases_changed and {k.rsplit(".", 1)[0] for k in biases_changed} <= aliases
        assert stats.biases_pruned == sum(int(((before[n + ".bias"].abs() <= tau) & (before[n + ".bias"] != 0))
                                              .sum()) for n in conv_names if n + ".bias" in before)
        assert stats.biases_pruned > 0
    else:
        assert not biases_changed
        assert stats.biases_pruned == 0


@pytest.mark.parametrize("arch", ARCHS)
def test_every_stage_is_listed_even_without_zeros(arch):
    net = net_for(arch)
    stats = apply_magnitude_pruning(copy.deepcopy(net), 0.0)
    assert list(stats.stages) == stage_order(4)
    assert all(s.weights > 0 and s.zero_after == 0 for s in stats.stages.values())
    # scale the decoder's first stage up so that no weight of it falls below tau
    with torch.no_grad():
        for m, name in unique_convs(net).items():
            if stage_of(name, 4) == "dec2":
                m.weight.mul_(1000).add_(torch.sign(m.weight) * 1.0)
    stats = apply_magnitude_pruning(net, 0.01)
    assert list(stats.stages) == stage_order(4)
    assert stats.stages["dec2"].zero_after == 0 and stats.stages["dec2"].sparsity_of_nonzero == 0.0
    assert stats.stages["enc0"].zero_after > 0
    d = stats.as_dict()
    assert list(d["stages"]) == stage_order(4)
    assert d["stages"]["dec2"]["zero_after"] == 0


def test_negative_tau_rejected():
    from nnunet_prune import NnUNetPruneError

    with pytest.raises(ValueError):
        thresholds(net_for("plain"), -0.1)
    with pytest.raises(NnUNetPruneError, match="tau must be a finite number >= 0"):
        apply_magnitude_pruning(net_for("plain"), -0.1)


@pytest.mark.parametrize("arch", ARCHS)
def test_per_layer_normalised_threshold_is_scale_free(arch):
    net = net_for(arch)
    scaled = copy.deepcopy(net)
    target_name = [n for n in unique_convs(net).values() if ".stages.1." in n][0]
    with torch.no_grad():
        scaled.get_submodule(target_name).weight.mul_(10)

    def zeros(n, tau, normalised):
        apply_magnitude_pruning(n, tau, per_layer_normalised=normalised)
        return int((n.get_submodule(target_name).weight == 0).sum())

    a, b = zeros(copy.deepcopy(net), 0.5, True), zeros(copy.deepcopy(scaled), 0.5, True)
    assert a == b > 0
    # tau is tau x RMS of each tensor
    m = scaled.get_submodule(target_name)
    limits = thresholds(scaled, 0.5, per_layer_normalised=True)
    assert limits[m] == pytest.approx(0.5 * m.weight.detach().square().mean().sqrt().item())
    assert set(thresholds(scaled, 0.5).values()) == {0.5}
    # without normalisation, the scaled layer loses fewer weights
    tau = 0.3 * net.get_submodule(target_name).weight.detach().square().mean().sqrt().item()
    assert zeros(copy.deepcopy(scaled), tau, False) < zeros(copy.deepcopy(net), tau, False)


# ----------------------------------------------------------------------------------------------- dead channels
def zero_input_slices(graph, group, channels, consumers=None) -> None:
    with torch.no_grad():
        for c in consumers if consumers is not None else group.consumers:
            offset = graph.input_offset(c, group)
            dim = 0 if isinstance(c, _ConvTransposeNd) else 1
            for ch in channels:
                c.weight.narrow(dim, offset + ch, 1).zero_()


@pytest.mark.parametrize("arch, group_names", [
    ("plain", ["enc0.conv1", "dec2.conv0", "bottleneck.conv1"]),  # skip + concat, head + transposed conv
    ("resenc", ["res1", "res0", "dec1.conv0"]),  # residual group: projection skip conv among the consumers
])
def test_dead_channels_are_reported_and_removable(arch, group_names):
    net = net_for(arch)
    graph = build_channel_graph(net)
    assert dead_channels(graph) == {}
    expected = {}
    for i, name in enumerate(group_names):
        g = graph[name]
        chans = sorted({1, g.size - 2 - i})
        zero_input_slices(graph, g, chans)
        expected[name] = chans
    assert dead_channels(graph) == expected
    ref = outputs(net)
    result = graph.prune(dead_channels(graph))
    assert result.num_removed == sum(len(v) for v in expected.values())
    assert max_diff(ref, outputs(net)) <= 1e-5
    assert dead_channels(build_channel_graph(net)) == {}


@pytest.mark.parametrize("arch, name", [("plain", "enc1.conv1"), ("resenc", "res1"), ("plain", "dec2.conv0")])
def test_channel_read_by_some_consumers_is_not_dead(arch, name):
    base = net_for(arch)
    n_consumers = len(build_channel_graph(base).resolve(name).consumers)
    assert n_consumers >= 2
    for keep in range(n_consumers):
        graph = build_channel_graph(copy.deepcopy(base))
        g = graph[name]
        zero_input_slices(graph, g, [0], [c for i, c in enumerate(g.consumers) if i != keep])
        assert name not in dead_channels(graph), graph.module_names[g.consumers[keep]]
        zero_input_slices(graph, g, [0], [g.consumers[keep]])
        assert dead_channels(graph) == {name: [0]}


def test_filter_with_zero_own_weights_is_not_dead():
    net = net_for("plain")
    graph = build_channel_graph(net)
    g = graph["enc1.conv0"]
    with torch.no_grad():
        for p in g.producers:
            p.weight[2].zero_()
            if p.bias is not None:
                p.bias[2] = 0
    assert dead_channels(graph) == {}


# ----------------------------------------------------------------------------------------------- masks
@pytest.mark.parametrize("arch", ARCHS)
def test_masks_keep_the_zero_pattern_after_an_optimizer_step(arch):
    net = net_for(arch).train()
    apply_magnitude_pruning(net, 0.02)
    masks = weight_masks(net)
    assert len(masks) == len(unique_convs(net))
    zero_before = {m: (m.weight == 0).clone() for m in masks}
    assert sum(int(z.sum()) for z in zero_before.values()) > 0
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    for _ in range(2):  # gradients given directly: a backward pass would only cost time here
        for p in net.parameters():
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()
    assert any(bool((m.weight[z] != 0).any()) for m, z in zero_before.items())  # the step did revive zeros
    after_step = {m: m.weight.detach().clone() for m in masks}
    reapply_masks(masks)
    for m, z in zero_before.items():
        assert bool((m.weight[z] == 0).all())
        assert torch.equal(m.weight[~z], after_step[m][~z])


# ----------------------------------------------------------------------------------------------- sweep schedule
def pts(*triples) -> list[SweepPoint]:
    return [SweepPoint(t, s, d) for t, s, d in triples]


def test_paper_grid():
    assert PAPER_GRID[0] == 0.0 and PAPER_GRID[-1] == 0.02 and len(PAPER_GRID) == 21
    assert np.allclose(np.diff(PAPER_GRID), 0.001)


def test_critical_point_and_first_failure():
    curve = pts((0.0, 0.0, 1.0), (0.001, 0.2, 0.99), (0.002, 0.4, 0.96), (0.003, 0.6, 0.90), (0.004, 0.8, 0.5))
    assert critical_point(curve).tau == 0.002
    assert critical_point(curve, threshold=0.99).tau == 0.001
    assert critical_point(curve, threshold=0.96).tau == 0.002  # >= threshold counts
    assert critical_point(curve, threshold=0.999999).tau == 0.0
    assert critical_point(curve, threshold=1.1) is None
    assert critical_point([]) is None
    assert first_failure(curve).tau == 0.003
    assert first_failure(list(reversed(curve))).tau == 0.003  # order of evaluation does not matter
    assert first_failure(curve, threshold=0.0) is None


def test_critical_point_non_monotonic_curve():
    # the proxy Dice dips below the threshold and recovers: the largest sparsity that passes wins, not the last
    # point before the first failure
    curve = pts((0.0, 0.0, 1.0), (0.001, 0.3, 0.93), (0.002, 0.5, 0.97), (0.003, 0.7, 0.80), (0.004, 0.6, 0.96),
                (0.005, 0.9, 0.2))
    best = critical_point(curve)
    assert (best.tau, best.sparsity) == (0.004, 0.6)
    assert critical_point(list(reversed(curve))).tau == 0.004
    assert first_failure(curve).tau == 0.001


def test_refinement_taus_bracket_the_crossing():
    curve = pts((0.0, 0.0, 1.0), (0.004, 0.3, 0.97), (0.008, 0.6, 0.90), (0.012, 0.8, 0.5))
    new = refinement_taus(curve)
    assert new == pytest.approx([0.0048, 0.0056, 0.0064, 0.0072])
    assert all(0.004 < t < 0.008 for t in new)
    assert refinement_taus(curve, steps=1) == pytest.approx([0.006])
    # values already evaluated are not returned again
    refined = curve + pts((0.0056, 0.4, 0.96))
    again = refinement_taus(refined)
    assert all(0.0056 < t < 0.008 for t in again) and len(again) == 4
    assert 0.0056 not in refinement_taus(curve + pts((0.0056, 0.4, 0.90)))
    # not bracketed: everything passes, or the first point already fails
    assert refinement_taus(pts((0.0, 0.0, 1.0), (0.01, 0.5, 0.99))) == []
    assert refinement_taus(pts((0.001, 0.1, 0.5), (0.002, 0.2, 0.4))) == []
    assert refinement_taus([]) == []


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_taus_for_sparsities_hit_targets(seed):
    g = torch.Generator().manual_seed(seed)
    weights = [torch.randn(16, 8, 3, 3, generator=g) * s for s in (0.01, 0.1, 1.0)] + [torch.randn(3, 16, 1, 1,
                                                                                                    generator=g)]
    weights[0].view(-1)[::5] = 0.0  # zeros already present: not part of the sparsity
    nonzero = sum(int((w != 0).sum()) for w in weights)
    targets = [0.0, 0.1, 0.25, 0.5, 0.9, 0.99]
    taus = taus_for_sparsities(weights, targets)
    assert taus == sorted(taus)
    for t, tau in zip(targets, taus):
        pruned = sum(int(((w.abs() <= tau) & (w != 0)).sum()) for w in weights)
        assert abs(pruned / nonzero - t) <= 1 / nonzero + 1e-12, (t, tau, pruned / nonzero)
    assert taus[0] == 0.0


def test_taus_for_sparsities_rejects_targets_outside_unit_interval():
    w = [torch.randn(100)]
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError):
            taus_for_sparsities(w, [0.5, bad])


# ----------------------------------------------------------------------------------------------- compact storage
SHAPES = [(5,), (3, 7), (4, 2, 3, 3), (2, 3, 2, 3, 3), (17, 1, 1)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("density", [0.0, 0.3, 1.0])
def test_encode_decode_round_trip(dtype, shape, density):
    g = torch.Generator().manual_seed(len(shape))
    t = torch.randn(shape, generator=g).to(dtype)
    t[torch.rand(shape, generator=g) >= density] = 0
    if density == 1.0:
        t[t == 0] = 1.0
        assert (t != 0).all()
    entry = encode(t)
    assert is_compact(entry)
    assert entry["values"].numel() == int((t != 0).sum())
    assert entry["values"].dtype == dtype
    out = decode(entry)
    assert out.dtype == dtype and out.shape == t.shape
    assert torch.equal(out, t)


def test_encode_does_not_alias_the_source():
    t = torch.tensor([0.0, 1.0, 0.0, 2.0])
    entry = encode(t)
    t[1] = 5.0
    assert torch.equal(decode(entry), torch.tensor([0.0, 1.0, 0.0, 2.0]))
    assert not is_compact(t) and not is_compact({"shape": [1]})


def test_encoded_size_is_smaller_for_sparse_tensor():
    g = torch.Generator().manual_seed(0)
    t = torch.randn(64, 32, 3, 3, generator=g)
    t[torch.rand(t.shape, generator=g) < 0.8] = 0
    entry = encode(t)
    size = entry["mask"].numel() * entry["mask"].element_size() + \
        entry["values"].numel() * entry["values"].element_size()
    dense = t.numel() * t.element_size()
    assert entry["mask"].dtype == torch.uint8 and entry["mask"].numel() == (t.numel() + 7) // 8
    assert size < 0.3 * dense
    buf_dense, buf_compact = io.BytesIO(), io.BytesIO()
    torch.save(t, buf_dense)
    torch.save(entry, buf_compact)
    assert buf_compact.tell() < 0.5 * buf_dense.tell()


def test_encode_state_dict_selects_sparse_floating_tensors():
    g = torch.Generator().manual_seed(1)
    sparse = torch.randn(8, 8, 3, 3, generator=g)
    sparse[sparse.abs() < 1] = 0
    dense = torch.randn(8, 8, 3, 3, generator=g) + 10
    barely = torch.randn(1000, generator=g) + 10
    barely[:50] = 0  # 5 % zeros
    sd = {"sparse": sparse, "dense": dense, "barely": barely, "small": torch.zeros(8),
          "ints": torch.zeros(100, dtype=torch.int64), "count": torch.tensor(3), "half": sparse.half()}
    enc = encode_state_dict(sd)
    assert is_compact(enc["sparse"]) and is_compact(enc["half"])
    assert enc["dense"] is dense and enc["barely"] is barely and enc["ints"] is sd["ints"]
    assert enc["small"] is sd["small"] and enc["count"] is sd["count"]
    assert is_compact(encode_state_dict(sd, min_sparsity=0.05)["barely"])
    dec = decode_state_dict(enc)
    assert dec.keys() == sd.keys()
    assert all(torch.equal(dec[k], sd[k]) and dec[k].dtype == sd[k].dtype for k in sd)
    # loadable without pickled objects
    buf = io.BytesIO()
    torch.save(enc, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    assert all(torch.equal(decode_state_dict(loaded)[k], sd[k]) for k in sd)


@pytest.mark.parametrize("channel_pruned", [False, True])
def test_adaptive_network_loads_compact_state_dict(channel_pruned):
    torch.manual_seed(0)
    net = make_network("plain", 2, "batch", cls=AdaptivePlainConvUNet).eval()
    randomize_norms(net)
    if channel_pruned:
        graph = build_channel_graph(net)
        graph.prune({"enc1.conv0": [0, 3, 5], "dec1.conv1": [1, 2]})
    apply_magnitude_pruning(net, 0.05)
    enc = encode_state_dict(net.state_dict())
    n_compact = sum(is_compact(v) for v in enc.values())
    assert n_compact >= len(unique_convs(net)) - 3  # nearly every conv weight is stored compactly
    buf = io.BytesIO()
    torch.save(enc, buf)
    buf.seek(0)
    enc = torch.load(buf, weights_only=True)

    torch.manual_seed(1)
    fresh = make_network("plain", 2, "batch", cls=AdaptivePlainConvUNet).eval()
    fresh.load_state_dict(enc)
    ref, out = outputs(net), outputs(fresh)
    assert all(torch.equal(a, b) for a, b in zip(ref, out))
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, net.state_dict()[k]), k


def test_extension_tau_continues_the_grid_until_the_proxy_dice_falls():
    from nnunet_prune.methods.magnitude import SweepPoint, extension_tau

    good = [SweepPoint(0.0, 0.0, 1.0), SweepPoint(0.02, 0.5, 0.99)]
    assert extension_tau(good) == 0.03
    assert extension_tau(good + [SweepPoint(0.03, 0.6, 0.90)]) is None  # fell below 0.95: refine instead
    assert extension_tau([SweepPoint(0.0, 0.0, 1.0), SweepPoint(0.5, 0.996, 0.97)]) is None  # nothing left
    assert extension_tau([]) is None


def test_proxy_summary_is_not_dominated_by_a_nearly_absent_class():
    """An undertrained model: class 2 has 3 reference voxels in one case and a few stray ones elsewhere; its
    per-case Dice flips between 0 and 1 and drags the paper's mean down while the pooled summary leaves it out."""
    from nnunet_prune.tools.sweep.magnitude import ProxySummary

    counts = {  # case -> class -> (TP, FP, FN)
        "a": {"1": (980, 10, 10), "2": (0, 2, 3)},
        "b": {"1": (990, 5, 5), "2": (0, 4, 0)},
        "c": {"1": (985, 8, 7), "2": (0, 0, 0)},
    }
    s = ProxySummary.of(counts)
    assert s.reference_voxels == {"1": 2977, "2": 3}
    assert s.small_classes == ["2"]
    assert s.pooled["1"] == pytest.approx(2 * 2955 / (2 * 2955 + 23 + 22))
    assert s.pooled_mean == pytest.approx(s.pooled["1"])  # the tiny class is reported, not summarised
    assert s.paper_mean == pytest.approx((s.paper_per_class["1"] + 0.0) / 2)  # nnU-Net's foreground mean
    assert s.paper_mean < 0.6 < 0.98 < s.pooled_mean
    assert s.value("mean") == s.paper_mean and s.value("pooled") == s.pooled_mean


def test_magnitude_settings_need_a_finite_tau_and_keep_a_variants_tau():
    """What the trainers read before any work (the integration test runs one such case through nnUNetv2_train)."""
    from nnunet_prune import NnUNetPruneError
    from nnunet_prune.methods.magnitude import MagnitudeSettings

    assert MagnitudeSettings.resolve(environ={"NNUNET_PRUNE_MAGNITUDE": "tau=0.01"}).tau == 0.01
    for environ, words in (({}, "tau is required"), ({"NNUNET_PRUNE_MAGNITUDE": "tau=nan"}, "NNUNET_PRUNE_MAGNITUDE"),
                           ({"NNUNET_PRUNE_MAGNITUDE": "tau=-1"}, "finite number >= 0")):
        with pytest.raises(NnUNetPruneError, match=words):
            MagnitudeSettings.resolve(environ=environ)
    with pytest.raises(NnUNetPruneError, match="this trainer variant fixes"):
        MagnitudeSettings.resolve(environ={"NNUNET_PRUNE_MAGNITUDE": "tau=0.01"}, fixed={"tau": 0.005})
