"""PSP-Seg's block-wise importance (§3.3, Eq. 6): how much a Parallel Redundant Module's output changes when a
subset of its branches is masked.

For a PRM ``y = act(x + sum_i b_i)`` with ``b_i = w_i * EB_i(x)``, masking a subset ``S`` gives
``y_S = act(x + sum_i b_i - sum_{i in S} b_i)``; the score of ``S`` is ``||y - y_S||_F^2`` over the calibration set
(squared Frobenius norm, summed over batches: the argmin is the paper's). Pure function of tensors: streamed one
module and one batch at a time by the method, no patches held.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import torch


def subset_discrepancies(x: torch.Tensor, branch_outputs: Mapping[str, torch.Tensor],
                         act: Callable[[torch.Tensor], torch.Tensor],
                         subsets: Iterable[Sequence[str]]) -> dict[tuple[str, ...], float]:
    """Squared Frobenius norm of the change of a PRM's output per masked subset.

    Args:
        x: the module input, (B, C, *S).
        branch_outputs: every active branch's weighted output ``w_i * EB_i(x)`` by branch index, each (B, C, *S).
        act: the module's nonlinearity.
        subsets: tuples of branch indices (keys of ``branch_outputs``).

    Returns:
        {subset: sum over all elements of (y - y_S)^2}, as Python floats (float64 accumulation).

    Raises:
        KeyError: a subset naming a branch not in ``branch_outputs``.
    """
    z = x + sum(branch_outputs.values()) if branch_outputs else x
    y = act(z)
    out = {}
    for subset in subsets:
        subset = tuple(subset)
        removed = sum(branch_outputs[i] for i in subset) if subset else torch.zeros_like(z)
        out[subset] = float((y - act(z - removed)).double().pow(2).sum())
    return out


def least_important_subset(errors: Mapping[tuple[str, ...], float]) -> tuple[str, ...]:
    """The subset whose masking changes the output least (ties: the first in ``errors``' order).

    Raises:
        ValueError: no subsets.
    """
    if not errors:
        raise ValueError("no subsets scored")
    return min(errors, key=lambda s: errors[s])
