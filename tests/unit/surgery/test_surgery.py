"""Channel surgery: the numerical oracle (pruned == dense with the channels zeroed), optimizer state, bookkeeping."""

from __future__ import annotations

import copy
import random

import pytest
import torch
from torch import nn

from nnunet_prune.networks import AdaptivePlainConvUNet, AdaptiveResidualEncoderUNet
from nnunet_prune.surgery import External, UnsupportedNetworkError, build_channel_graph
from nnunet_prune.surgery.prune import consumer_input_index, plan_keep
from tests.helpers import NETWORK_KINDS, as_list, kind_id, make_network, randomize_norms, zeroing_hooks

TOL = 1e-5


def random_removal(graph, rnd: random.Random, fraction: float = 0.5) -> dict[int, list[int]]:
    chosen = rnd.sample(range(len(graph)), k=max(1, int(len(graph) * fraction)))
    return {i: rnd.sample(range(graph[i].size), k=rnd.randint(1, graph[i].size - 1)) for i in chosen}


def oracle_diff(net: nn.Module, removal, dim: int, seed: int = 0) -> float:
    """max |pruned(x) - dense_with_zeroed_channels(x)| over all outputs (deep supervision included)."""
    pruned = copy.deepcopy(net)
    dense_graph, pruned_graph = build_channel_graph(net), build_channel_graph(pruned)
    handles = zeroing_hooks(dense_graph, removal)
    x = torch.randn(2, 2, *([16] * dim), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ref = as_list(net(x))
        result = pruned_graph.prune(removal)
        out = as_list(pruned(x))
    for h in handles:
        h.remove()
    assert result.num_removed == sum(len(v) for v in removal.values())
    assert [o.shape for o in out] == [r.shape for r in ref]
    return max((a - b).abs().max().item() for a, b in zip(ref, out))


@pytest.mark.parametrize("kind", NETWORK_KINDS, ids=kind_id)
@pytest.mark.parametrize("seed", [0, 1])
def test_oracle_random_groups(kind, seed):
    arch, dim, norm, bias, ds = kind
    torch.manual_seed(seed)
    net = make_network(arch, dim, norm, bias, ds).eval()
    randomize_norms(net, seed)
    removal = random_removal(build_channel_graph(net), random.Random(seed))
    assert oracle_diff(net, removal, dim, seed) <= TOL


@pytest.mark.parametrize("arch", ["plain", "resenc", "resenc_bottleneck"])
def test_oracle_every_group_down_to_one_channel(arch):
    net = make_network(arch, 2, "batch", True, True).eval()
    randomize_norms(net)
    graph = build_channel_graph(net)
    widths = graph.widths()
    removal = {g.index: list(range(1, g.size)) for g in graph}
    assert oracle_diff(net, removal, 2) <= TOL
    assert build_channel_graph(net).widths() == widths  # oracle_diff prunes a copy


def test_repeated_pruning_matches_cumulative_zeroing():
    """Three successive prunes (indices renumbered each time) equal zeroing the union at once."""
    torch.manual_seed(0)
    net = make_network("resenc", 2, "instance", True, False).eval()
    randomize_norms(net)
    pruned = copy.deepcopy(net)
    graph, pgraph = build_channel_graph(net), build_channel_graph(pruned)
    rnd = random.Random(3)
    removed_original: dict[int, set[int]] = {}
    alive = {g.index: list(range(g.size)) for g in graph}  # original index of each current channel
    for _ in range(3):
        step = {}
        for i in rnd.sample(range(len(pgraph)), k=5):
            if pgraph[i].size > 1:
                cur = rnd.sample(range(pgraph[i].size), k=1)
                step[i] = cur
                removed_original.setdefault(i, set()).update(alive[i][c] for c in cur)
                alive[i] = [a for j, a in enumerate(alive[i]) if j not in cur]
        pgraph.prune(step)
    handles = zeroing_hooks(graph, {i: sorted(s) for i, s in removed_original.items()})
    x = torch.randn(1, 2, 16, 16)
    with torch.no_grad():
        diff = (net(x) - pruned(x)).abs().max().item()
    for h in handles:
        h.remove()
    assert diff <= TOL


def test_groups_of_plain_unet():
    graph = build_channel_graph(make_network("plain", 2))
    names = [g.name for g in graph]
    assert names[:5] == ["enc0.conv0", "enc0.conv1", "enc1.conv0", "enc1.conv1", "enc2.conv0"]
    assert {"bottleneck.conv0", "bottleneck.conv1", "up2", "dec2.conv0", "up0", "dec0.conv1"} <= set(names)
    assert all(g.kind != "residual" for g in graph)
    # the decoder's first conv reads cat((upsampled, skip)): the skip group sits behind the upsampled channels
    dec = graph["dec1.conv0"].producers[0]
    assert [s.name for s in graph.layouts[dec]] == ["up1", "enc1.conv1"]
    assert graph.input_offset(dec, graph["enc1.conv1"]) == graph["up1"].size
    # the skip group feeds the next encoder stage and the decoder
    assert len(graph["enc1.conv1"].consumers) == 2
    # every segmentation head (deep supervision or not) is a consumer, never a producer
    heads = list(graph.network.decoder.seg_layers)
    assert graph.heads == heads
    assert not any(h in g.producers for g in graph for h in heads)
    assert isinstance(graph.layouts[graph["enc0.conv0"].producers[0]][0], External)


def test_groups_of_residual_encoder():
    graph = build_channel_graph(make_network("resenc", 3))
    by_name = {g.name: g for g in graph}
    # stem + stage 0 (identity skips) form one group; the strided, equal-width bottleneck block has a pooling-only
    # skip, so stage 2 and the bottleneck share their channels
    assert "res0" in by_name and "res2-3" in by_name and "res1" in by_name
    assert by_name["res2-3"].part == "bottleneck"
    # res1: block0 conv2, its 1x1 projection, block1 conv2
    assert len(by_name["res1"].producers) == 3
    assert len(by_name["res1"].norms) == 3


def test_min_width_and_bad_requests():
    graph = build_channel_graph(make_network("plain", 2))
    g = graph["enc0.conv0"]
    keep, removed, clipped = plan_keep(graph, {g.name: list(range(g.size))}, min_width=2)
    assert len(keep[g]) == 2 and clipped == {g.name: 2}
    assert removed[g.name] == list(range(g.size - 2))
    result = graph.prune({g.name: [7, 6, 5, 4, 3, 2, 1, 0]})
    assert g.size == 1 and result.clipped == {"enc0.conv0": 1}
    assert graph.widths()["enc0.conv0"] == 1
    with pytest.raises(IndexError):
        graph.prune({"enc1.conv0": [99]})
    with pytest.raises(ValueError):
        graph.prune({"enc1.conv0": [0]}, min_width=0)
    with pytest.raises(KeyError):
        graph.prune({"no.such.group": [0]})
    assert not graph.prune({}).changed


def test_bookkeeping_attributes_follow_tensors():
    net = make_network("resenc", 2, ds=True)
    graph = build_channel_graph(net)
    graph.prune({g.index: [0, 1] for g in graph})
    for m in net.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            w = m.weight.shape
            if isinstance(m, nn.modules.conv._ConvTransposeNd):
                assert (m.in_channels, m.out_channels) == (w[0], w[1])
            else:
                assert (m.out_channels, m.in_channels) == (w[0], w[1])
        if isinstance(m, nn.modules.batchnorm._NormBase):
            assert m.num_features == m.weight.shape[0]
    assert net.encoder.output_channels == [graph["res0"].size, graph["res1"].size, graph["res2-3"].size,
                                           graph["res2-3"].size]
    assert net.compute_conv_feature_map_size((16, 16)) > 0


def test_consumer_index_covers_concatenation():
    graph = build_channel_graph(make_network("plain", 2))
    dec = graph["dec0.conv0"].producers[0]
    up, skip = graph["up0"], graph["enc0.conv1"]
    keep = {up: torch.tensor([0, 2]), skip: torch.tensor([1])}
    assert consumer_input_index(graph, dec, keep).tolist() == [0, 2, up.size + 1]


@pytest.mark.parametrize("opt_cls", [torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW])
def test_optimizer_state_is_sliced_not_reset(opt_cls):
    torch.manual_seed(0)
    net = make_network("plain", 2, ds=False)
    kwargs = {"lr": 1e-2, "momentum": 0.99, "nesterov": True} if opt_cls is torch.optim.SGD else {"lr": 1e-3}
    opt = opt_cls(net.parameters(), **kwargs)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 1 - e / 10)
    x = torch.randn(2, 2, 16, 16)
    for _ in range(2):
        opt.zero_grad()
        net(x).square().mean().backward()
        opt.step()
        sched.step()
    graph = build_channel_graph(net)
    group = graph["enc1.conv0"]
    conv, norm = group.producers[0], group.norms[0]
    consumer = group.consumers[0]
    before = {k: v.clone() for k, v in opt.state[conv.weight].items() if torch.is_tensor(v) and v.dim() > 0}
    before_norm = {k: v.clone() for k, v in opt.state[norm.weight].items() if torch.is_tensor(v) and v.dim() > 0}
    before_in = {k: v.clone() for k, v in opt.state[consumer.weight].items() if torch.is_tensor(v) and v.dim() > 0}
    params_before = [id(p) for g in opt.param_groups for p in g["params"]]
    lr_before = opt.param_groups[0]["lr"]

    graph.prune({group: [0, 3]}, optimizer=opt)

    keep = [i for i in range(len(before_norm[next(iter(before_norm))])) if i not in (0, 3)]
    for k, v in before.items():
        assert torch.equal(opt.state[conv.weight][k], v[keep])
    for k, v in before_norm.items():
        assert torch.equal(opt.state[norm.weight][k], v[keep])
    for k, v in before_in.items():
        assert torch.equal(opt.state[consumer.weight][k], v[:, keep])
    assert [id(p) for g in opt.param_groups for p in g["params"]] == params_before
    assert conv.weight.grad is None
    assert opt.param_groups[0]["lr"] == lr_before
    opt.zero_grad()
    net(x).square().mean().backward()  # training continues with the sliced state
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] < lr_before


