"""Remove channels from coupling groups in place: weights, biases, norms, consumers, optimizer state; and the
per-group caps (:func:`caps_from_ratio`) every caller of the surgery uses.

This module also provides :meth:`ChannelGraph.prune <nnunet_prune.surgery.graph.ChannelGraph.prune>` (the graph
module only describes): ``graph.prune(...)`` is :func:`prune_channels` with that graph.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from nnunet_prune.core.conv import in_axis, out_axis
from nnunet_prune.core.optim import optimizers_of
from nnunet_prune.core.stats import count_parameters
from nnunet_prune.surgery.graph import ChannelGraph, ChannelGroup, External
from nnunet_prune.surgery.tensors import set_tensor, sync_attributes

NORM_TENSORS = ("weight", "bias", "running_mean", "running_var")


@dataclass
class PruneResult:
    """What one call of :func:`prune_channels` did."""

    #: group name -> removed channel indices, numbered as before the call
    removed: dict[str, list[int]] = field(default_factory=dict)
    #: group name -> number of requested removals not applied because of ``min_width``
    clipped: dict[str, int] = field(default_factory=dict)
    widths_before: dict[str, int] = field(default_factory=dict)
    widths_after: dict[str, int] = field(default_factory=dict)
    params_before: int = 0
    params_after: int = 0

    @property
    def num_removed(self) -> int:
        """Channels removed in all groups."""
        return sum(len(v) for v in self.removed.values())

    @property
    def changed(self) -> bool:
        """Whether any channel was removed."""
        return self.num_removed > 0

    def summary(self) -> str:
        """One line for the training log: channels removed, parameters before and after, widths per group."""
        parts = [f"{k}: {self.widths_before[k]}->{self.widths_after[k]}" for k in self.removed]
        return (f"removed {self.num_removed} channels in {len(self.removed)} groups "
                f"({self.params_before:,} -> {self.params_after:,} parameters)" + (": " + ", ".join(parts)
                                                                                    if parts else ""))


def plan_keep(graph: ChannelGraph, removal: Mapping, min_width: int = 1, min_keep: Mapping[str, int] | None = None
              ) -> tuple[dict[ChannelGroup, torch.Tensor], dict[str, list[int]], dict[str, int]]:
    """Validate a removal request and turn it into the kept indices of every affected group.

    Indices are taken in the order given; if honouring all of them would leave fewer than ``min_width`` channels
    (or fewer than the group's per-group cap ``min_keep[name]``, see :func:`caps_from_ratio`), the last ones are
    dropped (pass the most removable channels first).

    Raises:
        ValueError: ``min_width`` < 1 or a group given twice.
        IndexError: an index outside the group.
    """
    if min_width < 1:
        raise ValueError("min_width must be at least 1: a group with zero channels would disconnect the network")
    keep, removed, clipped = {}, {}, {}
    for key, indices in removal.items():
        g = graph.resolve(key)
        if g in keep:
            raise ValueError(f"group {g.name} given twice")
        size = g.size
        idx = list(dict.fromkeys(int(i) for i in indices))
        bad = [i for i in idx if not 0 <= i < size]
        if bad:
            raise IndexError(f"group {g.name} has {size} channels; cannot remove {bad[:5]}")
        floor = max(min_width, (min_keep or {}).get(g.name, 0))
        allowed = max(size - floor, 0)
        if len(idx) > allowed:
            clipped[g.name] = len(idx) - allowed
            idx = idx[:allowed]
        if idx:
            mask = torch.ones(size, dtype=torch.bool)
            mask[idx] = False
            keep[g] = mask.nonzero().squeeze(1)
            removed[g.name] = sorted(idx)
    return keep, removed, clipped


def consumer_input_index(graph: ChannelGraph, consumer: nn.Module, keep: Mapping[ChannelGroup, torch.Tensor]
                         ) -> torch.Tensor:
    """Indices of the input channels ``consumer`` keeps, across its whole (concatenated) input."""
    parts, offset = [], 0
    for seg in graph.layouts[consumer]:
        n = seg.channels if isinstance(seg, External) else seg.size
        k = keep.get(seg) if isinstance(seg, ChannelGroup) else None
        parts.append((k if k is not None else torch.arange(n)) + offset)
        offset += n
    return torch.cat(parts)


def index_slicer(shape: torch.Size, dims: Mapping[int, torch.Tensor]):
    """A function that keeps the indices ``dims[d]`` along each dim ``d`` of a tensor of ``shape``.

    A weight sliced along both its output and input dim is gathered in one pass (rows of the (out * in, kernel)
    view): the step is memory-bound, and two successive index_selects read and write most of it twice.
    """
    if set(dims) == {0, 1} and len(shape) > 2:
        rows = (dims[0][:, None] * shape[1] + dims[1][None, :]).reshape(-1)
        new_shape = (len(dims[0]), len(dims[1]), *shape[2:])
        return lambda t: t.reshape(shape[0] * shape[1], -1).index_select(0, rows).view(new_shape)

    def slicer(t: torch.Tensor) -> torch.Tensor:
        for dim, idx in dims.items():
            t = t.index_select(dim, idx)
        return t

    return slicer


def caps_from_ratio(initial_widths: Mapping[str, int], max_ratio: float | Mapping[str, float]) -> dict[str, int]:
    """Per-group caps: the fewest channels each group keeps when at most ``max_ratio`` (a fraction in [0, 1], one
    for all groups or per group name) of its ``initial_widths`` may be removed in all. Groups without a ratio
    are not capped. The result is ``min_keep`` of :func:`prune_channels`.

    Raises:
        ValueError: a ratio outside [0, 1].
    """
    ratios = max_ratio if isinstance(max_ratio, Mapping) else {k: max_ratio for k in initial_widths}
    out = {}
    for name, ratio in ratios.items():
        if not 0 <= float(ratio) <= 1:
            raise ValueError(f"maximum pruning ratio of {name} must be in [0, 1], got {ratio}")
        if name in initial_widths:
            out[name] = max(1, math.ceil(initial_widths[name] * (1 - float(ratio)) - 1e-9))
    return out


def prune_channels(graph: ChannelGraph, removal: Mapping[int | str | ChannelGroup, Sequence[int]],
                   optimizer: torch.optim.Optimizer | Iterable[torch.optim.Optimizer] | None = None,
                   min_width: int = 1, min_keep: Mapping[str, int] | None = None, slicer_factory=None
                   ) -> PruneResult:
    """Remove channels from groups of ``graph`` in place and return what was done.

    ``removal`` maps a group (object, name or index) to the channel indices to remove. Every tensor that carries
    those channels is sliced once: producer weights and biases (transposed convs along dim 1), norm affine
    parameters and running statistics, and the input slice of every consumer at the group's current offset.
    Parameters keep their identity; optimizer state (SGD momentum, Adam moments, any tensor shaped like its
    parameter) is sliced with the same indices so that training continues where it was; gradients are dropped.
    ``slicer_factory(shape, {dim: kept indices})`` makes the slicing function (default :func:`index_slicer`;
    benchmarks swap it). ``min_width`` and the per-group caps ``min_keep`` clip requests (see :func:`plan_keep`).

    Raises:
        ValueError, IndexError: an invalid request (:func:`plan_keep`); nothing is changed then.
    """
    result = PruneResult(widths_before=graph.widths(), params_before=count_parameters(graph.network))
    keep, result.removed, result.clipped = plan_keep(graph, removal, min_width, min_keep)
    if keep:
        device = next(graph.network.parameters()).device
        # indices are built on the host and copied to the device once per group / consumer, not once per tensor
        consumer_index = {c: consumer_input_index(graph, c, keep).to(device)
                          for c in {c for g in keep for c in g.consumers}}
        keep = {g: k.to(device) for g, k in keep.items()}
        specs: dict[tuple[nn.Module, str], dict[int, torch.Tensor]] = defaultdict(dict)
        for g, k in keep.items():
            for p in g.producers:
                specs[(p, "weight")][out_axis(p)] = k
                if p.bias is not None:
                    specs[(p, "bias")][0] = k
            for n in g.norms:
                for t in NORM_TENSORS:
                    if getattr(n, t, None) is not None:
                        specs[(n, t)][0] = k
        for c, index in consumer_index.items():
            specs[(c, "weight")][in_axis(c)] = index

        sliced: dict[nn.Parameter, tuple[torch.Size, object]] = {}
        with torch.no_grad():
            for (module, name), dims in specs.items():
                tensor = getattr(module, name)
                slicer = (slicer_factory or index_slicer)(tensor.shape, dims)
                old = set_tensor(module, name, slicer(tensor))
                if name in module._parameters:
                    sliced[module._parameters[name]] = (old.shape, slicer)
            for opt in optimizers_of(optimizer):
                _slice_optimizer_state(opt, sliced)
        sync_attributes(graph.network)
    result.widths_after = graph.widths()
    result.params_after = count_parameters(graph.network)
    return result


def _slice_optimizer_state(optimizer: torch.optim.Optimizer, sliced: Mapping[nn.Parameter, tuple]) -> None:
    for param, (old_shape, slicer) in sliced.items():
        state = optimizer.state.get(param)
        if not state:
            continue
        for key, value in list(state.items()):
            if torch.is_tensor(value) and value.dim() > 0 and value.shape == old_shape:
                state[key] = slicer(value)


ChannelGraph.prune = prune_channels  # graph.prune(removal, optimizer=, min_width=, min_keep=): see graph.py
