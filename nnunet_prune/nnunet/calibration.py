"""What post-training quantization needs from the user's nnU-Net folders: each fold's training and validation cases
(``splits_final.json``), calibration patches cut the way nnU-Net's predictor cuts them, the validation cases' raw
images and their reference segmentations (``gt_segmentations``).

Calibration patches come from the fold's own **training** cases (never its validation cases, on which the INT8 model
is then checked), preprocessed as nnU-Net preprocessed them (``nnUNet_preprocessed/<dataset>/<data identifier>``), no
augmentation, padded and tiled exactly as ``nnUNetPredictor.predict_sliding_window_return_logits`` does (constant
zero padding to the patch size, ``compute_steps_for_sliding_window`` at the step size, a 2D configuration slice by
slice). ``n`` patches are drawn without replacement from every tile of every training case, with a fixed seed (the
same patches on every run).

Sources: NNCF's post-training quantization (calibration on a few hundred representative inputs; its default subset
is 300); MedPTQ (nnU-Net INT8 on TensorRT) calibrates on training images, as here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nnunet_prune import NnUNetPruneError
from nnunet_prune.nnunet.modelfolder import ModelFolder
from nnunet_prune.nnunet.settings import nnunet_folders

#: patches per fold by default (NNCF's default subset is 300; 100 sliding-window tiles calibrate a U-Net well and
#: keep calibration of a 3D fold within a few GB)
DEFAULT_PATCHES = 100
#: the predictor's default tile step (``nnUNetv2_predict -step_size``)
STEP_SIZE = 0.5


@dataclass
class FoldCases:
    """The cases of one fold (``splits_final.json``): training cases (calibration) and validation cases (the Dice
    check); the raw images of each validation case (one file per input channel, nnU-Net's names)."""

    fold: int | str
    train: list[str]
    validation: list[str]
    images: dict[str, list[Path]] = field(default_factory=dict)


@dataclass
class DatasetFolders:
    """Where the model folder's dataset lies: its preprocessed data (of the configuration), ``splits_final.json``,
    ``gt_segmentations`` and the raw ``imagesTr``."""

    data: Path
    splits: Path
    reference: Path
    images: Path
    file_ending: str


def dataset_folders(model: ModelFolder, purpose: str = "INT8 calibration and its Dice check") -> DatasetFolders:
    """The folders of ``model``'s dataset, found through nnU-Net's variables and checked; ``purpose`` (what needs
    them) is named in the errors.

    Raises:
        NnUNetPruneError: ``nnUNet_preprocessed`` or ``nnUNet_raw`` unset, or a folder or file missing (naming it and
            the command that makes it).
    """
    folders = nnunet_folders()
    name = model.plans["dataset_name"]
    missing = [v for v in ("nnUNet_raw", "nnUNet_preprocessed") if not folders[v]]
    if missing:
        raise NnUNetPruneError(f"The dataset {name} is needed for {purpose}: set "
                               f"{' and '.join(missing)} (nnU-Net's folders the model was trained from).")
    pre = Path(folders["nnUNet_preprocessed"]) / name
    out = DatasetFolders(pre / model.configuration_manager.data_identifier, pre / "splits_final.json",
                         pre / "gt_segmentations", Path(folders["nnUNet_raw"]) / name / "imagesTr",
                         model.dataset_json.get("file_ending", ".nii.gz"))
    plan = f"nnUNetv2_plan_and_preprocess -d {name} with the model's plans"
    for path, what in ((out.data, f"the preprocessed data of configuration {model.configuration_name}: {plan}"),
                       (out.splits, "the fold split nnUNetv2_train wrote when the model was trained: copy it from "
                                    "where it was trained"),
                       (out.reference, f"the reference segmentations nnU-Net's preprocessing writes: {plan}"),
                       (out.images, "the raw training images of the dataset (nnU-Net's dataset conversion)")):
        if not path.exists():
            raise NnUNetPruneError(f"{path} is missing ({what}). The dataset the model was trained on is needed "
                                   f"for {purpose}.")
    return out


def fold_cases(model: ModelFolder, folders: DatasetFolders, folds: Sequence | None = None) -> list[FoldCases]:
    """The training and validation cases of each of ``folds`` (default: the model's folds), with the raw image files
    of the validation cases.

    Raises:
        NnUNetPruneError: fold ``all`` (no validation case to check on), a fold the split does not have, no training
            or no validation case, or a validation image missing from ``imagesTr``.
    """
    try:
        splits = json.loads(folders.splits.read_text())
        splits = [{"train": list(s["train"]), "val": list(s["val"])} for s in splits]
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise NnUNetPruneError(f"{folders.splits} is not nnU-Net's fold split (a list of {{'train': [...], 'val': "
                               f"[...]}}; {type(e).__name__}: {e}).") from None
    channels = len(model.dataset_json.get("channel_names", model.dataset_json.get("modality", {"0": ""})))
    out = []
    for fold in model.folds if folds is None else folds:
        if str(fold) == "all":
            raise NnUNetPruneError("fold all has no validation cases to check the INT8 model's Dice on: export the "
                                   "numbered folds (-f 0 1 2 3 4) with --int8.")
        if not 0 <= int(fold) < len(splits):
            raise NnUNetPruneError(f"fold {fold}: {folders.splits} has {len(splits)} folds.")
        split = splits[int(fold)]
        cases = FoldCases(fold, sorted(split["train"]), sorted(split["val"]))
        if not cases.train or not cases.validation:
            raise NnUNetPruneError(f"fold {fold}: no {'training' if not cases.train else 'validation'} case in "
                                   f"{folders.splits}.")
        for case in cases.validation:
            files = [folders.images / f"{case}_{c:04d}{folders.file_ending}" for c in range(channels)]
            absent = [f.name for f in files if not f.is_file()]
            if absent:
                raise NnUNetPruneError(f"fold {fold}: validation case {case} has no {', '.join(absent)} in "
                                       f"{folders.images}.")
            if not (folders.reference / f"{case}{folders.file_ending}").is_file():
                raise NnUNetPruneError(f"fold {fold}: validation case {case} has no reference segmentation "
                                       f"{case}{folders.file_ending} in {folders.reference}.")
            cases.images[case] = files
        out.append(cases)
    return out


def tile_slicers(shape: Sequence[int], patch_size: Sequence[int], step_size: float = STEP_SIZE) -> list[tuple]:
    """The slicers of nnU-Net's sliding window over a (padded) image of spatial ``shape`` (``(C, *shape)`` data):
    as ``nnUNetPredictor._internal_get_sliding_window_slicers`` (a 2D patch on 3D data: every slice)."""
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window

    shape, patch = tuple(shape), tuple(patch_size)
    if len(patch) == len(shape) - 1:
        steps = compute_steps_for_sliding_window(shape[1:], patch, step_size)
        grid = np.stack(np.meshgrid(*steps, indexing="ij"), -1).reshape(-1, len(patch))
        return [(slice(None), d, *[slice(s, s + p) for s, p in zip(corner, patch)])
                for d in range(shape[0]) for corner in grid]
    steps = compute_steps_for_sliding_window(shape, patch, step_size)
    grid = np.stack(np.meshgrid(*steps, indexing="ij"), -1).reshape(-1, len(patch))
    return [(slice(None), *[slice(s, s + p) for s, p in zip(corner, patch)]) for corner in grid]


def calibration_patches(model: ModelFolder, folders: DatasetFolders, cases: FoldCases, n: int = DEFAULT_PATCHES,
                        seed: int = 0) -> list[np.ndarray]:
    """``n`` sliding-window patches of the fold's preprocessed training cases (module docstring), each float32
    ``(1, C, *patch_size)``; fewer when the cases hold fewer tiles.

    Raises:
        NnUNetPruneError: ``n`` < 1, or a training case missing from the preprocessed data.
    """
    from acvl_utils.cropping_and_padding.padding import pad_nd_image
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    if n < 1:
        raise NnUNetPruneError(f"--calibration-patches must be >= 1; got {n}.")
    patch = list(model.patch_size)
    try:
        dataset = infer_dataset_class(str(folders.data))(str(folders.data), list(cases.train))
    except AssertionError as e:  # nnU-Net's own check of the folder's file types
        raise NnUNetPruneError(f"{folders.data} holds no readable preprocessed data ({e}): run "
                               f"nnUNetv2_plan_and_preprocess for the model's plans.") from None
    tiles = []  # (case, slicer)
    shapes = {}
    for case in cases.train:
        try:
            data = dataset.load_case(case)[0]
        except (FileNotFoundError, OSError) as e:
            raise NnUNetPruneError(f"training case {case} of fold {cases.fold} is not in {folders.data} ({e}).") \
                from None
        padded = [max(s, p) for s, p in zip(data.shape[-len(patch):], patch)]
        shapes[case] = (*data.shape[1:len(data.shape) - len(patch)], *padded)
        tiles += [(case, s) for s in tile_slicers(shapes[case], patch)]
    chosen = sorted(np.random.default_rng(seed).permutation(len(tiles))[:n].tolist())
    out, loaded = [], {}
    for i in chosen:
        case, slicer = tiles[i]
        if case not in loaded:
            loaded.clear()  # one case in memory at a time (tiles are sorted by case)
            image = np.asarray(dataset.load_case(case)[0], dtype=np.float32)
            loaded[case] = pad_nd_image(image, patch, "constant", {"value": 0}, False, None)
        out.append(np.ascontiguousarray(loaded[case][slicer][None], dtype=np.float32))
    return out


def link_images(cases: FoldCases, target: str | os.PathLike) -> Path:
    """A folder ``target`` of symbolic links to the fold's validation images (nnU-Net's input names), what
    ``nnUNetv2_predict -i`` reads. Returns it."""
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    import shutil

    for files in cases.images.values():
        for f in files:
            try:
                (target / f.name).symlink_to(f.resolve())
            except OSError:  # a file system without symbolic links: copy
                shutil.copy2(f, target / f.name)
    return target
