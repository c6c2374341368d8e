"""A real contrast CT with liver and tumour labels: a 128^3 crop of LiTS case 117, as an nnU-Net raw dataset.

The crop ships inside the MIT-licensed PyPI wheel ``liver-ct-segmentation-package==1.6.0`` as two raw MRC files
(1024-byte header, then float32 image / uint16 labels, 128x128x128; labels 0 background, 1 liver, 2 tumour). The
wheel is fetched with ``pip download --no-deps`` into a cache and read directly from the zip: it is never
installed (its own requirements pin an ancient torch) and no data is committed to this repository.

The crop is cut into slabs along its first axis; each slab is one nnU-Net case. Every ``test_every``-th slab is
held out (imagesTs/labelsTs). Adjacent slabs come from one patient, so held-out Dice is optimistic: this dataset
is for demonstrations and method comparisons, not for clinical claims.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

from nnunet_prune import NnUNetPruneError
from nnunet_prune.tools.datasets.common import (
    RawCase,
    check_dataset_id_free,
    check_writable,
    raw_folder,
    write_raw_dataset,
)

PACKAGE = "liver-ct-segmentation-package"
VERSION = "1.6.0"
WHEEL = "liver_ct_segmentation_package-1.6.0-py2.py3-none-any.whl"
MEMBERS = {"image": "liver_ct_segmentation_package/data/img_117.mrc",
           "label": "liver_ct_segmentation_package/data/lab_117.mrc"}
LABELS = {"background": 0, "liver": 1, "tumour": 2}
MRC_MODES = {0: np.int8, 1: np.int16, 2: np.float32, 6: np.uint16}


def cache_folder() -> Path:
    """Where the data wheel is cached: ``$NNUNET_PRUNE_CACHE``, else ``$XDG_CACHE_HOME/nnunet-prune``, else
    ``~/.cache/nnunet-prune`` (not created here)."""
    base = os.environ.get("NNUNET_PRUNE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "nnunet-prune")
    return Path(base)


def fetch_wheel(wheel: str | os.PathLike | None = None) -> Path:
    """Path of the wheel: ``wheel`` if given, else the cached copy, else downloaded from PyPI into the cache."""
    if wheel is not None:
        path = Path(wheel).expanduser()
        if not path.is_file():
            raise NnUNetPruneError(f"--wheel {path}: no such file.")
        return path
    cached = cache_folder() / WHEEL
    if cached.is_file():
        return cached
    cached.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "-d", str(cached.parent), f"{PACKAGE}=={VERSION}"]
    print(f"Downloading {PACKAGE}=={VERSION} (4.5 MB, MIT licence) from PyPI into {cached.parent} ...")
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as e:
        result = None
        detail = str(e)
    else:
        detail = (result.stderr or result.stdout).strip().splitlines()[-1:] or [""]
        detail = detail[0]
    if result is None or result.returncode != 0 or not cached.is_file():
        raise NnUNetPruneError(
            f"Could not download {PACKAGE}=={VERSION} from PyPI ({detail}).\n"
            f"Without network access: on a machine with internet run\n"
            f"  pip download --no-deps {PACKAGE}=={VERSION} -d .\n"
            f"copy {WHEEL} here and pass it with --wheel PATH (or put it into {cached.parent}).\n"
            f"The synthetic phantom (`nnunet-prune dataset synthetic`) needs no network.")
    return cached


def read_mrc(data: bytes) -> tuple[np.ndarray, tuple[float, float, float] | None]:
    """Decode an MRC volume: array of shape (nz, ny, nx) and the voxel size in the same order if the header has one."""
    if len(data) < 1024:
        raise ValueError("not an MRC file (shorter than its 1024-byte header)")
    nx, ny, nz, mode = struct.unpack("<4i", data[:16])
    mx, my, mz = struct.unpack("<3i", data[28:40])
    cell = struct.unpack("<3f", data[40:52])
    extended = struct.unpack("<i", data[92:96])[0]
    if mode not in MRC_MODES:
        raise ValueError(f"unsupported MRC mode {mode}")
    dtype = np.dtype(MRC_MODES[mode])
    start = 1024 + max(extended, 0)
    n = nx * ny * nz
    array = np.frombuffer(data, dtype=dtype.newbyteorder("<"), count=n, offset=start).reshape(nz, ny, nx)
    spacing = None
    if min(mx, my, mz) > 0 and min(cell) > 0:
        spacing = (cell[2] / mz, cell[1] / my, cell[0] / mx)
    return array, spacing


def load_volume(wheel: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Image (float32, HU), label (uint8) and spacing of the 128^3 crop, read from the wheel."""
    try:
        with zipfile.ZipFile(wheel) as z:
            image, spacing = read_mrc(z.read(MEMBERS["image"]))
            label, _ = read_mrc(z.read(MEMBERS["label"]))
    except (zipfile.BadZipFile, KeyError, ValueError) as e:
        raise NnUNetPruneError(f"{wheel} is not the expected {PACKAGE} {VERSION} wheel ({e}). Delete it and run "
                               f"again to download a fresh copy.") from None
    if image.shape != label.shape:
        raise NnUNetPruneError(f"image {image.shape} and label {label.shape} in {wheel} differ in shape.")
    # the MRC header of this crop carries no voxel size; the crop was resampled to ~1 mm by its authors
    return image.astype(np.float32), label.astype(np.uint8), spacing or (1.0, 1.0, 1.0)


def create_lits117_dataset(dataset_id: int, slab: int = 8, test_every: int = 4, wheel=None, raw=None,
                           name: str = "LiTS117") -> Path:
    """Write the LiTS-117 crop as an nnU-Net raw dataset of ``128 / slab`` slab cases and return its folder."""
    if slab < 1 or 128 % slab:
        raise NnUNetPruneError(f"--slab must divide 128 (e.g. 4, 8, 16, 32), got {slab}.")
    if test_every < 2:
        raise NnUNetPruneError("--test-every must be at least 2 (every n-th slab is held out).")
    root = raw_folder(raw)  # the ID and the folder before the download (write_raw_dataset checks them again)
    check_dataset_id_free(dataset_id, root)
    check_writable(root)
    path = fetch_wheel(wheel)
    image, label, spacing = load_volume(path)
    train, test = [], []
    for i in range(image.shape[0] // slab):
        sl = slice(i * slab, (i + 1) * slab)
        case = RawCase(f"lits117_slab{i:02d}", image[sl], label[sl], spacing)
        (test if i % test_every == test_every - 1 else train).append(case)
    return write_raw_dataset(
        dataset_id, name, {"0": "CT"}, LABELS, train, test, raw,
        description=f"LiTS case 117, 128^3 crop from {PACKAGE} {VERSION} (MIT), slabs of {slab} slices",
        extra={"nnunet_prune": {"generator": "lits117", "slab": slab, "test_every": test_every},
               "licence": "MIT (liver-ct-segmentation-package); LiTS data: CC BY-NC-SA 4.0"})
