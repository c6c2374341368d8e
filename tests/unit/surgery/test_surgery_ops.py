"""Surgery operations methods build on: block removal (oracle: the block replaced by the identity), loading
checkpoints with fewer / more blocks, per-group caps, activation taps and statistics windows across a surgery,
channel masks and dropout, the architecture registry, and one-call application of a Removal."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from nnunet_prune.networks import AdaptivePlainConvUNet, AdaptiveResidualEncoderUNet
from nnunet_prune.surgery import (
    Removal,
    UnsupportedNetworkError,
    apply_removal,
    architectures,
    build_channel_graph,
    caps_from_ratio,
)
from nnunet_prune.surgery.blocks import removable_blocks, remove_blocks
from nnunet_prune.surgery.taps import ActivationTap, ChannelMasks, ChannelStatistics
from tests.helpers import as_list, make_network, randomize_norms

pytestmark = pytest.mark.usefixtures("single_thread")


def _outputs(net, x):
    net.eval()
    with torch.no_grad():
        return as_list(net(x))


def _max_diff(a, b) -> float:
    return max(float((u - v).abs().max()) for u, v in zip(a, b))


def _module(net, path):
    m = net
    for part in path.split("."):
        m = m[int(part)] if part.isdigit() else getattr(m, part)
    return m


@pytest.mark.parametrize("arch", ["plain", "resenc", "resenc_bottleneck"])
@pytest.mark.parametrize("dim", [2, 3])
def test_removed_blocks_equal_identity_blocks(arch, dim):
    """Oracle: the network without the blocks == the dense network with those blocks' forward replaced by x -> x
    (max abs diff <= 1e-5, every deep-supervision head)."""
    torch.manual_seed(0)
    net = make_network(arch, dim=dim, norm="batch")
    randomize_norms(net)
    paths = removable_blocks(net)
    assert paths, arch
    x = torch.randn(2, 2, *([16] * dim))
    dense = copy.deepcopy(net)
    hooks = [_module(dense, p).register_forward_hook(lambda m, i, o: i[0]) for p in paths]
    expected = _outputs(dense, x)
    for h in hooks:
        h.remove()
    result = remove_blocks(net, paths)
    assert result.removed == paths and result.params_after < result.params_before
    assert _max_diff(_outputs(net, x), expected) <= 1e-5
    assert removable_blocks(net) == [] or set(removable_blocks(net)).isdisjoint(paths) or arch == "plain"
    build_channel_graph(net)  # the graph of the shallower network builds


def test_block_removal_drops_parameters_from_the_optimizer_and_training_goes_on():
    torch.manual_seed(0)
    net = make_network("resenc")
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(2, 2, 16, 16)
    as_list(net(x))[0].sum().backward()
    opt.step()
    path = removable_blocks(net)[0]
    gone = {id(p) for p in _module(net, path).parameters()}
    remove_blocks(net, [path], opt)
    kept = [p for g in opt.param_groups for p in g["params"]]
    assert not gone & {id(p) for p in kept} and not gone & {id(p) for p in opt.state}
    assert {id(p) for p in net.parameters()} == {id(p) for p in kept}
    opt.zero_grad()
    as_list(net(x))[0].sum().backward()
    opt.step()


def test_non_removable_blocks_are_refused_and_nothing_changes():
    net = make_network("resenc")
    before = copy.deepcopy(net.state_dict())
    with pytest.raises(UnsupportedNetworkError, match="not removable"):
        remove_blocks(net, ["encoder.stages.1.blocks.0"])  # the first block changes width and stride
    assert net.state_dict().keys() == before.keys()


@pytest.mark.parametrize("arch,cls", [("plain", AdaptivePlainConvUNet), ("resenc", AdaptiveResidualEncoderUNet)])
def test_adaptive_network_loads_checkpoints_with_fewer_blocks(arch, cls):
    """A fold whose blocks were removed (and channels pruned) loads into the plans' full-depth adaptive network and
    computes what it computed; then a dense fold loads into the same object again (more blocks than it has)."""
    torch.manual_seed(0)
    pruned = make_network(arch, cls=cls)
    dense_state = copy.deepcopy(pruned.state_dict())
    remove_blocks(pruned, removable_blocks(pruned))
    graph = build_channel_graph(pruned)
    graph.prune({graph[0].name: [0, 1]})
    x = torch.randn(1, 2, 16, 16)
    fresh = make_network(arch, cls=cls)
    fresh.load_state_dict(pruned.state_dict())
    assert _max_diff(_outputs(fresh, x), _outputs(pruned, x)) == 0
    fresh.load_state_dict(dense_state)
    reference = make_network(arch, cls=cls)
    reference.load_state_dict(dense_state)
    assert _max_diff(_outputs(fresh, x), _outputs(reference, x)) == 0


def test_caps_limit_what_a_group_loses_in_all():
    net = make_network("plain")
    graph = build_channel_graph(net)
    initial = graph.widths()
    caps = caps_from_ratio(initial, 0.5)
    name = graph[0].name  # 8 channels: at most 4 may go
    first = graph.prune({name: [0, 1, 2]}, min_keep=caps)
    assert first.removed[name] == [0, 1, 2] and not first.clipped
    second = graph.prune({name: [0, 1, 2]}, min_keep=caps)
    assert second.removed[name] == [0] and second.clipped == {name: 2} and graph[name].size == 4
    assert caps_from_ratio({"a": 10}, {"a": 0.25}) == {"a": 8}
    assert caps_from_ratio({"a": 3}, 1.0) == {"a": 1}  # a group never goes below one channel
    with pytest.raises(ValueError):
        caps_from_ratio(initial, 1.5)


def test_tap_and_statistics_window_span_a_surgery():
    torch.manual_seed(0)
    net = make_network("plain")
    graph = build_channel_graph(net)
    stats = ChannelStatistics()
    seen = []

    def callback(group, point, output):
        seen.append(group.name)
        stats.add(group.name, point, output.detach().abs().mean(dim=(0, 2, 3)))

    tap = ActivationTap(callback).attach(graph)
    x = torch.randn(2, 2, 16, 16)
    net.train()
    net(x)
    name = graph[1].name
    before = stats.mean(name, 0).clone()
    net.eval()
    net(x)  # eval: not observed
    assert stats.batches[(name, 0)] == 1 and len(seen) == sum(len(g.outputs) for g in graph)
    result = graph.prune({name: [0, 3]})
    stats.reindex(result.removed)
    keep = [i for i in range(len(before)) if i not in (0, 3)]
    assert torch.equal(stats.mean(name, 0), before[keep])
    tap.attach(graph)
    net.train()
    net(x)
    assert stats.batches[(name, 0)] == 2 and stats.mean(name, 0).shape == (len(keep),)
    tap.detach()
    net(x)
    assert stats.batches[(name, 0)] == 2


def test_channel_masks_zero_channels_like_pruning_and_dropout_only_in_training():
    torch.manual_seed(0)
    net = make_network("plain", norm="batch")
    randomize_norms(net)
    graph = build_channel_graph(net)
    name = graph[2].name
    x = torch.randn(2, 2, 16, 16)
    masks = ChannelMasks()
    mask = torch.ones(graph[name].size)
    mask[[1, 4]] = 0
    masks.masks[name] = mask
    masks.attach(graph)
    masked = _outputs(net, x)
    masks.detach()
    pruned = copy.deepcopy(net)
    pg = build_channel_graph(pruned)
    pg.prune({name: [1, 4]})
    assert _max_diff(masked, _outputs(pruned, x)) <= 1e-5
    # dropout: eval output untouched; in training probability 1 zeroes the channel, 0 keeps it
    drop = ChannelMasks()
    drop.dropout[name] = torch.zeros(graph[name].size)
    drop.dropout[name][2] = 1.0
    drop.attach(graph)
    seen = {}
    h = graph[name].outputs[0].register_forward_hook(lambda m, i, o: seen.setdefault("out", o))
    # the dropout hook was registered first, so this one sees its result
    net.train()
    net(x)
    out = seen["out"].detach()
    assert float(out[:, 2].abs().max()) == 0 and float(out[:, 3].abs().max()) > 0
    h.remove()
    drop.reindex({name: [0]})
    assert float(drop.dropout[name][1]) == 1.0 and drop.dropout[name].shape[0] == graph[name].size - 1


def test_registry_finds_architectures_by_plans_name_and_by_network():
    plain = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
    assert architectures.for_class_name(plain).adaptive_class == "nnunet_prune.networks.AdaptivePlainConvUNet"
    assert architectures.for_class_name("nnunet_prune.networks.AdaptivePlainConvUNet").stock_class == plain
    assert architectures.of(make_network("resenc")).stock_class.endswith("ResidualEncoderUNet")
    assert architectures.of(make_network("plain", cls=AdaptivePlainConvUNet)).stock_class == plain
    with pytest.raises(UnsupportedNetworkError, match="supported: .*PlainConvUNet"):
        architectures.for_class_name("torch.nn.Conv2d")


def test_a_new_architecture_registers_without_touching_anything_else():
    """A network class of its own, with its own graph builder: build_channel_graph and therefore every tool that
    uses the graph find it through the registry."""

    class TwoConvs(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 2, 1)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)))

    from nnunet_prune.surgery.graph import ChannelGraph, ChannelGroup, External

    def graph_of(net):
        g = ChannelGroup(0, "a", "conv", "encoder", 0, [net.a], [], [net.b], [net.a])
        return ChannelGraph(net, [g], {net.a: [External(1)], net.b: [g]}, [net.b])

    name = f"{TwoConvs.__module__}.{TwoConvs.__qualname__}"
    entry = architectures.register(architectures.Architecture(name, name, graph_of))
    try:
        net = TwoConvs()
        graph = build_channel_graph(net)
        assert graph.widths() == {"a": 4}
        result = apply_removal(net, Removal(channels={"a": [1]}))
        assert net.a.out_channels == 3 and net.b.in_channels == 3 and result.structure_changed
    finally:
        architectures.ARCHITECTURES.remove(entry)


def test_the_registry_is_the_only_door():
    """A network shaped exactly like a registered U-Net but of an unregistered class is refused by every surgery entry
    point (no duck-typed fallback: a new architecture works fully or not at all), before anything changes; a subclass
    of a registered class is found through its bases."""

    class LookAlike(nn.Module):  # the U-Net's modules under the same names, not a PlainConvUNet
        def __init__(self, unet: nn.Module):
            super().__init__()
            self.encoder, self.decoder = unet.encoder, unet.decoder

        def forward(self, x):
            return self.decoder(self.encoder(x))

    unet = make_network("plain")
    net = LookAlike(unet)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    block = removable_blocks(net)[0]  # the block mechanics themselves would work on it
    conv = unet.encoder.stages[0][0].convs[0].conv
    graph = architectures.of(unet).build_graph(unet)  # a graph obtained elsewhere does not open the door either
    for call in (lambda: build_channel_graph(net), lambda: apply_removal(net, Removal(channels={"enc1.conv0": [0]})),
                 lambda: apply_removal(net, Removal(blocks=[block])),
                 lambda: apply_removal(net, Removal(mask_blocks=[block])),
                 lambda: apply_removal(net, Removal(weights={conv: torch.zeros_like(conv.weight, dtype=torch.bool)},
                                                    blocks=[block]), graph=graph)):
        with pytest.raises(UnsupportedNetworkError, match=r"LookAlike is not a supported architecture .*register\("):
            call()
    after = net.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())

    class Subclass(AdaptiveResidualEncoderUNet):
        pass

    sub = make_network("resenc", cls=Subclass)
    assert build_channel_graph(sub).widths() == build_channel_graph(make_network("resenc")).widths()
    assert apply_removal(sub, Removal(blocks=[removable_blocks(sub)[0]])).blocks.changed


def test_apply_removal_does_masks_channels_and_blocks_in_one_call():
    torch.manual_seed(0)
    net = make_network("resenc")
    graph = build_channel_graph(net)
    conv = net.encoder.stages[0].blocks[0].conv1.conv
    mask = torch.ones_like(conv.weight, dtype=torch.bool)
    mask[0] = False
    removal = Removal(channels={graph[1].name: [0]}, weights={conv: mask}, blocks=[removable_blocks(net)[0]],
                      tau=0.1)
    result = apply_removal(net, removal, graph=graph)
    assert result.sparsity.tau == 0.1 and result.sparsity.prunable.pruned >= mask[0].numel() - 1
    assert result.channels.removed == {graph[1].name: [0]} and result.blocks.removed == removal.blocks
    assert result.structure_changed and not Removal()
