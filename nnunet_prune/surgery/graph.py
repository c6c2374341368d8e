"""The coupling graph's data model: which channels must be removed together.

A *group* is a set of channels that appear, index for index, in several tensors: the output channels of one or
more convolutions (several when a residual addition joins them), the affine parameters and running statistics of
their norms, and an input slice of every convolution that reads them. Removing channel ``i`` of a group removes
it from all of these at once. Consumers record their *input layout*, the ordered list of segments (groups, or
:class:`External` channels) they read, concatenated.

This module only describes. Graphs are built by an architecture's builder (nnU-Net's U-Nets:
:mod:`nnunet_prune.surgery.unet_graph`), found through the registry
(:func:`nnunet_prune.surgery.architectures.build_channel_graph`); :mod:`nnunet_prune.surgery.prune` changes tensors
(and provides :meth:`ChannelGraph.prune`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from nnunet_prune import NnUNetPruneError
from nnunet_prune.core.conv import in_axis, out_axis


class UnsupportedNetworkError(NnUNetPruneError):
    """The network contains a structure the surgery layer cannot slice safely."""


@dataclass(frozen=True)
class External:
    """Input channels that belong to no group (the image channels); never pruned."""

    channels: int


@dataclass(eq=False)
class ChannelGroup:
    """Channels shared, index for index, by the tensors listed here."""

    index: int
    name: str
    #: 'conv' (output of one conv block), 'upsample' (a transposed conv) or 'residual' (joined by additions)
    kind: str
    #: 'encoder', 'bottleneck' or 'decoder'
    part: str
    #: resolution level: 0 is full resolution, len(stages) - 1 the bottleneck
    level: int
    #: convolutions / transposed convolutions whose *output* channels are this group
    producers: list[nn.Module] = field(default_factory=list)
    #: norm layers normalising this group
    norms: list[nn.Module] = field(default_factory=list)
    #: convolutions / transposed convolutions that *read* this group (their layout says where)
    consumers: list[nn.Module] = field(default_factory=list)
    #: modules whose forward output is exactly this group's channels as the consumers see them (after activation)
    outputs: list[nn.Module] = field(default_factory=list)

    @property
    def pre_activation(self) -> list[nn.Module]:
        """Modules whose output is this group's channels before the nonlinearity: the norms, or the producers where
        the network has no norm (a transposed conv's output is its group's, unactivated). A residual group has one
        per summand."""
        return list(self.norms) if self.norms else list(self.producers)

    @property
    def size(self) -> int:
        """Current number of channels of the group."""
        p = self.producers[0]
        return p.weight.shape[out_axis(p)]

    def __repr__(self) -> str:
        return (f"ChannelGroup({self.index}, {self.name!r}, size={self.size}, producers={len(self.producers)}, "
                f"consumers={len(self.consumers)})")


Segment = ChannelGroup | External


class ChannelGraph:
    """All coupling groups of one network, plus the input layout of every consumer."""

    def __init__(self, network: nn.Module, groups: list[ChannelGroup], layouts: dict[nn.Module, list[Segment]],
                 heads: list[nn.Module], producer_levels: dict[nn.Module, int] | None = None):
        self.network = network
        #: resolution level of every producer (a residual group spanning levels has producers at each of them)
        self.producer_levels = producer_levels or {}
        self.groups = groups
        self.layouts = layouts
        #: segmentation heads (1x1 convs producing class logits): consumers only, never pruned
        self.heads = heads
        self._by_name = {g.name: g for g in groups}
        self.module_names = {}
        for name, m in network.named_modules():
            self.module_names.setdefault(m, name)

    def __iter__(self):
        return iter(self.groups)

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, key: int | str) -> ChannelGroup:
        return self._by_name[key] if isinstance(key, str) else self.groups[key]

    def resolve(self, key: int | str | ChannelGroup) -> ChannelGroup:
        """The group for a group object, name or index.

        Raises:
            KeyError: a group of another graph, or an unknown name.
        """
        if isinstance(key, ChannelGroup):
            if key not in self.groups:
                raise KeyError(f"{key!r} belongs to another graph")
            return key
        return self[key]

    def widths(self) -> dict[str, int]:
        """Current width of every group, by name."""
        return {g.name: g.size for g in self.groups}

    def input_offset(self, consumer: nn.Module, group: ChannelGroup) -> int:
        """Where ``group``'s channels start in ``consumer``'s input, with the current widths."""
        offset = 0
        for seg in self.layouts[consumer]:
            if seg is group:
                return offset
            offset += seg.channels if isinstance(seg, External) else seg.size
        raise KeyError(f"{self.module_names.get(consumer)} does not read group {group.name}")

    def coupled_groups(self) -> list[str]:
        """Names of the groups whose channels travel along a shortcut: residual groups (joined by additions) and the
        groups a decoder reads through a skip concatenation (any segment after the first of a concatenated input).
        Removing one of their channels changes several stages at once (the structured-pruning paper caps them)."""
        skip = {seg.name for layout in self.layouts.values() for seg in layout[1:] if isinstance(seg, ChannelGroup)}
        return [g.name for g in self.groups if g.kind == "residual" or g.name in skip]

    #: ``graph.prune(removal, optimizer=None, min_width=1, min_keep=None) -> PruneResult``: remove channels in place,
    #: :func:`nnunet_prune.surgery.prune.prune_channels` with this graph. The module that changes tensors binds it
    #: (this one only describes, and imports none of the surgery).
    prune: ClassVar[Callable[..., Any]]

    def dead_channels(self) -> dict[str, list[int]]:
        """Channels no consumer reads: every consumer's input slice for the channel is all zero, by group name.

        Removing them changes no output (the surgery oracle), so an exporter may always remove them. A filter whose
        own weights are all zero is *not* dead: after its norm it still emits the constant bias beta.
        """
        out = {}
        for g in self.groups:
            alive = torch.zeros(g.size, dtype=torch.bool)
            for c in g.consumers:
                dim = in_axis(c)
                sl = c.weight.detach().narrow(dim, self.input_offset(c, g), g.size).ne(0)
                alive |= sl.transpose(0, dim).reshape(g.size, -1).any(dim=1).cpu()
            dead = (~alive).nonzero().flatten().tolist()
            if dead:
                out[g.name] = dead
        return out
