"""Give a network the structure stored in a state dict: widths (tensor shapes) and block counts.

Pruning changes two things a checkpoint shows by itself: every tensor's shape (channel pruning) and how many
blocks each stack holds (block removal, :mod:`nnunet_prune.surgery.blocks`; the stacks are renumbered, so the
state dict of a stack with ``k`` blocks has indices ``0..k-1``).
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Mapping

import torch
from torch import nn

from nnunet_prune.surgery.blocks import stacks
from nnunet_prune.surgery.graph import UnsupportedNetworkError
from nnunet_prune.surgery.tensors import set_tensor, sync_attributes

#: attribute of a stack that keeps the blocks a smaller state dict dropped (not registered: no parameters, not saved)
SPARE = "_nnunet_prune_spare_blocks"


def match_block_counts(network: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> bool:
    """Drop the trailing blocks of every stack the state dict has fewer of (they are kept aside, unregistered), and
    add blocks where it has more: those kept aside first (the predictor builds a full-depth network and loads fold
    after fold into it), else copies of the stack's last block (blocks after the first of a stack are alike in
    structure; values and widths come with ``load_state_dict``). Returns whether anything changed.

    Raises:
        UnsupportedNetworkError: a stack whose indices in the state dict are not 0..k-1, or that would need more
            blocks while it has only its first one.
    """
    changed = False
    for path, seq in stacks(network).items():
        prefix = path + "."
        present = {int(k[len(prefix):].split(".", 1)[0]) for k in state_dict
                   if k.startswith(prefix) and k[len(prefix):].split(".", 1)[0].isdigit()}
        if not present:
            continue  # e.g. a state dict of another structure: load_state_dict reports it
        count = max(present) + 1
        if present != set(range(count)):
            raise UnsupportedNetworkError(f"{path}: the state dict has blocks {sorted(present)}, expected 0..k-1")
        if count == len(seq):
            continue
        blocks = list(seq)
        spare = seq.__dict__.setdefault(SPARE, [])
        if count < len(blocks):
            spare[:0] = blocks[count:]
            blocks = blocks[:count]
        else:
            while spare and len(blocks) < count:
                blocks.append(spare.pop(0))
            if len(blocks) < count and len(blocks) < 2:
                raise UnsupportedNetworkError(f"{path}: the state dict has {count} blocks, the network only its "
                                              f"first one; cannot tell the structure of the others")
            blocks += [copy.deepcopy(blocks[-1]) for _ in range(count - len(blocks))]
            for b in blocks:
                b.train(seq.training)
        seq._modules = OrderedDict((str(i), m) for i, m in enumerate(blocks))
        changed = True
    return changed


def resize_to_state_dict(network: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> bool:
    """Give ``network`` the block counts (:func:`match_block_counts`) and every parameter and buffer the shape of
    its entry in ``state_dict``.

    Values are not copied (``load_state_dict`` does that afterwards); parameters keep their identity, so an
    optimizer built before the call still holds them. Modules registered under several names are visited once.
    Returns whether anything changed.

    Raises:
        UnsupportedNetworkError: see :func:`match_block_counts`.
    """
    changed = match_block_counts(network, state_dict)
    for prefix, module in network.named_modules():
        for name, tensor in [*module._parameters.items(), *module._buffers.items()]:
            if tensor is None:
                continue
            source = state_dict.get(f"{prefix}.{name}" if prefix else name)
            if torch.is_tensor(source) and source.shape != tensor.shape:
                set_tensor(module, name, torch.empty(source.shape, dtype=tensor.dtype, device=tensor.device))
                changed = True
    if changed:
        sync_attributes(network)
    return changed
