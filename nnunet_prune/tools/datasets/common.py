"""Writing nnU-Net raw datasets: checks that touch nothing on failure, NIfTI output, dataset.json."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnunet_prune import NnUNetPruneError
from nnunet_prune.core.outputs import make_temp_dir

NNUNET_FOLDER_VARS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")


@dataclass
class RawCase:
    """One case: image (z, y, x) or (y, x), optional label of the same shape, spacing in the same axis order."""

    identifier: str
    image: np.ndarray
    label: np.ndarray
    spacing: tuple[float, ...]


def raw_folder(raw: str | os.PathLike | None = None) -> Path:
    """nnU-Net's raw-data folder: ``raw`` if given, else ``$nnUNet_raw``; a clear error if neither is set."""
    value = raw if raw is not None else os.environ.get("nnUNet_raw")
    if not value:
        raise NnUNetPruneError(
            "nnUNet_raw is not set, so there is nowhere to write the dataset. Set the nnU-Net folders first, e.g.\n"
            "  export nnUNet_raw=$PWD/nnUNet_raw nnUNet_preprocessed=$PWD/nnUNet_preprocessed "
            "nnUNet_results=$PWD/nnUNet_results\n"
            "or pass --raw DIR.")
    return Path(value).expanduser().resolve()


def check_dataset_id_free(dataset_id: int, raw: Path) -> None:
    """Fail if ``dataset_id`` names a dataset in nnUNet_raw, nnUNet_preprocessed or nnUNet_results."""
    if not 1 <= dataset_id <= 999:
        raise NnUNetPruneError(f"Dataset ID must be between 1 and 999 (nnU-Net uses three digits), got {dataset_id}.")
    folders = [raw] + [Path(os.environ[v]) for v in NNUNET_FOLDER_VARS[1:] if os.environ.get(v)]
    pattern = re.compile(rf"^Dataset{dataset_id:03d}_")
    for folder in folders:
        if folder.is_dir():
            used = sorted(p.name for p in folder.iterdir() if pattern.match(p.name))
            if used:
                raise NnUNetPruneError(
                    f"Dataset ID {dataset_id} is already used by {used[0]} in {folder}. Nothing was written. "
                    f"Choose a free ID (-d), or delete that dataset first if you really want to replace it.")


def check_writable(folder: Path) -> None:
    """Fail unless ``folder`` exists (or can be created) and files can be written into it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise NnUNetPruneError(f"Cannot write to {folder} ({e.strerror}). Nothing was written. Point nnUNet_raw "
                               f"(or --raw) at a folder you can write to.") from None


def write_nifti(array: np.ndarray, spacing, path: Path, dtype) -> None:
    """Write a (z, y, x) array as NIfTI so that nnU-Net's NibabelIO reads it back as (z, y, x) with ``spacing``."""
    import nibabel

    affine = np.diag([*[float(s) for s in spacing[::-1]], 1.0])
    nibabel.save(nibabel.Nifti1Image(np.ascontiguousarray(array.transpose(2, 1, 0)).astype(dtype), affine),
                 str(path))


def write_raw_dataset(dataset_id: int, name: str, channel_names: dict[str, str], labels: dict[str, int],
                      train: list[RawCase], test: list[RawCase], raw: str | os.PathLike | None = None,
                      description: str = "", extra: dict | None = None) -> Path:
    """Write an nnU-Net raw dataset (imagesTr, labelsTr, imagesTs, labelsTs, dataset.json).

    Everything is written into a temporary folder next to the target and renamed at the end, so a failure
    leaves nothing behind. 2D cases are stored as (1, y, x) volumes, as nnU-Net expects for 2D NIfTI data.
    """
    root = raw_folder(raw)
    check_dataset_id_free(dataset_id, root)
    check_writable(root)
    target = root / f"Dataset{dataset_id:03d}_{name}"
    tmp = make_temp_dir(root, prefix=f".{target.name}.")  # ordinary permissions, unlike mkdtemp's 0700
    try:
        for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
            (tmp / sub).mkdir()
        for split, cases in (("Tr", train), ("Ts", test)):
            for case in cases:
                image, label, spacing = case.image, case.label, tuple(case.spacing)
                if image.ndim == 2:
                    image, label, spacing = image[None], label[None], (1.0, *spacing)
                write_nifti(image, spacing, tmp / f"images{split}" / f"{case.identifier}_0000.nii.gz", np.float32)
                write_nifti(label, spacing, tmp / f"labels{split}" / f"{case.identifier}.nii.gz", np.uint8)
        meta = {
            "channel_names": channel_names,
            "labels": labels,
            "numTraining": len(train),
            "file_ending": ".nii.gz",
            "overwrite_image_reader_writer": "NibabelIO",
            "name": name,
            "description": description,
            "numTest": len(test),
            **(extra or {}),
        }
        (tmp / "dataset.json").write_text(json.dumps(meta, indent=2))
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
