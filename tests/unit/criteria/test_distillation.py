"""The distillation term against a direct computation (float64, one voxel at a time)."""

from __future__ import annotations

import math

import pytest
import torch

from nnunet_prune.criteria.distillation import distillation_kl


def _direct(student, teacher, t, valid=None, regions=False) -> float:
    """sum_c KL per voxel, written out with Python floats, averaged over the valid voxels, times T^2."""
    s, q = student.double() / t, teacher.double() / t
    b, c = s.shape[:2]
    spatial = s.shape[2:].numel()
    s, q = s.reshape(b, c, spatial), q.reshape(b, c, spatial)
    mask = None if valid is None else valid.reshape(b, spatial)
    total, count = 0.0, 0
    for i in range(b):
        for v in range(spatial):
            if mask is not None and not bool(mask[i, v]):
                continue
            if regions:
                kl = 0.0
                for k in range(c):
                    pt = 1 / (1 + math.exp(-float(q[i, k, v])))
                    ps = 1 / (1 + math.exp(-float(s[i, k, v])))
                    kl += pt * math.log(pt / ps) + (1 - pt) * math.log((1 - pt) / (1 - ps))
            else:
                et = [math.exp(float(q[i, k, v])) for k in range(c)]
                es = [math.exp(float(s[i, k, v])) for k in range(c)]
                pt = [e / sum(et) for e in et]
                ps = [e / sum(es) for e in es]
                kl = sum(a * math.log(a / p) for a, p in zip(pt, ps))
            total += kl
            count += 1
    return total / count * t * t


@pytest.mark.parametrize("regions", [False, True])
@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_kl_equals_the_direct_computation(regions, temperature):
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 3, 4, 5, generator=g) * 3, torch.randn(2, 3, 4, 5, generator=g) * 3
    got = distillation_kl(student, teacher, temperature, regions=regions)
    assert got.dtype == torch.float32 and got.dim() == 0
    assert float(got) == pytest.approx(_direct(student, teacher, temperature, regions=regions), rel=1e-5)


@pytest.mark.parametrize("regions", [False, True])
def test_ignored_voxels_are_left_out(regions):
    g = torch.Generator().manual_seed(1)
    student, teacher = torch.randn(2, 3, 6, 6, generator=g), torch.randn(2, 3, 6, 6, generator=g)
    valid = torch.rand(2, 1, 6, 6, generator=g) > 0.4
    got = distillation_kl(student, teacher, 2.0, valid, regions=regions)
    assert float(got) == pytest.approx(_direct(student, teacher, 2.0, valid, regions=regions), rel=1e-5)
    # changing an ignored voxel's outputs changes nothing
    other = student.clone()
    other[~valid.expand_as(other)] = 50.0
    assert float(distillation_kl(other, teacher, 2.0, valid[:, 0], regions=regions)) == pytest.approx(float(got),
                                                                                                     rel=1e-6)
    nothing = torch.zeros_like(valid)
    zero = distillation_kl(student.requires_grad_(), teacher, 2.0, nothing, regions=regions)
    assert float(zero) == 0.0 and zero.requires_grad


@pytest.mark.parametrize("regions", [False, True])
def test_zero_when_student_equals_teacher_and_gradient_to_the_student_only(regions):
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(1, 4, 3, 3, 3, generator=g) * 5
    assert float(distillation_kl(logits, logits.clone(), 3.0, regions=regions)) == pytest.approx(0.0, abs=1e-6)
    student = (logits + torch.randn(logits.shape, generator=g)).requires_grad_()
    teacher = logits.clone().requires_grad_()
    distillation_kl(student, teacher, 3.0, regions=regions).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0 and teacher.grad is None


def test_bad_shapes_and_temperature_are_refused():
    with pytest.raises(ValueError, match="differ in shape"):
        distillation_kl(torch.zeros(1, 2, 3, 3), torch.zeros(1, 3, 3, 3), 1.0)
    with pytest.raises(ValueError, match="temperature"):
        distillation_kl(torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 3), 0.0)
