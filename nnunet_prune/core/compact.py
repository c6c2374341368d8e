"""Compact storage of sparse weight tensors: a packed bit mask plus the non-zero values.

An entry ``{"__nnunet_prune_compact__": 1, "shape": [...], "mask": uint8, "values": tensor}`` takes
``n/8 + 4 * nnz`` bytes instead of ``4 * n`` for float32, so a checkpoint shrinks with its sparsity. Entries are
plain containers of tensors (loadable with ``torch.load(weights_only=True)``); the adaptive networks of
:mod:`nnunet_prune.networks` decode them in ``load_state_dict``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

MARKER = "__nnunet_prune_compact__"


def is_compact(value) -> bool:
    """True if ``value`` is a compact entry as :func:`encode` writes it (a mapping whose marker key is 1)."""
    return isinstance(value, Mapping) and value.get(MARKER) == 1


def encode(tensor: torch.Tensor) -> dict:
    """Pack ``tensor`` (any dtype) into mask + non-zero values."""
    flat = tensor.detach().cpu().reshape(-1)
    nonzero = flat != 0
    mask = torch.from_numpy(np.packbits(nonzero.numpy()))
    return {MARKER: 1, "shape": list(tensor.shape), "mask": mask, "values": flat[nonzero].clone()}


def decode(entry: Mapping) -> torch.Tensor:
    """The dense tensor an :func:`encode` entry stands for."""
    shape = tuple(entry["shape"])
    n = int(np.prod(shape, dtype=np.int64))
    nonzero = torch.from_numpy(np.unpackbits(entry["mask"].numpy(), count=n).astype(bool))
    values = entry["values"]
    out = torch.zeros(n, dtype=values.dtype)
    out[nonzero] = values
    return out.reshape(shape)


def encode_state_dict(state_dict: Mapping[str, torch.Tensor], min_sparsity: float = 0.1) -> dict:
    """Encode every floating-point tensor whose fraction of zeros is at least ``min_sparsity`` (others stay dense)."""
    out = {}
    for k, v in state_dict.items():
        if torch.is_tensor(v) and v.is_floating_point() and v.numel() >= 64 \
                and (v == 0).float().mean().item() >= min_sparsity:
            out[k] = encode(v)
        else:
            out[k] = v
    return out


def decode_state_dict(state_dict: Mapping) -> dict:
    """Dense copy of a state dict that may hold compact entries (dense entries are passed through)."""
    return {k: decode(v) if is_compact(v) else v for k, v in state_dict.items()}
