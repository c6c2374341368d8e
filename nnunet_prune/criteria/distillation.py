"""The distillation term: how far a student's outputs are from a teacher's (a pure function of two logit tensors).

Hinton et al. (2015) soften both distributions with a temperature T and scale the divergence by T^2 so that its
gradients keep their size as T changes; Fast-nnUNet and arXiv 2601.09191 apply it to nnU-Net's full-resolution
output (``../shared/papers``; docs/distillation.md). nnU-Net trains either a softmax over the labels or, for
region-based datasets, one sigmoid per region; the divergence follows the same choice:

* softmax: ``KL(p_t || p_s) = sum_c p_t,c (log p_t,c - log p_s,c)`` with ``p = softmax(z / T)`` over the channels;
* regions: the sum over regions of the binary KL of ``sigmoid(z / T)`` per voxel.

Per voxel, then averaged over the voxels that count (the ignore label's voxels are left out), times T^2.
Memory: a few float32 tensors of the outputs' size (B, C, *patch) on top of the training step's; with many classes
in 3D (e.g. 100 classes, batch 2, 128^3: 1.7 GB each) that is several GB on a GPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def distillation_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
                    valid: torch.Tensor | None = None, regions: bool = False) -> torch.Tensor:
    """Temperature-scaled KL divergence of the student's outputs from the teacher's, averaged over valid voxels.

    Args:
        student_logits: (B, C, *spatial) raw network outputs (any float dtype; computed in float32); gradients
            flow through it.
        teacher_logits: (B, C, *spatial), same shape; treated as a constant (detached).
        temperature: T > 0 (dimensionless); both logits are divided by it; the result is multiplied by T^2.
        valid: optional (B, *spatial) or (B, 1, *spatial) boolean mask of the voxels that count (False: e.g. the
            ignore label); None: every voxel.
        regions: False: softmax over C (KL of the two categorical distributions); True: C independent sigmoids
            (sum over C of the binary KL), as nnU-Net's region-based training.

    Returns:
        a scalar float32 tensor, in nats per voxel (times T^2); 0 (with a graph to the student) when no voxel is
        valid. Equals 0 when the two logit tensors are equal.

    Raises:
        ValueError: shapes differ, or T is not positive.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student outputs {tuple(student_logits.shape)} and teacher outputs "
                         f"{tuple(teacher_logits.shape)} differ in shape")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    s = student_logits.float() / temperature
    t = teacher_logits.detach().float() / temperature
    if regions:
        log_pt, log_qt = F.logsigmoid(t), F.logsigmoid(-t)  # log p and log (1 - p) of the teacher
        per_channel = log_pt.exp() * (log_pt - F.logsigmoid(s)) + log_qt.exp() * (log_qt - F.logsigmoid(-s))
    else:  # p_t (log p_t - log p_s), summed over the channels below
        per_channel = F.kl_div(F.log_softmax(s, dim=1), F.log_softmax(t, dim=1), reduction="none", log_target=True)
    per_voxel = per_channel.sum(dim=1)  # (B, *spatial)
    if valid is None:
        return per_voxel.mean() * temperature ** 2
    mask = valid.reshape(per_voxel.shape) if valid.dim() == per_voxel.dim() + 1 else valid
    if mask.shape != per_voxel.shape:
        raise ValueError(f"mask {tuple(valid.shape)} does not fit outputs {tuple(student_logits.shape)}")
    mask = mask.to(per_voxel.dtype)
    count = mask.sum()
    if count == 0:
        return s.sum() * 0.0
    return (per_voxel * mask).sum() / count * temperature ** 2  # a masked sum: no boolean indexing
