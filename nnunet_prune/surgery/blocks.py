"""Remove whole blocks: a residual block with an identity skip, or a stride-1 conv block whose input and output
widths match, taken out of its stack (parameters dropped from the optimizer, not just sliced).

Removing such a block replaces it by the identity: the network's output equals the unpruned network's output with
that block's forward replaced by ``x -> x`` (the oracle in ``tests/unit/surgery/test_surgery.py``). The first block of
a stack
(which may change the width or stride) is never removable, so every stack keeps at least one block. After a
removal the coupling graph must be rebuilt (:func:`~nnunet_prune.surgery.architectures.build_channel_graph`):
groups that a removed block separated or joined change.

Checkpoints of networks with removed blocks load into a full-depth adaptive network:
:func:`~nnunet_prune.surgery.resize.resize_to_state_dict` drops the blocks a state dict does not have.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from dynamic_network_architectures.building_blocks.residual import BasicBlockD, BottleneckD, StackedResidualBlocks
from dynamic_network_architectures.building_blocks.simple_conv_blocks import ConvDropoutNormReLU, StackedConvBlocks
from torch import nn
from torch.nn.modules.conv import _ConvNd

from nnunet_prune.core.optim import drop_parameters
from nnunet_prune.core.stats import count_parameters, unwrap
from nnunet_prune.surgery.graph import UnsupportedNetworkError
from nnunet_prune.surgery.tensors import sync_attributes


@dataclass
class BlockRemovalResult:
    """What one call of :func:`remove_blocks` did."""

    removed: list[str] = field(default_factory=list)  # module paths, named as before the call
    params_before: int = 0
    params_after: int = 0

    @property
    def changed(self) -> bool:
        """Whether any block was removed."""
        return bool(self.removed)


def stacks(network: nn.Module) -> dict[str, nn.Sequential]:
    """Every block stack of a U-Net by path: ``<...>.blocks`` of residual stacks, ``<...>.convs`` of conv stacks
    (each stack once, by its first name)."""
    out = {}
    seen = set()
    for name, m in unwrap(network).named_modules():
        seq = m.blocks if isinstance(m, StackedResidualBlocks) else m.convs if isinstance(m, StackedConvBlocks) \
            else None
        if seq is not None and id(seq) not in seen:
            seen.add(id(seq))
            out[f"{name}.{'blocks' if isinstance(m, StackedResidualBlocks) else 'convs'}"] = seq
    return out


def _is_identity_shaped(block: nn.Module) -> bool:
    """Whether the block maps (B, C, *S) to (B, C, *S) with the same C and S (so the identity can replace it)."""
    convs = [m for m in block.modules() if isinstance(m, _ConvNd)]
    if any(any(s != 1 for s in c.stride) for c in convs):
        return False
    if isinstance(block, (BasicBlockD, BottleneckD)):
        skip_convs = [m for m in block.skip.modules() if isinstance(m, _ConvNd)] \
            if isinstance(block.skip, nn.Module) else []
        pools = [m for m in block.skip.modules() if isinstance(m, (nn.modules.pooling._AvgPoolNd,
                                                                   nn.modules.pooling._MaxPoolNd))] \
            if isinstance(block.skip, nn.Module) else []
        return not skip_convs and not pools
    if isinstance(block, ConvDropoutNormReLU):
        return block.conv.in_channels == block.conv.out_channels
    return False


def removable_blocks(network: nn.Module) -> list[str]:
    """Paths (``<stack>.<index>``) of every block that :func:`remove_blocks` may remove right now: not the first of
    its stack, stride 1, same width in and out (a residual block with an identity skip always is)."""
    return [f"{path}.{i}" for path, seq in stacks(network).items() for i, block in enumerate(seq)
            if i > 0 and _is_identity_shaped(block)]


def remove_blocks(network: nn.Module, paths: Iterable[str],
                  optimizer: torch.optim.Optimizer | Sequence[torch.optim.Optimizer] | None = None
                  ) -> BlockRemovalResult:
    """Remove blocks (paths from :func:`removable_blocks`) in place; the stacks are renumbered.

    Their parameters leave the optimizer's param groups and state. The caller rebuilds the channel graph and any
    torch.compile / DDP wrapper afterwards.

    Raises:
        UnsupportedNetworkError: a path that is not a removable block (nothing is changed then).
    """
    net = unwrap(network)
    paths = list(dict.fromkeys(paths))
    allowed = set(removable_blocks(net))
    bad = [p for p in paths if p not in allowed]
    if bad:
        raise UnsupportedNetworkError(f"not removable blocks: {', '.join(bad)} (removable: "
                                      f"{', '.join(sorted(allowed)) or 'none'})")
    result = BlockRemovalResult(list(paths), params_before=count_parameters(net))
    by_stack: dict[str, set[int]] = {}
    for p in paths:
        stack, index = p.rsplit(".", 1)
        by_stack.setdefault(stack, set()).add(int(index))
    all_stacks = stacks(net)
    gone: list[nn.Parameter] = []
    for stack, indices in by_stack.items():
        seq = all_stacks[stack]
        kept = [m for i, m in enumerate(seq) if i not in indices]
        gone += [p for i, m in enumerate(seq) if i in indices for p in m.parameters()]
        seq._modules = OrderedDict((str(i), m) for i, m in enumerate(kept))
    drop_parameters(optimizer, gone)
    sync_attributes(net)
    result.params_after = count_parameters(net)
    return result