@pytest.mark.parametrize("arch,cls", [("plain", AdaptivePlainConvUNet), ("resenc", AdaptiveResidualEncoderUNet)])
def test_adaptive_network_loads_pruned_and_dense_weights(arch, cls):
    torch.manual_seed(0)
    pruned = make_network(arch, 2, "batch").eval()
    randomize_norms(pruned)
    dense_sd = copy.deepcopy(pruned.state_dict())
    graph = build_channel_graph(pruned)
    graph.prune(random_removal(graph, random.Random(0), fraction=0.7))
    target = make_network(arch, 2, "batch", cls=cls).eval()
    target.load_state_dict(pruned.state_dict())  # strict, with different widths
    x = torch.randn(1, 2, 16, 16)
    with torch.no_grad():
        for a, b in zip(as_list(pruned(x)), as_list(target(x))):
            assert torch.equal(a, b)
    # and back to full width: folds of different widths load into the same network one after the other
    target.load_state_dict(dense_sd)
    stock = make_network(arch, 2, "batch").eval()
    stock.load_state_dict(dense_sd)
    with torch.no_grad():
        for a, b in zip(as_list(stock(x)), as_list(target(x))):
            assert torch.equal(a, b)
    assert target.encoder.output_channels == stock.encoder.output_channels


def test_adaptive_resize_keeps_parameter_identity():
    net = make_network("plain", 2, cls=AdaptivePlainConvUNet)
    ids = [id(p) for p in net.parameters()]
    other = make_network("plain", 2)
    build_channel_graph(other).prune({0: [0, 1, 2]})
    net.load_state_dict(other.state_dict())
    assert [id(p) for p in net.parameters()] == ids


def test_surgery_under_torch_compile_recompiles_boundedly():
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    counter = CompileCounter()
    net = make_network("plain", 2, ds=False).eval()
    compiled = torch.compile(net, backend=counter)
    x = torch.randn(1, 2, 16, 16)
    with torch.no_grad():
        compiled(x)
        graph = build_channel_graph(compiled)
        for _ in range(3):
            graph.prune({g.index: [0] for g in graph if g.size > 2})
            assert torch.allclose(compiled(x), net(x))
    assert counter.frame_count <= 1 + 3  # one compilation per surgery at most


def test_unsupported_networks_get_a_clear_error():
    with pytest.raises(UnsupportedNetworkError, match="PlainConvUNet"):
        build_channel_graph(nn.Sequential(nn.Conv2d(1, 2, 3)))
    net = make_network("plain", 2)
    net.encoder.stages[1][0].convs[0].conv = nn.Conv2d(8, 16, 3, groups=2)
    with pytest.raises(UnsupportedNetworkError, match="grouped"):
        build_channel_graph(net)
