"""Sauron: feature-map distances (eq. 2 and 3 of papers/sauron.txt), thresholds C1-C4 and the settings.

The references below are written independently of nnunet_prune.criteria.sauron: explicit loops in numpy
(float64) over samples and channels, following /work/shared/METHODS.md.
"""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nnunet_prune import NnUNetPruneError
from nnunet_prune.criteria.sauron import EPS, delta_opt, delta_opt_layer, normalise_by_max, pool, prune_distances
from nnunet_prune.methods.sauron import ENV_VAR, LayerState, SauronConfig, SauronThresholds

# The implementation adds EPS inside the square root of the RMS (sqrt(x + 1e-8) - sqrt(x) <= 1e-4, and much less
# for distances of order 0.1 as here) and to the min-max denominator (relative 1e-8): 1e-6 is loose enough for
# that and far tighter than any real mistake (wrong axes, wrong reference, missing normalisation ...).
TOL = 1e-6



pytestmark = pytest.mark.usefixtures("single_thread")

# ----------------------------------------------------------------------------------------------- references
def ref_pool(x: np.ndarray, omega: int) -> np.ndarray:
    """Average pooling with window = stride = omega per spatial axis (window clipped to the axis length), by loops."""
    b, c, *spatial = x.shape
    kernel = [max(1, min(omega, s)) for s in spatial]
    out_shape = [s // k for s, k in zip(spatial, kernel)]
    out = np.zeros((b, c, *out_shape))
    for i in range(b):
        for j in range(c):
            for pos in itertools.product(*[range(n) for n in out_shape]):
                window = tuple(slice(p * k, (p + 1) * k) for p, k in zip(pos, kernel))
                out[(i, j, *pos)] = x[(i, j, *window)].mean()
    return out


def ref_delta_opt_layer(pooled: np.ndarray) -> float:
    """Eq. (2), one layer: min-max normalise every (sample, channel) over all spatial axes, RMS distance of every
    channel to channel 0, mean over channels (reference included, contributing 0) and samples."""
    b, c = pooled.shape[:2]
    if c < 2:
        return 0.0
    total = 0.0
    for i in range(b):
        maps = []
        for j in range(c):
            m = pooled[i, j]
            maps.append((m - m.min()) / (m.max() - m.min()))
        for j in range(c):
            total += 0.0 if j == 0 else math.sqrt(np.mean((maps[j] - maps[0]) ** 2))
    return total / (b * c)


def ref_delta_prune(pooled: np.ndarray, reference: int) -> tuple[np.ndarray, np.ndarray]:
    """Eq. (3): raw (not normalised) pooled maps, RMS distance to channel ``reference``, mean over samples; and
    the same divided by its maximum over channels."""
    b, c = pooled.shape[:2]
    d = np.zeros(c)
    for j in range(c):
        if j == reference:
            continue
        d[j] = np.mean([math.sqrt(np.mean((pooled[i, j] - pooled[i, reference]) ** 2)) for i in range(b)])
    return d, d / d.max()


def rand(*shape, seed=0, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


SHAPES = {2: (3, 5, 12, 10), 3: (2, 4, 6, 8, 6)}


# ----------------------------------------------------------------------------------------------- pool
@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("omega", [1, 2, 3])
def test_pool_matches_reference(dim, omega):
    x = rand(*SHAPES[dim])
    np.testing.assert_allclose(pool(x, omega).numpy(), ref_pool(x.numpy(), omega), rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape, expected", [
    ((2, 3, 1, 8, 6), (2, 3, 1, 4, 3)),  # 3D map with depth 1: no pooling along depth
    ((2, 3, 3, 1, 8), (2, 3, 1, 1, 4)),  # depth 3 pooled once, height 1 kept
    ((2, 3, 1, 9), (2, 3, 1, 4)),  # 2D map of height 1
    ((2, 3, 1, 1, 1), (2, 3, 1, 1, 1)),  # nothing to pool at all
])
def test_pool_clips_window_on_short_axes(shape, expected):
    x = rand(*shape, seed=1)
    out = pool(x, 2)
    assert tuple(out.shape) == expected
    np.testing.assert_allclose(out.numpy(), ref_pool(x.numpy(), 2), rtol=0, atol=1e-12)


def test_pool_large_omega_clipped_everywhere():
    x = rand(1, 2, 3, 5, seed=2)
    out = pool(x, 8)  # the window becomes the whole map
    assert tuple(out.shape) == (1, 2, 1, 1)
    np.testing.assert_allclose(out.flatten().numpy(), x.flatten(2).mean(2).flatten().numpy(), atol=1e-12)


# ----------------------------------------------------------------------------------------------- delta_opt
@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_delta_opt_layer_matches_reference(dim, dtype):
    x = rand(*SHAPES[dim], seed=dim, dtype=dtype)
    pooled = pool(x, 2)
    expected = ref_delta_opt_layer(pooled.double().numpy())
    tol = TOL if dtype == torch.float64 else 1e-5
    assert delta_opt_layer(pooled).item() == pytest.approx(expected, abs=tol)


def test_delta_opt_layer_normalises_over_all_spatial_axes():
    """A 3D map whose depth slices have very different ranges: per-slice (2D-only) normalisation would differ."""
    x = rand(2, 3, 4, 4, 4, seed=5)
    x[:, :, 0] *= 50
    x[:, :, 1] += 20
    expected = ref_delta_opt_layer(x.numpy())
    assert delta_opt_layer(x).item() == pytest.approx(expected, abs=TOL)


def test_delta_opt_is_scale_and_shift_invariant_per_channel():
    """Min-max normalisation: scaling / shifting single channels does not change delta_opt."""
    x = rand(2, 4, 8, 8, seed=3)
    y = x.clone()
    y[:, 1] = y[:, 1] * 7 + 3
    y[:, 0] = y[:, 0] * 0.1 - 5
    assert delta_opt_layer(y).item() == pytest.approx(delta_opt_layer(x).item(), abs=TOL)


def test_delta_opt_identical_channels_is_zero_and_different_is_not():
    base = rand(2, 1, 6, 6, seed=4)
    same = base.repeat(1, 5, 1, 1) * torch.arange(1, 6, dtype=base.dtype).view(1, 5, 1, 1)  # all equal after min-max
    assert delta_opt_layer(same).item() < 1e-3  # only sqrt(EPS) per channel
    assert delta_opt_layer(rand(2, 5, 6, 6, seed=5)).item() > 0.1


def test_delta_opt_averages_over_layers():
    a, b = pool(rand(2, 3, 8, 8, seed=6), 2), pool(rand(1, 6, 4, 4, 4, seed=7), 2)
    expected = (ref_delta_opt_layer(a.numpy()) + ref_delta_opt_layer(b.numpy())) / 2
    assert delta_opt([a, b]).item() == pytest.approx(expected, abs=TOL)
    assert delta_opt([]) is None


def finite_value_and_grad(maps: list[torch.Tensor]) -> torch.Tensor:
    leaves = [m.clone().requires_grad_(True) for m in maps]
    value = delta_opt([pool(m, 2) for m in leaves])
    assert torch.isfinite(value), value
    if value.requires_grad:
        grads = torch.autograd.grad(value, leaves, allow_unused=True)
        for g in grads:
            assert g is None or torch.isfinite(g).all()
    return value


@pytest.mark.parametrize("dim", [2, 3])
def test_one_channel_layer_contributes_exactly_zero(dim):
    one = rand(2, 1, *([6] * dim), seed=8)
    many = rand(2, 4, *([6] * dim), seed=9)
    assert delta_opt_layer(pool(one, 2)).item() == 0.0
    value = finite_value_and_grad([one, many])
    # the one-channel layer counts as a layer with delta 0 (mean over two layers)
    assert value.item() == pytest.approx(delta_opt_layer(pool(many, 2)).item() / 2, abs=1e-12)
    assert finite_value_and_grad([one]).item() == 0.0


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_constant_maps_are_finite(dim, dtype):
    const = torch.full((2, 4, *([6] * dim)), 3.5, dtype=dtype)
    value = finite_value_and_grad([const])
    # all channels normalise to 0: each non-reference channel is sqrt(EPS) away, the reference 0
    assert value.item() == pytest.approx(math.sqrt(EPS) * 3 / 4, rel=1e-3)
    mixed = rand(2, 4, *([6] * dim), seed=10, dtype=dtype)
    mixed[:, 0] = -2.0  # constant reference channel
    mixed[1, 2] = 7.0  # one constant (sample, channel) map
    value = finite_value_and_grad([mixed])
    assert value.item() > 0.1
    zeros = torch.zeros(1, 3, *([4] * dim), dtype=dtype)
    finite_value_and_grad([zeros, mixed])


def test_delta_opt_gradient_pulls_channels_towards_reference():
    """One gradient step on delta_opt lowers it (the term is meant to be minimised)."""
    x = rand(2, 4, 8, 8, seed=11).requires_grad_(True)
    value = delta_opt([pool(x, 2)])
    value.backward()
    with torch.no_grad():
        after = delta_opt([pool(x - 0.5 * x.grad / x.grad.norm(), 2)])
    assert after.item() < value.item()


# ----------------------------------------------------------------------------------------------- delta_prune
@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("reference", [0, 2])
def test_prune_distances_match_reference(dim, reference):
    x = rand(*SHAPES[dim], seed=12 + dim)
    x[:, 1] *= 10  # raw maps: scale matters for delta_prune (no min-max)
    pooled = pool(x, 2)
    d_ref, normalised_ref = ref_delta_prune(pooled.numpy(), reference)
    d = prune_distances(pooled, reference)
    assert d.shape == (x.shape[1],)
    assert d[reference].item() == 0.0
    np.testing.assert_allclose(d.numpy(), d_ref, rtol=1e-6, atol=TOL)
    normalised = normalise_by_max(d)
    np.testing.assert_allclose(normalised.numpy(), normalised_ref, rtol=1e-6, atol=TOL)
    assert normalised.max().item() == pytest.approx(1.0)
    assert normalised.min().item() >= 0.0
    assert int(normalised.argmax()) == int(np.argmax(d_ref))


def test_prune_distances_use_raw_maps_not_min_max():
    """A scaled copy of the reference is redundant for delta_opt's normalisation but far away for delta_prune."""
    ref = rand(3, 1, 8, 8, seed=14)
    x = torch.cat([ref, ref * 5, ref + 1e-3, rand(3, 1, 8, 8, seed=15)], dim=1)
    d = normalise_by_max(prune_distances(pool(x, 2), 0))
    assert d[2] < 0.01 < d[1]


def test_normalise_by_max_all_equal_gives_zeros():
    assert torch.equal(normalise_by_max(torch.zeros(4)), torch.zeros(4))
    x = rand(2, 1, 4, 4, seed=16).repeat(1, 3, 1, 1)
    d = prune_distances(x, 1)
    assert torch.isfinite(normalise_by_max(d)).all()


# ----------------------------------------------------------------------------------------------- fused = direct
# The training path (criteria.sauron) pools with strided slice sums and computes delta_opt with a hand-written
# backward (benchmarks/sauron_step.py). Here it is compared with the straightforward definition through autograd:
# F.avg_pool, amin/amax, (B, C, N) differences, square, mean, sqrt -- values and gradients.
def direct_pool(x: torch.Tensor, omega: int) -> torch.Tensor:
    kernel = tuple(max(1, min(omega, s)) for s in x.shape[2:])
    return (F.avg_pool2d if x.dim() == 4 else F.avg_pool3d)(x, kernel, kernel)


def direct_distances(flat: torch.Tensor, reference: int) -> torch.Tensor:
    d = (flat - flat[:, reference:reference + 1]).square().mean(dim=2).add(EPS).sqrt()
    keep = torch.ones(flat.shape[1], dtype=flat.dtype)
    keep[reference] = 0
    return d * keep


def direct_delta_opt(maps: list[torch.Tensor], omega: int = 2) -> torch.Tensor:
    layers = []
    for x in maps:
        flat = direct_pool(x, omega).flatten(2)
        if flat.shape[1] < 2:
            layers.append(flat.sum() * 0)
            continue
        lo, hi = flat.amin(dim=2, keepdim=True), flat.amax(dim=2, keepdim=True)
        layers.append(direct_distances((flat - lo) / (hi - lo + EPS), 0).mean())
    return torch.stack(layers).mean()


def awkward_maps(dim: int, dtype: torch.dtype, seed: int) -> list[torch.Tensor]:
    """Layers with a constant channel, a constant reference map, exact ties at the min and the max, odd sizes
    (the pooling drops the last row), a 1-channel layer and a layer pooled to a single position."""
    g = torch.Generator().manual_seed(seed)
    spatial = [(13, 10), (6, 9), (2, 2)] if dim == 2 else [(7, 8, 6), (4, 5, 6), (2, 2, 2)]
    a = torch.randn(3, 6, *spatial[0], generator=g, dtype=dtype) * 3 + 1
    a[:, 2] = 1.5  # constant channel
    a[0, 0] = -2.0  # constant reference map in sample 0
    block = (slice(0, 4),) * dim  # whole pooling windows: exact ties after pooling
    a[1, 1][block] = a[1, 1].min() - 1  # ties at the min
    a[2, 3][block] = a[2, 3].max() + 1  # ties at the max
    one = torch.randn(3, 1, *spatial[1], generator=g, dtype=dtype)
    tiny = torch.randn(3, 4, *spatial[2], generator=g, dtype=dtype)
    return [a, one, tiny, torch.randn(3, 5, *spatial[1], generator=g, dtype=dtype)]


def assert_close_grads(got, expected, rel: float) -> None:
    """max |got - expected| <= rel * max(1, max |expected|) per tensor (a constant channel's min-max
    normalisation divides by EPS, so its gradients are huge: the tolerance is relative to the largest one).
    None (no gradient reached the tensor: a 1-channel layer) counts as zeros."""
    for g, e in zip(got, expected, strict=True):
        if g is None or e is None:
            assert all(t is None or not t.any() for t in (g, e))
            continue
        assert (g - e).abs().max().item() <= rel * max(1.0, e.abs().max().item())


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_delta_opt_matches_direct_definition(dim, dtype):
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for seed in range(3):
        maps = awkward_maps(dim, dtype, seed)
        fast_leaves = [m.clone().requires_grad_(True) for m in maps]
        ref_leaves = [m.clone().requires_grad_(True) for m in maps]
        fast = delta_opt([pool(m, 2) for m in fast_leaves])
        ref = direct_delta_opt(ref_leaves)
        assert abs(fast.item() - ref.item()) <= tol
        assert_close_grads(torch.autograd.grad(fast, fast_leaves, allow_unused=True),
                           torch.autograd.grad(ref, ref_leaves, allow_unused=True), rel=tol)


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_delta_opt_layer_matches_direct_definition_per_layer(dim, dtype):
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for x in awkward_maps(dim, dtype, seed=7):
        leaf = x.clone().requires_grad_(True)
        ref_leaf = x.clone().requires_grad_(True)
        fast = delta_opt_layer(pool(leaf, 2))
        ref = direct_delta_opt([ref_leaf])
        assert abs(fast.item() - ref.item()) <= tol
        if x.shape[1] < 2:
            assert fast.item() == 0.0 and not fast.requires_grad
            continue
        assert_close_grads(torch.autograd.grad(fast, [leaf]), torch.autograd.grad(ref, [ref_leaf]), rel=tol)


def test_fused_delta_opt_without_exact_float32_matmul():
    """With TF32 / bf16 matrix products allowed (set_float32_matmul_precision below 'highest') the matrix-vector
    products are replaced by sums: same values and gradients."""
    maps = awkward_maps(2, torch.float32, seed=5)
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")
    try:
        leaves = [m.clone().requires_grad_(True) for m in maps]
        fast = delta_opt([pool(m, 2) for m in leaves])
        grads = torch.autograd.grad(fast, leaves, allow_unused=True)
    finally:
        torch.set_float32_matmul_precision(previous)
    ref_leaves = [m.clone().requires_grad_(True) for m in maps]
    ref = direct_delta_opt(ref_leaves)
    assert abs(fast.item() - ref.item()) <= 1e-5
    assert_close_grads(grads, torch.autograd.grad(ref, ref_leaves, allow_unused=True), rel=1e-5)


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("omega", [2, 3])
def test_fused_pool_matches_avg_pool(dim, omega):
    for x in awkward_maps(dim, torch.float32, seed=3):
        leaf, ref_leaf = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        out, ref = pool(leaf, omega), direct_pool(ref_leaf, omega)
        assert out.shape == ref.shape
        assert (out - ref).abs().max().item() <= 1e-6 * max(1.0, ref.abs().max().item())
        weights = torch.randn(ref.shape, generator=torch.Generator().manual_seed(dim))
        (g,) = torch.autograd.grad((out * weights).sum(), leaf)
        (g_ref,) = torch.autograd.grad((ref * weights).sum(), ref_leaf)
        assert torch.allclose(g, g_ref, rtol=1e-6, atol=1e-7)


def test_pool_in_half_precision_is_atens():
    """Under autocast the maps are fp16/bf16: pooled by ATen's kernel (float accumulation, one rounding)."""
    x = rand(2, 3, 8, 6, seed=20, dtype=torch.float32).to(torch.bfloat16)
    assert torch.equal(pool(x, 2), F.avg_pool2d(x, 2, 2))


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("reference", [0, 3])
def test_fused_prune_distances_match_direct_definition(dim, reference):
    for seed in range(3):
        x = pool(awkward_maps(dim, torch.float32, seed)[0], 2)
        expected = direct_distances(x.flatten(2), reference).mean(dim=0)
        got = prune_distances(x, reference)
        assert got[reference].item() == 0.0
        assert (got - expected).abs().max().item() <= 1e-5 * max(1.0, expected.abs().max().item())


def test_observer_computes_what_the_definitions_say():
    """SauronObserver (the trainer's hooks): lambda * delta_opt of the pooled group outputs of one training forward
    pass, the prune distances summed while collecting, nothing in eval mode."""
    from nnunet_prune.methods.sauron import SauronObserver
    from nnunet_prune.surgery import build_channel_graph
    from tests.helpers import make_network

    torch.manual_seed(0)
    net = make_network("plain", 2)
    graph = build_channel_graph(net)
    observer = SauronObserver(omega=2, lambda_=0.5)
    observer.attach(graph)
    observer.reset_epoch({g.name: g.size - 1 for g in graph})
    seen = {}
    handles = [m.register_forward_hook(lambda mod, i, o, key=(g.name, j): seen.__setitem__(key, o.detach().clone()))
               for g in graph for j, m in enumerate(g.outputs)]
    x = torch.randn(2, 2, 32, 32)
    net.eval()
    with torch.no_grad():
        net(x)
    assert observer.extra_loss() is None  # eval mode: nothing recorded
    net.train()
    observer.collecting = True
    net(x)
    value = observer.extra_loss()
    observer.end_step()
    for h in handles:
        h.remove()
    keys = [(g.name, j) for g in graph for j in range(len(g.outputs))]
    assert value.item() == pytest.approx(0.5 * direct_delta_opt([seen[k] for k in keys]).item(), abs=1e-6)
    assert observer.delta_opt_steps == 1 and not observer.collecting
    for g in graph:
        for j in range(len(g.outputs)):
            expected = direct_distances(direct_pool(seen[(g.name, j)], 2).flatten(2), g.size - 1).mean(dim=0)
            np.testing.assert_allclose(observer.mean_distances(g.name, j).numpy(), expected.numpy(), atol=1e-5)
    observer.detach()
    net(x)
    assert observer.extra_loss() is None


# ----------------------------------------------------------------------------------------------- thresholds
def thresholds(**kw) -> SauronThresholds:
    t = SauronThresholds(SauronConfig(**kw).validate())
    t.ensure(["a", "b"])
    return t


CONVERGED = [1.0, 0.9, 0.8, 0.85, 0.82, 0.84]  # last value inside [min, max] of the 5 before it
NOT_IMPROVING = [1.0, 0.7, 0.8]  # last above the best before it


def test_c1_training_loss_converged():
    t = thresholds()  # rho = 5
    assert not t.training_loss_converged(CONVERGED[1:])  # only rho values: not enough history
    assert not t.training_loss_converged([])
    assert t.training_loss_converged(CONVERGED)
    assert t.training_loss_converged([5, 1, 2, 3, 4, 5, 5])  # equal to the max counts as inside
    assert t.training_loss_converged([5, 1, 2, 3, 4, 5, 1])  # equal to the min too
    assert not t.training_loss_converged([5, 1, 2, 3, 4, 5, 0.5])  # still falling
    assert not t.training_loss_converged([5, 1, 2, 3, 4, 5, 6])  # rising above the window
    # only the previous rho values count: 10 (six epochs back) must not widen the window
    assert not t.training_loss_converged([10, 2, 3, 4, 5, 6, 9])
    assert thresholds(rho=2).training_loss_converged([10, 2, 3, 2.5])


def test_c1_window_length_follows_rho():
    losses = [0.0, 5, 6, 5.5]
    assert thresholds(rho=2).training_loss_converged(losses)  # window [5, 6]
    assert thresholds(rho=3).training_loss_converged(losses)  # window [0, 5, 6]
    assert not thresholds(rho=4).training_loss_converged(losses)  # not enough values
    assert not thresholds(rho=1).training_loss_converged(losses)  # window [6]


def test_c2_validation_not_improving():
    v = SauronThresholds.validation_not_improving
    assert not v([])
    assert not v([1.0])
    assert v([1.0, 1.1])
    assert not v([1.0, 1.0])  # equal to the best is not "above"
    assert not v([3.0, 2.0, 1.0])  # improving
    assert v([2.0, 1.0, 1.5])  # above the best before it, though below the first
    assert not v([2.0, 1.0, 1.5, 0.9])  # new best


def test_update_needs_c1_and_c2():
    t = thresholds()
    assert t.update(10, CONVERGED, [1.0, 0.9, 0.8]) == []  # C2 false
    assert t.update(10, CONVERGED[:-1] + [0.5], NOT_IMPROVING) == []  # C1 false
    assert t.update(10, CONVERGED[:3], NOT_IMPROVING) == []  # C1 false: not enough epochs
    assert all(s.tau == 0.0 and s.last_rise_epoch is None for s in t.layers.values())
    assert sorted(t.update(10, CONVERGED, NOT_IMPROVING)) == ["a", "b"]
    for s in t.layers.values():
        assert s.tau == pytest.approx(0.3 / 15)
        assert s.last_rise_epoch == 10


def test_c3_layer_that_pruned_mu_percent_is_not_raised():
    t = thresholds()  # mu = 2 %
    t.record_pruned("a", 1, 50)  # exactly 2 %: blocked
    t.record_pruned("b", 1, 51)  # 1.96 %: allowed
    assert t.update(10, CONVERGED, NOT_IMPROVING) == ["b"]
    assert t.layers["a"].tau == 0.0
    t.record_pruned("a", 0, 50)
    assert t.update(11, CONVERGED, NOT_IMPROVING) == ["a"]  # b is in its patience (C4)
    t2 = thresholds(mu=0.0)  # mu = 0: nothing can ever be below it
    assert t2.update(10, CONVERGED, NOT_IMPROVING) == []
    t.record_pruned("b", 3, 0)  # no division by zero for an empty layer
    assert t.layers["b"].pruned_fraction_last_epoch == 0.0


def test_c4_patience_between_raises():
    t = thresholds(rho=5)
    assert len(t.update(10, CONVERGED, NOT_IMPROVING)) == 2
    for epoch in range(11, 15):
        assert t.update(epoch, CONVERGED, NOT_IMPROVING) == [], epoch
    assert len(t.update(15, CONVERGED, NOT_IMPROVING)) == 2
    assert t.layers["a"].tau == pytest.approx(2 * 0.3 / 15)
    assert t.layers["a"].last_rise_epoch == 15


def test_layers_keep_their_own_pace():
    t = thresholds(rho=3)
    t.record_pruned("a", 10, 10)
    assert t.update(0, [1, 1, 1, 1], [1, 2]) == ["b"]
    t.record_pruned("a", 0, 10)
    assert t.update(1, [1, 1, 1, 1], [1, 2]) == ["a"]
    assert t.update(3, [1, 1, 1, 1], [1, 2]) == ["b"]
    assert t.update(4, [1, 1, 1, 1], [1, 2]) == ["a"]
    assert t.layers["a"].tau == t.layers["b"].tau == pytest.approx(2 * 0.3 / 15)


@pytest.mark.parametrize("tau_max, kappa", [(0.3, 15), (0.25, 7), (1.0, 3), (0.1, 1)])
def test_tau_rises_by_tau_max_over_kappa_and_stops_at_tau_max(tau_max, kappa):
    t = thresholds(tau_max=tau_max, kappa=kappa, rho=1)
    taus = [0.0]
    rises = 0
    for epoch in range(kappa + 5):
        rises += "a" in t.update(epoch, [1.0, 1.0], [1.0, 2.0])
        tau = t.layers["a"].tau
        assert tau <= tau_max
        taus.append(tau)
    assert rises == kappa
    assert taus[-1] == pytest.approx(tau_max)
    steps = np.diff(taus[:kappa + 1])
    np.testing.assert_allclose(steps, tau_max / kappa, rtol=1e-9)


def test_tau_init_is_the_start_value():
    t = thresholds(tau_init=0.1)
    assert t.layers["a"].tau == 0.1
    t.ensure(["a", "c"])  # existing layers keep their state
    t.layers["a"].tau = 0.2
    t.ensure(["a"])
    assert t.layers["a"].tau == 0.2 and t.layers["c"].tau == 0.1


def test_select_never_reference_ordered_most_redundant_first():
    t = thresholds()
    d = np.array([0.0, 0.5, 0.05, 0.2, 0.01, 0.3, 1.0])
    assert t.select("a", d, 0) == []  # tau is 0: nothing, not even exact duplicates
    t.layers["a"].tau = 0.3
    assert t.select("a", d, 0) == [4, 2, 3]  # 0.3 itself is not below tau; 0 is the reference
    d2 = np.array([0.1, 0.5, 0.0, 0.2, 1.0])
    assert t.select("a", d2, 2) == [0, 3]
    assert 2 not in t.select("a", np.zeros(5), 2)
    assert t.select("a", np.zeros(5), 2) == [0, 1, 3, 4]
    t.layers["a"].tau = 1.0
    assert len(t.select("a", np.linspace(0, 0.99, 6), 5)) == 5


def test_state_load_round_trip():
    t = thresholds()
    t.record_pruned("a", 1, 8)
    t.update(7, CONVERGED, NOT_IMPROVING)
    t.layers["c"] = LayerState(tau=0.05, last_rise_epoch=None, pruned_fraction_last_epoch=0.5)
    state = json.loads(json.dumps(t.state()))  # checkpoints must be able to store it
    u = SauronThresholds(t.config)
    u.load(state)
    assert u.layers == t.layers
    assert u.layers is not t.layers
    # the restored thresholds behave the same
    assert u.update(12, CONVERGED, NOT_IMPROVING) == t.update(12, CONVERGED, NOT_IMPROVING)
    assert u.layers == t.layers


# ----------------------------------------------------------------------------------------------- settings
def test_defaults_are_the_papers():
    cfg = SauronConfig.resolve(environ={})
    assert (cfg.lambda_, cfg.tau_max, cfg.kappa, cfg.rho, cfg.mu, cfg.omega) == (0.5, 0.3, 15, 5, 2.0, 2)
    assert cfg.tau_init == 0.0
    assert SauronConfig.resolve(plans={}, environ={}) == cfg
    assert SauronConfig.resolve(plans={"nnunet_prune": {}}, environ={ENV_VAR: "  "}) == cfg
    d = cfg.as_dict()
    assert d["lambda"] == 0.5 and "lambda_" not in d


def test_plans_override():
    plans = {"nnunet_prune": {"sauron": {"lambda": 1, "tau_max": 0.2, "kappa": 10, "rho": 3, "mu": 5, "omega": 4,
                                         "stat_batches": 2}}}
    cfg = SauronConfig.resolve(plans, environ={})
    assert (cfg.lambda_, cfg.tau_max, cfg.kappa, cfg.rho, cfg.mu, cfg.omega, cfg.stat_batches) == \
        (1.0, 0.2, 10, 3, 5.0, 4, 2)
    assert isinstance(cfg.kappa, int) and isinstance(cfg.omega, int) and isinstance(cfg.lambda_, float)


def test_environment_overrides_plans():
    plans = {"nnunet_prune": {"sauron": {"tau_max": 0.2, "kappa": 10}}}
    cfg = SauronConfig.resolve(plans, environ={ENV_VAR: " tau_max = 0.1 ; rho=7,lambda=2"})
    assert cfg.tau_max == 0.1  # env wins
    assert cfg.kappa == 10  # plans kept where env says nothing
    assert cfg.rho == 7 and cfg.lambda_ == 2.0
    assert isinstance(cfg.rho, int)


def test_keyword_defaults_are_overridden_by_plans_and_environment():
    assert SauronConfig.resolve(environ={}, lambda_=0.0).lambda_ == 0.0
    assert SauronConfig.resolve({"nnunet_prune": {"sauron": {"lambda": 1}}}, environ={}, lambda_=0.0).lambda_ == 1
    assert SauronConfig.resolve(environ={ENV_VAR: "lambda=2"}, lambda_=0.0).lambda_ == 2


def test_the_method_never_reads_the_environment_itself(monkeypatch):
    """The nnU-Net glue passes the environment (the trainer: os.environ); the methods layer reads none."""
    monkeypatch.setenv(ENV_VAR, "kappa=4")
    assert SauronConfig.resolve().kappa == 15
    assert SauronConfig.resolve(environ={ENV_VAR: "kappa=4"}).kappa == 4
    import inspect

    from nnunet_prune.nnunet.trainers.sauron import nnUNetTrainerSauron

    assert "environ=os.environ" in inspect.getsource(nnUNetTrainerSauron.resolve_settings)


@pytest.mark.parametrize("source, key", [
    ("env", "tau_maxx"),
    ("env", "gamma"),
    ("plans", "kapa"),
])
def test_unknown_key_is_named(source, key):
    kwargs = ({"environ": {ENV_VAR: f"{key}=1"}} if source == "env"
              else {"plans": {"nnunet_prune": {"sauron": {key: 1}}}, "environ": {}})
    with pytest.raises(NnUNetPruneError) as e:
        SauronConfig.resolve(**kwargs)
    assert repr(key) in str(e.value)
    assert "tau_max" in str(e.value)  # lists what is known


@pytest.mark.parametrize("text, key", [
    ("kappa=abc", "kappa"),
    ("tau_max=", "tau_max"),
    ("rho=five", "rho"),
    ("lambda=x", "lambda"),
    ("kappa=nan", "kappa"),
])
def test_non_numbers_are_named(text, key):
    with pytest.raises(NnUNetPruneError) as e:
        SauronConfig.resolve(environ={ENV_VAR: text})
    assert key in str(e.value)
    assert "not a number" in str(e.value)


def test_non_number_in_plans_is_named():
    with pytest.raises(NnUNetPruneError, match="omega"):
        SauronConfig.resolve({"nnunet_prune": {"sauron": {"omega": "wide"}}}, environ={})


def test_malformed_environment_variable():
    with pytest.raises(NnUNetPruneError, match=ENV_VAR):
        SauronConfig.resolve(environ={ENV_VAR: "tau_max"})


@pytest.mark.parametrize("text, key", [
    ("tau_max=0", "tau_max"),
    ("tau_max=1.5", "tau_max"),
    ("tau_max=-0.1", "tau_max"),
    ("kappa=0", "kappa"),
    ("rho=-1", "rho"),
    ("omega=0", "omega"),
    ("stat_batches=0", "stat_batches"),
    ("mu=-1", "mu"),
    ("lambda=-0.5", "lambda"),
    ("tau_init=0.5", "tau_init"),
    ("tau_init=-0.1", "tau_init"),
])
def test_invalid_values_are_named(text, key):
    with pytest.raises(NnUNetPruneError) as e:
        SauronConfig.resolve(environ={ENV_VAR: text})
    assert key in str(e.value)


def test_invalid_value_from_plans_is_named():
    with pytest.raises(NnUNetPruneError, match="kappa"):
        SauronConfig.resolve({"nnunet_prune": {"sauron": {"kappa": 0}}}, environ={})


@pytest.mark.parametrize("text", ["lambda=nan", "lambda=inf", "mu=nan"])
def test_non_finite_values_are_rejected(text):
    with pytest.raises(NnUNetPruneError):
        SauronConfig.resolve(environ={ENV_VAR: text})


def test_schedule_problems_name_the_setting_for_short_budgets():
    from nnunet_prune.methods.sauron import SauronConfig, condition_counts

    paper = SauronConfig()  # rho 5, kappa 15, tau_init 0
    assert paper.earliest_pruning_epoch() == 5
    problem, = paper.schedule_problems(5)
    assert "cannot prune anything in 5 epoch(s)" in problem and "tau_init=0.25" in problem
    problem, = paper.schedule_problems(10)  # a rise after epoch 5, the next one 5 epochs later: only 1 fits
    assert "At most 1 of the 15 threshold steps" in problem and "NNUNET_PRUNE_EPOCHS" in problem
    problem, = paper.schedule_problems(6, final_epochs_without_pruning=1)  # epoch 5 is the last: no surgery
    assert "cannot prune anything in 6 epoch(s)" in problem and "last 1 epoch(s) only train" in problem
    assert "At most 2 of" in paper.schedule_problems(11)[0]  # after epochs 5 and 10
    assert paper.schedule_problems(5 + 5 * 15) == []  # the paper's 1000 epochs are plenty
    assert SauronConfig(tau_init=0.25, rho=2, kappa=3).schedule_problems(3) == []  # prunes from the first epoch
    assert condition_counts([5, 4, 3, 2, 1], [5, 4, 3, 2, 1], rho=2) == (0, 0)  # still learning: C1, C2 never
    assert condition_counts([5, 4, 4.5, 4.2], [3, 2, 2.5, 2.4], rho=2) == (2, 2)


def test_a_variant_fixes_what_its_name_says():
    """nnUNetTrainerSauron_lambda0 means lambda = 0: the plans entry or the variable may set the other settings,
    but not a different lambda (a run named lambda0 that used lambda 1 would be mislabelled)."""
    cfg = SauronConfig.resolve(environ={ENV_VAR: "lambda=0,kappa=4"}, fixed={"lambda": 0.0})
    assert cfg.lambda_ == 0.0 and cfg.kappa == 4
    with pytest.raises(NnUNetPruneError, match="lambda=0.0, which this trainer variant fixes"):
        SauronConfig.resolve(environ={ENV_VAR: "lambda=1"}, fixed={"lambda": 0.0})
    with pytest.raises(NnUNetPruneError, match="plans.*lambda=2 contradicts"):
        SauronConfig.resolve({"nnunet_prune": {"sauron": {"lambda": 2}}}, fixed={"lambda": 0.0})
    from nnunet_prune.nnunet.trainers.sauron import nnUNetTrainerSauron_lambda1

    assert nnUNetTrainerSauron_lambda1.method_defaults == {"lambda": 1.0}
