"""Activation taps and channel masks at the output points of coupling groups.

* :class:`ActivationTap` -- forward hooks on every output point of every group (the feature maps exactly as the
  consumers see them, after the activation); a callback per training forward pass. Rebound after every surgery.
* :class:`ChannelStatistics` -- per-channel statistics summed over a window of batches, keyed by (group, output
  point); re-indexed after a surgery so that a window may span it.
* :class:`ChannelMasks` -- multiply a group's output channels by a fixed mask and/or drop them at random with
  per-channel probabilities in training (targeted channel dropout). Re-indexed after a surgery.
* :class:`ModuleInputTap` -- forward pre-hooks on named modules (e.g. PSP-Seg's Parallel Redundant Modules, which
  belong to no coupling group): a callback with each module's input, in training and eval mode alike.

Mechanics only: which statistic, which mask and which probabilities are the methods' decisions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial

import torch
from torch import nn

from nnunet_prune.surgery.graph import ChannelGraph, ChannelGroup

#: callback(group, output point index, feature map (B, C, *spatial))
TapCallback = Callable[[ChannelGroup, int, torch.Tensor], None]


class _Hooks:
    """The hook handles a tap registered: removed together."""

    _hooks: list

    def detach(self) -> None:
        """Remove every hook."""
        for h in self._hooks:
            h.remove()
        self._hooks = []

    @property
    def attached(self) -> bool:
        """Whether hooks are registered."""
        return bool(self._hooks)


class ActivationTap(_Hooks):
    """Forward hooks on the output points of a channel graph's groups.

    The callback sees every training-mode forward output (B, C, *spatial) of every hooked point; outputs in eval
    mode and on the meta device (shape inference) are skipped. ``groups`` limits the hooked groups (names).
    ``points`` chooses where: ``"outputs"`` (the group's channels as its consumers read them, after the activation)
    or ``"pre_activation"`` (:attr:`~nnunet_prune.surgery.graph.ChannelGroup.pre_activation`: the norms' outputs,
    or the producers' outputs where there is no norm).
    """

    def __init__(self, callback: TapCallback, groups: set[str] | None = None, points: str = "outputs"):
        if points not in ("outputs", "pre_activation"):
            raise ValueError(f"points must be 'outputs' or 'pre_activation', got {points!r}")
        self.callback = callback
        self.groups = groups
        self.points = points
        self._hooks: list = []

    def attach(self, graph: ChannelGraph) -> ActivationTap:
        """Hook ``graph``'s output points (earlier hooks are removed first); call again after every surgery."""
        self.detach()
        self._hooks = [m.register_forward_hook(partial(self._observe, g, j))
                       for g in graph if self.groups is None or g.name in self.groups
                       for j, m in enumerate(getattr(g, self.points))]
        return self

    def _observe(self, group: ChannelGroup, point: int, module: nn.Module, inputs, output) -> None:
        if not module.training or output.device.type == "meta":
            return
        self.callback(group, point, output)


#: callback(module path, module, the module's first input (B, C, *spatial))
InputCallback = Callable[[str, nn.Module, torch.Tensor], None]


class ModuleInputTap(_Hooks):
    """Forward pre-hooks on named modules: the callback sees each module's first positional input before every
    forward, in training and eval mode (a calibration pass runs in eval mode). The inputs are not changed."""

    def __init__(self, callback: InputCallback):
        self.callback = callback
        self._hooks: list = []

    def attach(self, modules: Mapping[str, nn.Module]) -> ModuleInputTap:
        """Hook ``modules`` ({path: module}, hooked in this order; earlier hooks are removed first)."""
        self.detach()
        self._hooks = [m.register_forward_pre_hook(partial(self._observe, path)) for path, m in modules.items()]
        return self

    def _observe(self, path: str, module: nn.Module, args) -> None:
        self.callback(path, module, args[0])


class ChannelStatistics:
    """Per-channel statistics (C,) summed over batches, per (group name, output point), with batch counts.

    :meth:`reindex` keeps the surviving channels after a surgery, so a window of batches may span one.
    """

    def __init__(self):
        self.sums: dict[tuple[str, int], torch.Tensor] = {}
        self.batches: dict[tuple[str, int], int] = {}

    def add(self, group: str, point: int, values: torch.Tensor) -> None:
        """Add one batch's (C,) statistic of a group's output point."""
        key = (group, point)
        self.sums[key] = self.sums[key] + values if key in self.sums else values
        self.batches[key] = self.batches.get(key, 0) + 1

    def mean(self, group: str, point: int) -> torch.Tensor | None:
        """(C,) mean over the batches added since the last :meth:`reset` (None if none)."""
        key = (group, point)
        return self.sums[key] / self.batches[key] if key in self.sums else None

    def reset(self) -> None:
        """Forget every statistic (a new window)."""
        self.sums, self.batches = {}, {}

    def reindex(self, removed: Mapping[str, list[int]]) -> None:
        """Drop the statistics of removed channels (``removed``: group name -> indices numbered before the
        surgery, e.g. :attr:`~nnunet_prune.surgery.prune.PruneResult.removed`)."""
        for (group, point), value in list(self.sums.items()):
            if removed.get(group):
                self.sums[(group, point)] = value[_kept(value.shape[0], removed[group], value.device)]


class ChannelMasks:
    """Fixed masks and random channel dropout at group outputs (forward hooks; the tensors are not changed).

    A fixed mask (C,) multiplies the output in training and eval; dropout probabilities (C,) zero each channel of
    each sample independently in training only, scaled by 1 / (1 - p) when ``rescale`` (inverted dropout) so the
    expected output is unchanged.
    """

    def __init__(self, rescale: bool = False):
        self.rescale = rescale
        self.masks: dict[str, torch.Tensor] = {}
        self.dropout: dict[str, torch.Tensor] = {}
        self._hooks: list = []

    def attach(self, graph: ChannelGraph) -> ChannelMasks:
        """Hook the output points of every group that has a mask or dropout; call again after every surgery."""
        self.detach()
        for g in graph:
            if g.name in self.masks or g.name in self.dropout:
                self._hooks += [m.register_forward_hook(partial(self._apply, g.name)) for m in g.outputs]
        return self

    def detach(self) -> None:
        """Remove every hook (masks and probabilities are kept)."""
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def _apply(self, name: str, module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
        shape = (1, output.shape[1]) + (1,) * (output.dim() - 2)
        if name in self.masks:
            output = output * self.masks[name].to(output.device, output.dtype).view(shape)
        if module.training and name in self.dropout:
            p = self.dropout[name].to(output.device, output.dtype)
            keep = torch.bernoulli((1 - p).expand(output.shape[0], -1)).view(output.shape[0], *shape[1:])
            if self.rescale:
                keep = keep / (1 - p).clamp_min(1e-6).view(shape)
            output = output * keep
        return output

    def reindex(self, removed: Mapping[str, list[int]]) -> None:
        """Keep the masks' and probabilities' entries of the surviving channels after a surgery."""
        for table in (self.masks, self.dropout):
            for name, value in list(table.items()):
                if removed.get(name):
                    table[name] = value[_kept(value.shape[0], removed[name], value.device)]


def _kept(size: int, removed: list[int], device) -> torch.Tensor:
    keep = torch.ones(size, dtype=torch.bool, device=device)
    keep[list(removed)] = False
    return keep
