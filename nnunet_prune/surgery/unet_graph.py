"""The coupling graph of nnU-Net's U-Nets (dynamic_network_architectures' ``PlainConvUNet`` and
``ResidualEncoderUNet``, 2D/3D, any norm, with or without bias, deep supervision on or off): the ``build_graph`` of
their :mod:`~nnunet_prune.surgery.architectures` entries.

The graph is built by walking the module structure (not the state dict: these networks register every module under
several names) with union-find: every convolution output starts a group and every residual addition merges the
groups of its two summands, so identity skips, pooling-only skips (strided blocks whose width does not change) and
1x1 projections all come out right. Consumers record their *input layout*, the ordered list of groups they read: a
decoder convolution reads ``cat((upsampled, skip))``, so the skip group sits at an offset that depends on the current
upsampled width. What a group is: :mod:`nnunet_prune.surgery.graph`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dynamic_network_architectures.building_blocks.residual import BasicBlockD, BottleneckD, StackedResidualBlocks
from dynamic_network_architectures.building_blocks.simple_conv_blocks import ConvDropoutNormReLU, StackedConvBlocks
from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.modules.conv import _ConvNd

from nnunet_prune.core.stats import unwrap
from nnunet_prune.surgery.graph import ChannelGraph, ChannelGroup, External, UnsupportedNetworkError


class _UnionFind:
    def __init__(self):
        self.parent: list[int] = []

    def add(self) -> int:
        self.parent.append(len(self.parent))
        return len(self.parent) - 1

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)
        return min(ra, rb)


@dataclass
class _Proto:
    kind: str
    level: int
    label: str
    producers: list = field(default_factory=list)
    norms: list = field(default_factory=list)
    outputs: list = field(default_factory=list)


class _Builder:
    """Symbolic walk over the network: 'tensors' are group ids (or External)."""

    def __init__(self):
        self.uf = _UnionFind()
        self.protos: list[_Proto] = []
        self.layouts: dict[nn.Module, list] = {}
        self.heads: list[nn.Module] = []
        self.producer_levels: dict[nn.Module, int] = {}

    def new(self, kind: str, level: int, label: str, producer: nn.Module, norm: nn.Module | None,
            output: nn.Module | None) -> int:
        gid = self.uf.add()
        self.producer_levels[producer] = level
        self.protos.append(_Proto(kind, level, label, [producer], [norm] if norm is not None else [],
                                  [output] if output is not None else []))
        return gid

    def consume(self, module: nn.Module, inputs: list) -> None:
        _check_conv(module)
        self.layouts[module] = list(inputs)

    def conv_block(self, block: ConvDropoutNormReLU, inputs: list, level: int, label: str, output=True) -> int:
        """A conv (+ dropout, norm, nonlin) reading ``inputs`` (concatenated); returns its output group."""
        if not isinstance(block, ConvDropoutNormReLU):
            raise UnsupportedNetworkError(f"expected ConvDropoutNormReLU, found {type(block).__name__}")
        self.consume(block.conv, inputs)
        norm = getattr(block, "norm", None)
        _check_norm(norm)
        return self.new("conv", level, label, block.conv, norm, block if output else None)

    def join(self, a: int, b) -> int:
        if isinstance(b, External):
            raise UnsupportedNetworkError("a residual addition onto the raw image input is not supported")
        return self.uf.union(a, b)

    def residual_block(self, block: nn.Module, x, level: int, label: str) -> int:
        if getattr(block, "apply_se", False):
            raise UnsupportedNetworkError(f"{label}: squeeze-excitation blocks are not supported")
        if isinstance(block, BasicBlockD):
            h = self.conv_block(block.conv1, [x], level, f"{label}.conv1")
            out = self.conv_block(block.conv2, [h], level, f"{label}.conv2", output=False)
        elif isinstance(block, BottleneckD):
            h = self.conv_block(block.conv1, [x], level, f"{label}.conv1")
            h = self.conv_block(block.conv2, [h], level, f"{label}.conv2")
            out = self.conv_block(block.conv3, [h], level, f"{label}.conv3", output=False)
        else:
            raise UnsupportedNetworkError(f"{label}: unsupported residual block {type(block).__name__}")
        projections = [m for m in block.skip.modules() if isinstance(m, ConvDropoutNormReLU)] \
            if isinstance(block.skip, nn.Module) else []
        if projections:
            p = self.conv_block(projections[-1], [x], level, f"{label}.skip", output=False)
            out = self.join(out, p)
        else:  # identity or pooling only: the block's input and output channels are the same channels
            out = self.join(out, x)
        self.protos[out].outputs.append(block)  # proto of the current root keeps the outputs (merged later)
        return out

    def finish(self, network: nn.Module, n_levels: int) -> ChannelGraph:
        merged: dict[int, _Proto] = {}
        order: list[int] = []
        for gid, proto in enumerate(self.protos):
            root = self.uf.find(gid)
            if root not in merged:
                merged[root] = _Proto(proto.kind, proto.level, proto.label)
                order.append(root)
            m = merged[root]
            m.producers += proto.producers
            m.norms += proto.norms
            m.outputs += proto.outputs
            if root != gid or len(m.producers) > len(proto.producers):
                m.kind = "residual"
        groups: dict[int, ChannelGroup] = {}
        for i, root in enumerate(order):
            m = merged[root]
            levels = sorted({self.protos[g].level for g in range(len(self.protos)) if self.uf.find(g) == root})
            if m.kind == "residual":
                name = f"res{levels[0]}" if len(levels) == 1 else f"res{levels[0]}-{levels[-1]}"
            else:
                name = m.label
            level = levels[-1]
            part = "decoder" if name.startswith(("dec", "up")) else ("bottleneck" if level == n_levels - 1
                                                                     else "encoder")
            groups[root] = ChannelGroup(i, name, m.kind, part, level, m.producers, m.norms, [], m.outputs)
        layouts = {}
        for module, segs in self.layouts.items():
            resolved = [s if isinstance(s, External) else groups[self.uf.find(s)] for s in segs]
            layouts[module] = resolved
            for s in resolved:
                if isinstance(s, ChannelGroup) and module not in s.consumers:
                    s.consumers.append(module)
        return ChannelGraph(network, list(groups.values()), layouts, self.heads, self.producer_levels)


def _check_conv(module: nn.Module) -> None:
    if not isinstance(module, _ConvNd):
        raise UnsupportedNetworkError(f"expected a convolution, found {type(module).__name__}")
    if module.groups != 1:
        raise UnsupportedNetworkError("grouped convolutions are not supported")


def _check_norm(norm: nn.Module | None) -> None:
    if norm is None or isinstance(norm, _NormBase):  # BatchNorm*, InstanceNorm*, SyncBatchNorm
        return
    raise UnsupportedNetworkError(f"norm layer {type(norm).__name__} cannot be sliced per channel "
                                  f"(supported: BatchNorm, InstanceNorm)")


def _encoder_stage_blocks(stage: nn.Module) -> list[nn.Module]:
    """The conv blocks / residual blocks of one encoder stage, skipping pooling layers."""
    blocks = []
    for m in stage.children() if isinstance(stage, nn.Sequential) else [stage]:
        if isinstance(m, StackedConvBlocks):
            blocks += list(m.convs)
        elif isinstance(m, StackedResidualBlocks):
            blocks += list(m.blocks)
        elif isinstance(m, (nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd)):
            continue
        else:
            raise UnsupportedNetworkError(f"unsupported encoder stage content {type(m).__name__}")
    return blocks


def build_unet_graph(network: nn.Module) -> ChannelGraph:
    """Coupling groups of an nnU-Net ``PlainConvUNet`` or ``ResidualEncoderUNet`` (2D/3D, any norm, bias or not,
    deep supervision on or off).

    Raises:
        UnsupportedNetworkError: not such a U-Net, or a structure it contains cannot be sliced safely.
    """
    net = unwrap(network)
    encoder, decoder = getattr(net, "encoder", None), getattr(net, "decoder", None)
    if encoder is None or decoder is None or not hasattr(decoder, "transpconvs"):
        raise UnsupportedNetworkError(
            f"{type(net).__name__} is not an nnU-Net U-Net (PlainConvUNet / ResidualEncoderUNet with a UNetDecoder);"
            f" channel surgery supports those two architectures.")
    b = _Builder()
    first = next(m for m in net.modules() if isinstance(m, _ConvNd))
    x = External(first.in_channels)
    n_levels = len(encoder.stages)

    stem = getattr(encoder, "stem", None)
    if stem is not None:
        for i, block in enumerate(stem.convs):
            x = b.conv_block(block, [x], 0, f"enc0.stem{i}")
    skips = []
    for level, stage in enumerate(encoder.stages):
        prefix = "bottleneck" if level == n_levels - 1 else f"enc{level}"
        for i, block in enumerate(_encoder_stage_blocks(stage)):
            if isinstance(block, ConvDropoutNormReLU):
                x = b.conv_block(block, [x], level, f"{prefix}.conv{i}")
            else:
                x = b.residual_block(block, x, level, f"{prefix}.block{i}")
        skips.append(x)

    lres = skips[-1]
    for s, (up, stage) in enumerate(zip(decoder.transpconvs, decoder.stages)):
        level = n_levels - 2 - s
        b.consume(up, [lres])
        u = b.new("upsample", level, f"up{level}", up, None, up)
        x = None
        for i, block in enumerate(stage.convs):
            # the first conv reads torch.cat((upsampled, skip)): the skip sits behind the upsampled channels
            x = b.conv_block(block, [u, skips[level]] if i == 0 else [x], level, f"dec{level}.conv{i}")
        lres = x
        head = decoder.seg_layers[s]
        b.consume(head, [x])
        b.heads.append(head)
    return b.finish(net, n_levels)
