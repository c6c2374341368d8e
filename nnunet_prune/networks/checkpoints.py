"""Reading network weights from checkpoints, and checking them against a network before any work is done.

:func:`normalise_state_dict` reads the forms a state dict of an nnU-Net network takes where the intent is
unambiguous: this package's compact sparse entries, ``torch.nn.utils.prune``'s reparametrisation (``X_orig`` and
``X_mask`` instead of ``X``: a pruned state, ``X = X_orig * X_mask``), and the ``_orig_mod.`` / ``module.``
prefixes of ``torch.compile`` / DDP wrappers when every key carries them. :func:`check_state_dict` compares the
result with a width-adaptive network (keys, tensor ranks, kernel sizes, and that the widths fit together) and
raises one :class:`~nnunet_prune.NnUNetPruneError` that says what is wrong and what to do.

Pure PyTorch: no nnU-Net import, no environment.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from nnunet_prune import NnUNetPruneError
from nnunet_prune.core.compact import decode_state_dict

WRAPPER_PREFIXES = ("_orig_mod.", "module.")
REPARAM_SUFFIXES = ("_orig", "_mask")


def normalise_state_dict(state_dict: Mapping) -> dict:
    """A plain state dict (dense tensors under the network's own key names) from the forms listed above.

    ``X_orig`` / ``X_mask`` pairs become ``X = X_orig * X_mask`` (shapes unchanged); an ``X_orig`` without its mask
    (or the reverse) is left as it is, so :func:`check_state_dict` reports it.
    """
    state = decode_state_dict(state_dict)
    for prefix in WRAPPER_PREFIXES:
        if state and all(isinstance(k, str) and k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    pairs = [k[:-5] for k in state if k.endswith("_orig") and f"{k[:-5]}_mask" in state]
    if pairs:
        state = dict(state)
        for base in pairs:
            orig, mask = state.pop(f"{base}_orig"), state.pop(f"{base}_mask")
            state[base] = orig * mask.to(orig.dtype)
    return state


def _examples(keys: Sequence[str], limit: int = 3) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:limit]) + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def check_state_dict(network: nn.Module, state_dict: Mapping, source: str,
                     patch_size: Sequence[int] | None = None) -> dict:
    """Check that ``network`` (a width-adaptive network) can take ``state_dict``; returns the normalised dict.

    Checks: the block counts of every stack (a pruned checkpoint may have fewer blocks; the network takes them);
    then same keys; every tensor of the rank the network expects; convolution kernels of the same size (widths
    may differ: they are what pruning changes); and, by a forward pass on the meta device over one patch of
    ``patch_size`` (no computation, no memory), that the widths fit together. ``network`` is resized to the
    state dict in the process (its values are not loaded).

    Raises:
        NnUNetPruneError: naming ``source``, what does not match (with examples) and what to do.
    """
    from nnunet_prune.core.stats import count_macs
    from nnunet_prune.surgery import architectures
    from nnunet_prune.surgery.graph import UnsupportedNetworkError
    from nnunet_prune.surgery.resize import match_block_counts, resize_to_state_dict

    state = normalise_state_dict(state_dict)
    try:
        match = architectures.of(network).match_structure
    except UnsupportedNetworkError:
        match = match_block_counts
    try:
        match(network, state)  # blocks / branches removed by pruning (or added back) come from the checkpoint
    except UnsupportedNetworkError as e:
        raise NnUNetPruneError(f"{source} does not match the network: {e}.") from None
    expected = network.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    advice = ("It does not belong to this model folder's plans and configuration, or it was saved by other code. "
              "Use the checkpoint nnUNetv2_train wrote for this plans.json, or retrain the fold.")
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} tensor(s) of the network are missing (e.g. {_examples(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} tensor(s) are not in the network (e.g. {_examples(unexpected)})")
        hint = ""
        if any(k.endswith(REPARAM_SUFFIXES) for k in unexpected):
            hint = (" Keys ending in _orig or _mask come from torch.nn.utils.prune: call prune.remove(module, "
                    "'weight') on every pruned module before saving.")
        raise NnUNetPruneError(f"{source} does not match the network: {'; '.join(parts)}. {advice}{hint}")
    bad = []
    for k, ref in expected.items():
        v = state[k]
        if not torch.is_tensor(v):
            bad.append(f"{k} is a {type(v).__name__}, not a tensor")
        elif v.dim() != ref.dim() or (ref.dim() > 2 and tuple(v.shape[2:]) != tuple(ref.shape[2:])):
            bad.append(f"{k}: shape {tuple(v.shape)} in the checkpoint, the network has {tuple(ref.shape)}")
    if bad:
        raise NnUNetPruneError(f"{source} does not match the network: {len(bad)} tensor(s) of the wrong rank or "
                               f"kernel size, e.g. {'; '.join(bad[:3])}. {advice}")
    if patch_size is not None:
        try:
            resize_to_state_dict(network, state)
            count_macs(network, patch_size)
        except (RuntimeError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise NnUNetPruneError(f"{source}: the channel widths stored in the checkpoint do not fit together "
                                   f"({first}). The file was changed after training or is damaged; use the "
                                   f"checkpoint nnUNetv2_train wrote, or retrain the fold.") from None
    return state
