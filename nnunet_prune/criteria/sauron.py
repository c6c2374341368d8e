"""Sauron's feature-map distances (arXiv:2209.13590 §3.2-3.3).

Shapes: feature maps are (B, C, *spatial) for 2D or 3D. Distances are root-mean-square differences over the
pooled map, so layers at different resolutions are comparable.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

EPS = 1e-8


def _window(axis: int, start: int, stop: int | None, step: int = 1) -> tuple:
    return (slice(None),) * axis + (slice(start, stop, step),)


class _AvgPool(torch.autograd.Function):
    """Average pooling, window = stride = ``kernel`` (floor mode), as strided slice sums one axis at a time.

    On the CPU ATen's avg_pool2d/3d kernels run far below memory bandwidth for these small windows: summing the
    ``k`` interleaved slices of each axis and dividing by the window size once is 4-5x faster in 2D; the backward
    spreads the gradient over each window with ``k`` strided copies per axis, ~2x faster than ATen's avg_pool
    backward (and than a nearest-neighbour upsampling, except for the largest maps). Same values up to the
    summation order (a few ulp). See docs/performance.md, section 4.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, kernel: tuple[int, ...]) -> torch.Tensor:
        ctx.kernel, ctx.shape = kernel, x.shape
        y = x
        for axis, k in enumerate(kernel, start=2):
            if k == 1:
                continue
            n = y.shape[axis] // k
            acc = y[_window(axis, 0, k * n, k)] + y[_window(axis, 1, k * n, k)]
            for i in range(2, k):
                acc += y[_window(axis, i, k * n, k)]
            y = acc
        return y.div_(math.prod(kernel))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        g = grad / math.prod(ctx.kernel)
        for axis in range(len(ctx.kernel) + 1, 1, -1):  # innermost axis first: the small tensors are written first
            k = ctx.kernel[axis - 2]
            if k == 1:
                continue
            n, size = g.shape[axis], ctx.shape[axis]
            shape = list(g.shape)
            shape[axis] = size
            out = g.new_empty(shape)
            for i in range(k):
                out[_window(axis, i, k * n, k)] = g
            if size > k * n:  # floor mode: the cut-off rows get no gradient
                out[_window(axis, k * n, None)] = 0
            g = out
        return g, None


def pool(feature_map: torch.Tensor, omega: int) -> torch.Tensor:
    """phi(O; omega): average pooling with window and stride omega (clipped to axes shorter than omega)."""
    spatial = feature_map.shape[2:]
    kernel = tuple(max(1, min(omega, s)) for s in spatial)
    if all(k == 1 for k in kernel):
        return feature_map
    if feature_map.dtype in (torch.float32, torch.float64) and not torch.compiler.is_compiling():
        return _AvgPool.apply(feature_map, kernel)
    # half precision (autocast): ATen's kernel accumulates in float and rounds once; under torch.compile (the
    # hooks are traced with the network) the compiler generates the pooling itself
    pooling = F.avg_pool2d if len(spatial) == 2 else F.avg_pool3d
    return pooling(feature_map, kernel, kernel)


# ------------------------------------------------------------------ direct definitions (autograd; the references)
def minmax_normalise(pooled: torch.Tensor) -> torch.Tensor:
    """Scale every (sample, channel) map to [0, 1] over all its spatial axes; a constant map becomes 0."""
    flat = pooled.flatten(2)
    lo = flat.amin(dim=2, keepdim=True)
    hi = flat.amax(dim=2, keepdim=True)
    return ((flat - lo) / (hi - lo + EPS)).view_as(pooled)


def rms_distance_to(pooled: torch.Tensor, reference: int) -> torch.Tensor:
    """(B, C): RMS over space of every channel's difference to channel ``reference`` (the reference's own is 0)."""
    flat = pooled.flatten(2)
    d = (flat - flat[:, reference:reference + 1]).square().mean(dim=2).add(EPS).sqrt()
    return d.masked_fill(_onehot(flat.shape[1], reference, flat.device)[None], 0.0)


def _onehot(n: int, i: int, device) -> torch.Tensor:
    m = torch.zeros(n, dtype=torch.bool, device=device)
    m[i] = True
    return m


# ------------------------------------------------------------------ fused versions (what training runs)
def _rms_to_reference(flat: torch.Tensor, reference: int) -> torch.Tensor:
    """(B, C) like :func:`rms_distance_to` of (B, C, N) maps, without autograd: the differences once, their sum of
    squares by ``vector_norm`` (no squared tensor, no mask)."""
    diff = flat - flat[:, reference:reference + 1]
    d = torch.linalg.vector_norm(diff, dim=2).square_().div_(flat.shape[2]).add_(EPS).sqrt_()
    d[:, reference] = 0.0
    return d


def _exact_matmul(t: torch.Tensor) -> bool:
    """Whether a float32 matrix product is computed in float32 (not TF32 / bf16 passes: then sums are used)."""
    return t.dtype != torch.float32 or torch.get_float32_matmul_precision() == "highest"


