"""Resize a network's tensors to the shapes found in a state dict (the width is in the shapes)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from nnunet_prune.surgery.tensors import set_tensor, sync_attributes


def resize_to_state_dict(network: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> bool:
    """Give every parameter and buffer of ``network`` the shape of its entry in ``state_dict``.

    Values are not copied (``load_state_dict`` does that afterwards); parameters keep their identity, so an
    optimizer built before the call still holds them. Modules registered under several names are visited once.
    Returns whether anything changed.
    """
    changed = False
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
