"""A procedurally generated CT-like phantom: body, organ, lesion and vessel, with noise and intensity variation.

Offline, deterministic for a seed, 2D or 3D. Intensities are in Hounsfield-like units so that nnU-Net picks its
CT normalisation. Labels: 1 organ (a large ellipsoid), 2 lesion (a small hypodense blob inside the organ, absent
in some cases), 3 vessel (a bright curved tube). Per case: random geometry, global intensity offset and scale, a
smooth multiplicative bias field, Gaussian noise of random strength and a slight blur (partial volume).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from nnunet_prune import NnUNetPruneError
from nnunet_prune.tools.datasets.common import RawCase, write_raw_dataset

LABELS = {"background": 0, "organ": 1, "lesion": 2, "vessel": 3}
DEFAULT_SIZE = {2: 64, 3: 32}


def _rotation(rng: np.random.Generator, dim: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(dim, dim)))
    return q * np.sign(np.diag(r))


def _ellipsoid(grid: np.ndarray, center, radii, rot) -> np.ndarray:
    """Boolean mask of a rotated ellipsoid; grid is (dim, *shape) in normalised coordinates."""
    d = np.tensordot(rot.T, grid - np.asarray(center).reshape(-1, *[1] * (grid.ndim - 1)), axes=1)
    return (sum((d[i] / radii[i]) ** 2 for i in range(len(radii)))) <= 1.0


def _tube(shape, rng: np.random.Generator, radius_vox: float) -> np.ndarray:
    """Boolean mask of a smooth random curve (quadratic Bezier through the volume) of the given radius."""
    dim = len(shape)
    p0, p2 = rng.uniform(0.1, 0.9, size=(2, dim))
    p1 = rng.uniform(0.2, 0.8, size=dim)
    t = np.linspace(0, 1, 8 * max(shape))[:, None]
    pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2
    idx = np.clip(np.round(pts * (np.array(shape) - 1)).astype(int), 0, np.array(shape) - 1)
    centerline = np.zeros(shape, dtype=bool)
    centerline[tuple(idx.T)] = True
    return ndimage.distance_transform_edt(~centerline) <= radius_vox


def make_case(seed: int, index: int, dim: int = 2, size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One phantom image (float32, HU-like) and its label map (uint8), deterministic in (seed, index)."""
    rng = np.random.default_rng([seed, index])
    size = size or DEFAULT_SIZE[dim]
    shape = (size,) * dim
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))

    body = _ellipsoid(grid, rng.normal(0, 0.03, dim), rng.uniform(0.8, 0.95, dim), _rotation(rng, dim))
    organ = _ellipsoid(grid, rng.uniform(-0.2, 0.2, dim), rng.uniform(0.38, 0.55, dim), _rotation(rng, dim)) & body
    label = np.zeros(shape, dtype=np.uint8)
    label[organ] = 1
    if rng.uniform() < 0.85 and organ.any():
        inside = np.argwhere(ndimage.binary_erosion(organ, iterations=max(1, size // 16)))
        if len(inside):
            c = inside[rng.integers(len(inside))] / (np.array(shape) - 1) * 2 - 1
            lesion = _ellipsoid(grid, c, rng.uniform(0.15, 0.25, dim), _rotation(rng, dim)) & organ
            label[lesion] = 2
    vessel = _tube(shape, rng, radius_vox=rng.uniform(0.025, 0.045) * size) & body
    label[vessel] = 3

    image = np.full(shape, -1000.0)
    image[body] = 0.0
    image[label == 1] = 60.0
    image[label == 2] = -50.0  # hypodense: 110 HU below the organ, learnable within the demo's short budget
    image[label == 3] = 180.0
    image = ndimage.gaussian_filter(image, 0.7)  # partial volume
    bias = 1 + 0.08 * sum(np.cos(np.pi * rng.uniform(0.5, 1.5) * grid[i] + rng.uniform(0, 2 * np.pi))
                          for i in range(dim)) / dim
    image = image * bias * rng.uniform(0.92, 1.08) + rng.normal(0, 12)
    image += rng.normal(0, rng.uniform(8, 22), size=shape)
    return image.astype(np.float32), label


def create_synthetic_dataset(dataset_id: int, dim: int = 2, cases: int = 20, test_cases: int = 5, seed: int = 0,
                             size: int | None = None, name: str | None = None, raw=None):
    """Write the phantom as an nnU-Net raw dataset and return its folder.

    ``cases`` training cases go to imagesTr/labelsTr, ``test_cases`` held-out cases to imagesTs/labelsTs.
    """
    if dim not in (2, 3):
        raise NnUNetPruneError(f"--dim must be 2 or 3, got {dim}.")
    if cases < 2:
        raise NnUNetPruneError(f"--cases {cases}: nnU-Net needs at least 2 training cases (5 or more for its "
                               f"5-fold cross-validation).")
    if test_cases < 0:
        raise NnUNetPruneError(f"--test-cases must be >= 0, got {test_cases}.")
    if size is not None and size < 8:
        raise NnUNetPruneError(f"--size {size}: use at least 8 voxels per edge.")
    spacing = (1.0,) * dim
    train = [RawCase(f"phantom_{i:03d}", *make_case(seed, i, dim, size), spacing) for i in range(cases)]
    test = [RawCase(f"phantom_{i:03d}", *make_case(seed, i, dim, size), spacing)
            for i in range(cases, cases + test_cases)]
    return write_raw_dataset(
        dataset_id, name or f"Synthetic{dim}D", {"0": "CT"}, LABELS, train, test, raw,
        description=f"nnunet-prune synthetic CT-like phantom, {dim}D, seed {seed}",
        extra={"nnunet_prune": {"generator": "synthetic", "dim": dim, "seed": seed,
                                "size": size or DEFAULT_SIZE[dim]}})