class _DeltaOptLayer(torch.autograd.Function):
    """Eq. (2) of one layer, ``rms_distance_to(minmax_normalise(pooled), 0).mean()``, with a hand-written backward.

    Autograd of the direct definition stores and walks ~10 (B, C, N) intermediates (normalised maps, differences,
    squares, masks of amin/amax, zero-filled slice gradients, ...). Here the forward keeps only the differences
    to channel 0, and forward and backward take a handful of passes over them. Same values up to the summation
    order; the same gradient, including amin/amax's rule of sharing the gradient of the min (max) evenly between
    tied positions (constant maps: every position ties).
    """

    @staticmethod
    def forward(ctx, pooled: torch.Tensor) -> torch.Tensor:
        with torch.autocast(pooled.device.type, enabled=False):  # called inside the loss, maybe under autocast
            flat = pooled.flatten(2)
            b, c, n = flat.shape
            lo = flat.amin(dim=2, keepdim=True)
            hi = flat.amax(dim=2, keepdim=True)
            den = hi - lo + EPS
            diff = (flat - lo).div_(den)  # the normalised maps y ...
            y0 = diff[:, :1].clone()
            diff.sub_(y0)  # ... minus the reference channel's, in place
            sq = torch.linalg.vector_norm(diff, dim=2).square_()  # sum_n diff^2
            d = sq.div(n).add_(EPS).sqrt_()
            d[:, 0] = 0.0
            # sum_n diff * y (= sum_n diff^2 + sum_n diff * y0) and sum_n diff: for the gradient w.r.t. lo and hi.
            # (B, N, 1) as a transposed (B, 1, N): MKL takes its fast matrix-vector path for this layout only
            sum_dy = (torch.bmm(diff, y0.transpose(1, 2)).squeeze(2) if _exact_matmul(diff)
                      else torch.linalg.vecdot(diff, y0, dim=2)).add_(sq)
            sum_d = diff.sum(dim=2)
        ctx.save_for_backward(flat, lo, hi, den, y0, diff, d, sum_dy, sum_d)
        ctx.shape = pooled.shape
        return d.mean()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        flat, lo, hi, den, y0, diff, d, sum_dy, sum_d = ctx.saved_tensors
        b, c, n = flat.shape
        with torch.autocast(flat.device.type, enabled=False):
            # d_c = sqrt(mean_n diff_c^2 + EPS): d d_c / d diff_cn = diff_cn / (n d_c); the reference's d is 0
            a = (grad / (b * c)) / (n * d)  # (B, C)
            a[:, 0] = 0.0
            # gradient g w.r.t. the normalised maps y: a_c diff_c for c >= 1, minus their sum for channel 0
            g0 = (torch.bmm(a.unsqueeze(1), diff) if _exact_matmul(diff)  # (B, 1, N)
                  else (diff * a.unsqueeze(2)).sum(dim=1, keepdim=True)).neg_()
            sum_g = (a * sum_d).unsqueeze(2)  # sum_n g, (B, C, 1)
            sum_gy = (a * sum_dy).unsqueeze(2)  # sum_n g * y
            sum_g[:, :1] = g0.sum(dim=2, keepdim=True)
            sum_gy[:, :1] = torch.linalg.vecdot(g0, y0, dim=2).unsqueeze(2)
            # y = (x - lo) / den with den = hi - lo + EPS
            gx = diff * (a.unsqueeze(2) / den)
            gx[:, :1] = g0 / den[:, :1]
            g_lo = (sum_gy - sum_g) / den
            g_hi = sum_gy.neg_().div_(den)
            for extreme, g_extreme in ((lo, g_lo), (hi, g_hi)):
                tie = torch.eq(flat, extreme, out=torch.empty_like(flat))  # amin / amax share it between ties
                gx.addcmul_(tie, g_extreme / tie.sum(dim=2, keepdim=True))
        return gx.view(ctx.shape)


def delta_opt_layer(pooled: torch.Tensor) -> torch.Tensor:
    """Eq. (2) for one layer: mean over batch and channels of the distance of every min-max normalised channel
    to channel 0 (the reference t). A single-channel layer contributes 0."""
    if pooled.shape[1] < 2:
        return pooled.new_zeros(())
    return _DeltaOptLayer.apply(pooled)


def delta_opt(pooled_maps: list[torch.Tensor]) -> torch.Tensor | None:
    """Eq. (2): delta_opt averaged over layers (None if there are no layers)."""
    if not pooled_maps:
        return None
    return torch.stack([delta_opt_layer(p) for p in pooled_maps]).mean()


def prune_distances(pooled: torch.Tensor, reference: int) -> torch.Tensor:
    """Eq. (3) before normalisation, for one batch: (C,) mean over samples of the distance of every channel to
    channel ``reference`` on the raw (not min-max normalised) pooled maps. Statistics: no gradient."""
    with torch.no_grad():
        return _rms_to_reference(pooled.flatten(2), reference).mean(dim=0)


def normalise_by_max(distances: torch.Tensor) -> torch.Tensor:
    """delta_prune = d / max(d) in [0, 1] (all zeros if every channel equals the reference)."""
    top = distances.max()
    return distances / top if top > 0 else torch.zeros_like(distances)
