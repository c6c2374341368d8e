"""``nnunet-prune pseudo-label``: the FLARE pseudo-label recipe with stock nnU-Net commands.

A trained model (``$nnUNet_results/DatasetD_x/T__P__C``) segments a folder of unlabelled images (nnU-Net's raw
naming, ``<case>_0000<file ending>`` per channel) with stock ``nnUNetv2_predict``, once per fold with
``--save_probabilities``; the folds' probabilities are averaged and turned into one segmentation per case with
nnU-Net's own ``LabelManager.convert_probabilities_to_segmentation`` (labels or regions), written with the plans' image
reader/writer. The result is a NEW nnU-Net raw dataset ``$nnUNet_raw/Dataset<NEW>_<name>``: every labelled training
case of D (copied) plus the pseudo-labelled cases, a ``dataset.json`` (the source's, ``numTraining`` updated, the key
:data:`MARK` added) and ``pseudo_labels.csv`` (:data:`TABLE`). Stock ``nnUNetv2_plan_and_preprocess`` and
``nnUNetv2_train`` then train on it (e.g. a small model, as FLARE's winners did).

**Agreement** of a case (:func:`ensemble_agreement`): the voxels where every fold's own segmentation gives the same
foreground label, divided by the voxels that any fold labels foreground (1.0 when no fold predicts foreground; 1.0
with one fold, where it says nothing). ``min_agreement`` leaves cases below it out.

Every input is checked before anything is predicted or written (:func:`check_request`); the new dataset ID must be
unused in all of nnU-Net's folders, so nothing is ever overwritten. The files written are recorded in the new
folder's manifest (:mod:`nnunet_prune.core.outputs`); if the run fails (or is interrupted) the prediction work folder
is deleted and then the new dataset folder, only the files this command wrote.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import pickle
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from nnunet_prune import NnUNetPruneError
from nnunet_prune.core.outputs import record_files, remove_owned
from nnunet_prune.nnunet.prechecks import CHECKPOINT, model_folder_folds, trained_model_folders

if TYPE_CHECKING:
    from nnunet_prune.nnunet.modelfolder import ModelFolder

#: the tool's name in the new dataset's manifest
TOOL = "pseudo-label"
#: the temporary prediction folder inside the new dataset (deleted at the end)
WORK = ".pseudo_work"
#: the table of every case written into the new dataset
TABLE = "pseudo_labels.csv"
#: the key added to the new dataset's dataset.json
MARK = "nnunet_prune_pseudo_labels"
#: devices nnUNetv2_predict takes
DEVICES = ("cpu", "cuda", "mps")
_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_SHOWN = 5


def _describe(items: Sequence[str]) -> str:
    shown = ", ".join(items[:_SHOWN])
    return shown + (f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else "")


# ---------------------------------------------------------------------------------------------------- the request
@dataclass
class PseudoLabelRequest:
    """What the user asked for (the command line's options).

    ``dataset``: the source dataset's ID or ``DatasetXXX_Name``; ``images``: the folder of unlabelled images;
    ``new_id``: the new dataset's ID (1..999, as given: a string is checked too); ``folds``: None = every fold with
    ``checkpoint``; ``name``: the new dataset's name (None: ``<source name>Pseudo``); ``min_agreement``: in [0, 1];
    ``device``: ``nnUNetv2_predict -device``.
    """

    dataset: str | int
    configuration: str
    trainer: str
    images: str | os.PathLike
    new_id: str | int
    plans: str = "nnUNetPlans"
    folds: Sequence | None = None
    checkpoint: str = CHECKPOINT
    name: str | None = None
    min_agreement: float = 0.0
    device: str = "cpu"


@dataclass
class SourceDataset:
    """A raw nnU-Net dataset's labelled training cases: ``images`` case -> its channel files (channel order),
    ``labels`` case -> its label file, with its ``dataset.json``."""

    folder: Path
    dataset_json: dict
    images: dict[str, list[Path]]
    labels: dict[str, Path]

    @property
    def file_ending(self) -> str:
        """The dataset's file ending, e.g. ``.nii.gz``."""
        return self.dataset_json["file_ending"]

    @property
    def channels(self) -> int:
        """The number of image channels (``channel_names``)."""
        return len(self.dataset_json["channel_names"])

    @property
    def short_name(self) -> str:
        """The name after ``DatasetXXX_``."""
        return self.folder.name.split("_", 1)[1]


@dataclass
class PseudoLabelPlan:
    """A request with every input checked (:func:`check_request`): nothing has been written yet.

    ``unlabelled``: case -> its channel files; ``model``: the opened
    :class:`~nnunet_prune.nnunet.modelfolder.ModelFolder` (its ``folds`` are the chosen folds); ``target``: the new
    dataset's folder (does not exist); ``env``: the environment of the prediction subprocesses.
    """

    request: PseudoLabelRequest
    source: SourceDataset
    unlabelled: dict[str, list[Path]]
    model: ModelFolder
    target: Path
    new_id: int
    env: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------- checks
def nnunet_paths(folders: Mapping[str, str | None] | None = None) -> dict[str, Path | None]:
    """nnU-Net's three folders (``folders``, default :func:`nnunet_prune.nnunet.settings.nnunet_folders`) as paths,
    None where not set.

    Raises:
        NnUNetPruneError: nnUNet_raw or nnUNet_results is not set.
    """
    if folders is None:
        from nnunet_prune.nnunet.settings import nnunet_folders

        folders = nnunet_folders()
    missing = [v for v in ("nnUNet_raw", "nnUNet_results") if not folders.get(v)]
    if missing:
        raise NnUNetPruneError(f"{' and '.join(missing)} not set: pseudo-label reads the source dataset from "
                               f"nnUNet_raw, the model from nnUNet_results and writes the new dataset into "
                               f"nnUNet_raw. Set nnU-Net's folders first. Nothing was written.")
    return {k: (Path(folders[k]).expanduser() if folders.get(k) else None)
            for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}


def check_options(request: PseudoLabelRequest) -> int:
    """The options that need no file: ``min_agreement`` in [0, 1], the new dataset ID an integer 1..999, the name,
    the device. Returns the new dataset ID.

    Raises:
        NnUNetPruneError: naming the option and its allowed values.
    """
    x = request.min_agreement
    if not (isinstance(x, (int, float)) and math.isfinite(x) and 0 <= x <= 1):
        raise NnUNetPruneError(f"--min-agreement must lie in [0, 1] (0 keeps every case), got {x}. Nothing was "
                               f"written.")
    text = str(request.new_id).strip()
    if not text.isdigit() or not 1 <= int(text) <= 999:
        raise NnUNetPruneError(f"-o {request.new_id}: the new dataset ID must be an integer from 1 to 999 (nnU-Net "
                               f"uses three digits). Nothing was written.")
    if request.name is not None and not _NAME.match(request.name):
        raise NnUNetPruneError(f"--name {request.name!r}: use letters, digits, '_', '-' and '.' (it becomes "
                               f"Dataset{int(text):03d}_<name>). Nothing was written.")
    if request.device not in DEVICES:
        raise NnUNetPruneError(f"-device {request.device}: nnUNetv2_predict takes {', '.join(DEVICES)}.")
    return int(text)


def channel_files(folder: Path, file_ending: str) -> tuple[dict[str, dict[int, Path]], list[str]]:
    """The files of ``folder`` named as nnU-Net's images (``<case>_<4-digit channel><file_ending>``): case ->
    {channel index: file}, and the names of the other entries (hidden ones, starting with '.', are ignored)."""
    cases: dict[str, dict[int, Path]] = {}
    other = []
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        m = _CHANNEL.match(p.name[: -len(file_ending)]) if p.name.endswith(file_ending) and p.is_file() else None
        if m is None:
            other.append(p.name)
            continue
        cases.setdefault(m["case"], {})[int(m["channel"])] = p
    return cases, other


def _complete(cases: dict[str, dict[int, Path]], channels: int, file_ending: str, where: str) -> dict[str, list[Path]]:
    """Every case with exactly the channels 0..channels-1, as lists; else a refusal naming a missing or extra file."""
    out = {}
    for case, files in sorted(cases.items()):
        extra = sorted(c for c in files if c >= channels)
        if extra:
            raise NnUNetPruneError(f"{where}: {files[extra[0]].name} is channel {extra[0]}, but the dataset has "
                                   f"{channels} channel(s) (_0000 to _{channels - 1:04d}). Nothing was written.")
        missing = [c for c in range(channels) if c not in files]
        if missing:
            raise NnUNetPruneError(f"{where}: case {case} lacks {case}_{missing[0]:04d}{file_ending} (the dataset has "
                                   f"{channels} channel(s), one file each). Nothing was written.")
        out[case] = [files[c] for c in range(channels)]
    return out


def _dataset_folder(raw: Path, dataset: str | int) -> Path:
    """The source dataset's folder in nnUNet_raw, from its ID or name."""
    text = str(dataset).strip()
    existing = sorted(p.name for p in raw.glob("Dataset[0-9][0-9][0-9]_*") if p.is_dir()) if raw.is_dir() else []
    if text.isdigit():
        found = [n for n in existing if n.startswith(f"Dataset{int(text):03d}_")]
    else:
        found = [n for n in existing if n == text]
    if len(found) > 1:
        raise NnUNetPruneError(f"-d {text}: several datasets in {raw} have this ID ({', '.join(found)}).")
    if not found:
        listing = f"Datasets in it: {_describe(existing)}." if existing else "It holds no dataset."
        raise NnUNetPruneError(f"-d {text}: no such dataset in nnUNet_raw ({raw}). {listing} Nothing was written.")
    return raw / found[0]


def find_source_dataset(raw: Path, dataset: str | int) -> SourceDataset:
    """The labelled training cases of dataset ``dataset`` (ID or name) in nnUNet_raw ``raw``: imagesTr (as nnU-Net
    finds them: files ending in the file ending) and labelsTr.

    Raises:
        NnUNetPruneError: no such dataset, an unreadable dataset.json, a dataset.json listing its files (its
            ``dataset`` key), or a training case lacking a channel or its label.
    """
    folder = _dataset_folder(raw, dataset)
    try:
        meta = json.loads((folder / "dataset.json").read_text())
    except (OSError, ValueError) as e:
        raise NnUNetPruneError(f"Cannot read {folder / 'dataset.json'} ({type(e).__name__}: {e}).") from None
    if not isinstance(meta, dict) or "file_ending" not in meta or "channel_names" not in meta:
        raise NnUNetPruneError(f"{folder / 'dataset.json'} is not an nnU-Net v2 dataset.json (file_ending, "
                               f"channel_names).")
    if "dataset" in meta:
        raise NnUNetPruneError(f"{folder / 'dataset.json'} lists its files (key 'dataset'); pseudo-label supports "
                               f"datasets with nnU-Net's folder layout (imagesTr, labelsTr) only.")
    ending, channels = meta["file_ending"], len(meta["channel_names"])
    if not (folder / "imagesTr").is_dir():
        raise NnUNetPruneError(f"{folder} has no imagesTr folder.")
    cases, _ = channel_files(folder / "imagesTr", ending)
    images = _complete(cases, channels, ending, str(folder / "imagesTr"))
    labels = {case: folder / "labelsTr" / f"{case}{ending}" for case in images}
    missing = [p.name for p in labels.values() if not p.is_file()]
    if missing:
        raise NnUNetPruneError(f"{folder / 'labelsTr'} lacks {_describe(missing)}: the source dataset is "
                               f"incomplete. Nothing was written.")
    return SourceDataset(folder, meta, images, labels)


def check_unlabelled(folder: str | os.PathLike, source: SourceDataset) -> dict[str, list[Path]]:
    """The unlabelled images: case -> its channel files (channel order), named and shaped as ``source``'s.

    Raises:
        NnUNetPruneError: the folder is missing or empty, holds entries that are not ``<case>_XXXX<file ending>``
            files, a case lacks a channel file (named) or has one the dataset lacks, or a case ID is also a
            training case of the source.
    """
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise NnUNetPruneError(f"-i {folder}: " + ("is a file, not a folder of images." if path.exists() else
                                                   "no such folder.") + " Nothing was written.")
    ending = source.file_ending
    cases, other = channel_files(path, ending)
    if other:
        raise NnUNetPruneError(f"-i {folder}: {_describe(other)} not named <case>_0000{ending} (the file ending and "
                               f"naming of {source.folder.name}). Move them away. Nothing was written.")
    if not cases:
        raise NnUNetPruneError(f"-i {folder}: no image in it (expected <case>_0000{ending}). Nothing was written.")
    images = _complete(cases, source.channels, ending, f"-i {folder}")
    clash = sorted(set(images) & set(source.images))
    if clash:
        raise NnUNetPruneError(f"-i {folder}: case(s) {_describe(clash)} are also training cases of "
                               f"{source.folder.name}; rename the unlabelled images (case IDs must be unique in the "
                               f"new dataset). Nothing was written.")
    return images


def check_new_dataset_id(new_id: int, paths: Mapping[str, Path | None]) -> None:
    """The new dataset ID is used by no ``Dataset<ID>_*`` entry in nnUNet_raw, nnUNet_preprocessed or
    nnUNet_results (a new dataset never overwrites, and nnU-Net needs one name per ID).

    Raises:
        NnUNetPruneError: naming the folder that uses it.
    """
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        root = paths.get(var)
        if root is None or not root.is_dir():
            continue
        used = sorted(root.glob(f"Dataset{new_id:03d}_*"))
        if used:
            raise NnUNetPruneError(f"-o {new_id}: dataset ID {new_id} is already used by {used[0]} ({var}). "
                                   f"pseudo-label never overwrites a dataset: choose a free ID. Nothing was written.")


def _model_path(paths: Mapping[str, Path | None], source: SourceDataset, request: PseudoLabelRequest) -> Path:
    """The model folder, checked on the file system (no torch): it exists and has the folds' checkpoints."""
    results = paths["nnUNet_results"] / source.folder.name
    folder = results / f"{request.trainer}__{request.plans}__{request.configuration}"
    if not folder.is_dir():
        trained = [p.name for p in trained_model_folders(results)]
        listing = f"Trained models of {source.folder.name}: {_describe(trained)}." if trained else \
            f"No model of {source.folder.name} is trained yet."
        raise NnUNetPruneError(f"No model folder {folder} (-tr {request.trainer} -p {request.plans} -c "
                               f"{request.configuration}). {listing} Nothing was written.")
    model_folder_folds(folder, request.folds, request.checkpoint)
    return folder


def check_request(request: PseudoLabelRequest, folders: Mapping[str, str | None] | None = None) -> PseudoLabelPlan:
    """Check everything before any prediction or writing: options, nnU-Net's folders (``folders``, default
    :func:`nnunet_prune.nnunet.settings.nnunet_folders`), the source dataset, the unlabelled images, the new ID, then
    the model folder and its folds (the file system first; then
    :meth:`~nnunet_prune.nnunet.modelfolder.ModelFolder.open`, which checks every checkpoint against the network)
    and the device.

    Raises:
        NnUNetPruneError: one line naming what is wrong (see the checks); nothing was written.
    """
    new_id = check_options(request)
    paths = nnunet_paths(folders)
    source = find_source_dataset(paths["nnUNet_raw"], request.dataset)
    unlabelled = check_unlabelled(request.images, source)
    check_new_dataset_id(new_id, paths)
    folder = _model_path(paths, source, request)
    from nnunet_prune.nnunet.integration.prediction import check_device
    from nnunet_prune.nnunet.modelfolder import ModelFolder

    model = ModelFolder.open(folder, request.folds, request.checkpoint)
    if model.configuration_manager.previous_stage_name is not None:
        raise NnUNetPruneError(f"{folder.name} is a cascade stage (it needs the previous stage's predictions); "
                               f"pseudo-label with a model of a configuration without a previous stage (e.g. "
                               f"3d_fullres). Nothing was written.")
    if model.dataset_json.get("file_ending") != source.file_ending:
        raise NnUNetPruneError(f"{folder} was trained on {model.dataset_json.get('file_ending')} files, but "
                               f"{source.folder.name} now has {source.file_ending}. Nothing was written.")
    check_device(folder, request.device)
    target = paths["nnUNet_raw"] / f"Dataset{new_id:03d}_{request.name or source.short_name + 'Pseudo'}"
    env = {**os.environ, **{k: str(v) for k, v in paths.items() if v is not None}}
    return PseudoLabelPlan(request, source, unlabelled, model, target, new_id, env)


# ---------------------------------------------------------------------------------------------------- ensembling
def fold_segmentation(probabilities: np.ndarray, label_manager) -> np.ndarray:
    """One fold's (or the ensemble's) segmentation: ``probabilities`` (C, *spatial), float, the classes' or regions'
    probabilities as nnU-Net saves them (``.npz`` key ``probabilities``) -> (*spatial) label map (uint8, uint16 with
    255 or more foreground labels), by nnU-Net's ``LabelManager.convert_probabilities_to_segmentation`` (argmax for
    labels; regions: each region > 0.5 in ``regions_class_order``)."""
    seg = np.asarray(label_manager.convert_probabilities_to_segmentation(probabilities))
    return seg.astype(np.uint8 if len(label_manager.foreground_labels) < 255 else np.uint16)


def ensemble_agreement(segmentations: Sequence[np.ndarray]) -> float:
    """Agreement of the folds' segmentations (each (*spatial) label maps of one shape, 0 = background): the voxels
    where every fold gives the same foreground label / the voxels any fold labels foreground, in [0, 1]. 1.0 when no
    fold predicts any foreground, and with a single segmentation.

    Raises:
        NnUNetPruneError: no segmentation, or shapes that differ.
    """
    if not segmentations:
        raise NnUNetPruneError("ensemble_agreement needs at least one segmentation.")
    first = np.asarray(segmentations[0])
    if any(np.shape(s) != first.shape for s in segmentations):
        raise NnUNetPruneError(f"The folds' segmentations differ in shape: {[np.shape(s) for s in segmentations]}.")
    any_foreground = np.zeros(first.shape, dtype=bool)
    same = first > 0
    for s in segmentations:
        s = np.asarray(s)
        any_foreground |= s > 0
        same &= s == first
    union = int(any_foreground.sum())
    return 1.0 if union == 0 else float(same.sum()) / union


def ensemble_case(fold_files: Sequence[Path], label_manager) -> tuple[np.ndarray, float, dict]:
    """Ensemble one case from the folds' ``<case>.npz`` files (``probabilities`` (C, *spatial), the original image
    geometry; the ``<case>.pkl`` of properties beside each): the mean probabilities' segmentation (*spatial)
    (:func:`fold_segmentation`), the folds' :func:`ensemble_agreement`, and the properties (for ``write_seg``).

    Raises:
        NnUNetPruneError: a file cannot be read, or the folds' arrays differ in shape.
    """
    total, segs = None, []
    for file in fold_files:
        try:
            with np.load(file) as data:
                p = data["probabilities"].astype(np.float32, copy=False)
        except (OSError, KeyError, ValueError) as e:
            raise NnUNetPruneError(f"Cannot read the probabilities in {file} ({type(e).__name__}: {e}).") from None
        if total is not None and p.shape != total.shape:
            raise NnUNetPruneError(f"{file}: probabilities of shape {p.shape}, other folds {total.shape}.")
        segs.append(fold_segmentation(p, label_manager))
        if total is None:
            total = p
        else:
            total += p  # (in place: one array of the case's size besides the fold being read)
    with open(Path(fold_files[0]).with_suffix(".pkl"), "rb") as f:
        properties = pickle.load(f)
    return fold_segmentation(total / len(fold_files), label_manager), ensemble_agreement(segs), properties


# ---------------------------------------------------------------------------------------------------- records
def pseudo_label_record(plan: PseudoLabelPlan, agreements: Mapping[str, float]) -> dict:
    """The value of :data:`MARK` in the new dataset.json: source dataset, model folder, trainer, plans,
    configuration, folds, checkpoint, min_agreement, ``labelled`` and ``pseudo_labelled`` (kept) case IDs,
    ``left_out`` {case: agreement} and ``agreement`` {case: agreement} of every unlabelled case."""
    req, x = plan.request, plan.request.min_agreement
    return {
        "source_dataset": plan.source.folder.name,
        "model_folder": str(plan.model.path),
        "trainer": req.trainer,
        "plans": req.plans,
        "configuration": req.configuration,
        "folds": list(plan.model.folds),
        "checkpoint": req.checkpoint,
        "min_agreement": x,
        "labelled": sorted(plan.source.images),
        "pseudo_labelled": sorted(c for c, a in agreements.items() if a >= x),
        "left_out": {c: a for c, a in sorted(agreements.items()) if a < x},
        "agreement": dict(sorted(agreements.items())),
    }


def new_dataset_json(source_json: Mapping, record: Mapping) -> dict:
    """The new dataset.json: ``source_json`` with ``numTraining`` = labelled + pseudo-labelled cases and
    :data:`MARK` = ``record`` (:func:`pseudo_label_record`)."""
    out = dict(source_json)
    out["numTraining"] = len(record["labelled"]) + len(record["pseudo_labelled"])
    out[MARK] = dict(record)
    return out


def table_text(record: Mapping) -> str:
    """:data:`TABLE` as text: columns case, source (``labelled`` / ``pseudo``), agreement (empty for labelled;
    6 decimals), kept (``yes`` / ``no``); labelled cases first, then every unlabelled case."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["case", "source", "agreement", "kept"])
    for case in record["labelled"]:
        writer.writerow([case, "labelled", "", "yes"])
    for case, value in record["agreement"].items():
        writer.writerow([case, "pseudo", f"{value:.6f}", "no" if case in record["left_out"] else "yes"])
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------------- the run
@dataclass
class PseudoLabelResult:
    """The new dataset: its ``folder``, ID, the :data:`MARK` record written into its dataset.json, and the model's
    configuration (for the next commands)."""

    folder: Path
    new_id: int
    record: dict
    configuration: str

    def summary(self) -> str:
        """A few lines: the cases labelled / pseudo-labelled / left out, the agreement, the two stock commands to run
        next."""
        r = self.record
        values = list(r["agreement"].values())
        folds = ", ".join(map(str, r["folds"]))
        lines = [f"Wrote {self.folder.name} ({self.folder}):",
                 f"  labelled cases (copied from {r['source_dataset']}): {len(r['labelled'])}",
                 f"  pseudo-labelled cases ({Path(r['model_folder']).name}, folds {folds}): "
                 f"{len(r['pseudo_labelled'])}"]
        if len(r["folds"]) < 2:
            lines.append("  agreement: needs >= 2 folds (with one fold every case counts as 1.0)")
        elif values:
            lines.append(f"  agreement of the folds: min {min(values):.3f}, mean {sum(values) / len(values):.3f}, "
                         f"max {max(values):.3f}")
        left = r["left_out"]
        lines.append(f"  left out (agreement < {r['min_agreement']:g}): {len(left)}"
                     + (f" ({_describe(list(left))})" if left else "") if r["min_agreement"] > 0 else
                     "  left out: 0 (no --min-agreement: every case kept)")
        lines += [f"  every case: {self.folder / TABLE}; dataset.json key {MARK}",
                  "Next, with stock nnU-Net:",
                  f"  nnUNetv2_plan_and_preprocess -d {self.new_id} --verify_dataset_integrity",
                  f"  nnUNetv2_train {self.new_id} {self.configuration} 0   (folds 0-4; a small model: "
                  f"docs/pseudolabels.md)"]
        return "\n".join(lines)


def _write(target: Path, path: Path, write: Callable[[Path], None], digest: bool = False) -> None:
    """``write(path)``, then ``path`` recorded in ``target``'s manifest (also when ``write`` failed half-way: a
    partial file is this command's too, and is deleted with the folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        write(path)
    finally:
        record_files(target, TOOL, [path], digest=digest)


def predict_folds(plan: PseudoLabelPlan, work: Path, echo: Callable[[str], None] | None = print) -> dict:
    """Stock ``nnUNetv2_predict --save_probabilities`` on the unlabelled images, once per chosen fold, into
    ``work/fold_<k>`` (through the package's subprocess runner; ``echo`` gets its filtered output). Returns fold ->
    its output folder.

    Raises:
        StepFailed: a prediction failed (the message holds the end of its output).
    """
    from nnunet_prune.tools.commands import console_script
    from nnunet_prune.tools.runner import StepRunner

    req = plan.request
    runner = StepRunner(plan.env, work, echo=echo)
    images = str(Path(req.images).expanduser().resolve())
    out = {}
    for fold in plan.model.folds:
        out[fold] = work / f"fold_{fold}"
        if echo is not None:
            echo(f"Predicting {len(plan.unlabelled)} image(s) with fold {fold} of {plan.model.path.name}")
        runner.run("pseudo-label", f"predict_fold_{fold}", [
            console_script("nnUNetv2_predict"), "-i", images, "-o", str(out[fold]), "-d", plan.source.folder.name,
            "-c", req.configuration, "-tr", req.trainer, "-p", req.plans, "-f", str(fold), "-chk", req.checkpoint,
            "-device", req.device, "--save_probabilities", "--disable_progress_bar"])
    return out


def write_pseudo_labels(plan: PseudoLabelPlan, predictions: Mapping, echo: Callable[[str], None] | None = print
                        ) -> dict[str, float]:
    """Ensemble every unlabelled case (:func:`ensemble_case`); a case with agreement >= ``min_agreement`` gets its
    images copied into the new imagesTr and its segmentation written into labelsTr with the plans' image
    reader/writer. Returns case -> agreement (every case).

    Raises:
        NnUNetPruneError: a fold's probabilities are missing or unreadable.
    """
    writer = plan.model.plans_manager.image_reader_writer_class()  # (a property: the class; called: an instance)
    label_manager = plan.model.label_manager
    ending, target = plan.source.file_ending, plan.target
    if echo is not None:
        echo(f"Ensembling {len(predictions)} fold(s) on {len(plan.unlabelled)} case(s)")
    agreements = {}
    for case, files in plan.unlabelled.items():
        npz = [Path(folder) / f"{case}.npz" for folder in predictions.values()]
        missing = [str(p) for p in npz if not p.is_file()]
        if missing:
            raise NnUNetPruneError(f"nnUNetv2_predict wrote no probabilities for {case} ({_describe(missing)}).")
        seg, agreements[case], properties = ensemble_case(npz, label_manager)
        if agreements[case] < plan.request.min_agreement:
            continue
        for image in files:
            _write(target, target / "imagesTr" / image.name, lambda p, src=image: shutil.copy2(src, p))
        _write(target, target / "labelsTr" / f"{case}{ending}",
               lambda p, s=seg, props=properties: writer.write_seg(s, str(p), props))
    return agreements


def copy_labelled(plan: PseudoLabelPlan) -> None:
    """Copy every labelled training case of the source (its imagesTr files and its labelsTr file, ``shutil.copy2``)
    into the new dataset; imagesTs is not copied (a test set)."""
    target = plan.target
    for case, images in plan.source.images.items():
        for image in images:
            _write(target, target / "imagesTr" / image.name, lambda p, src=image: shutil.copy2(src, p))
        label = plan.source.labels[case]
        _write(target, target / "labelsTr" / label.name, lambda p, src=label: shutil.copy2(src, p))


def _clean_up(target: Path, work: Path | None, echo: Callable[[str], None] | None) -> None:
    """After a failure: delete the work folder this run created, then the new dataset folder (only the files this
    command wrote: :func:`nnunet_prune.core.outputs.remove_owned`); what cannot be deleted is reported, not raised."""
    if work is not None:
        shutil.rmtree(work, ignore_errors=True)
    try:
        remove_owned(target, TOOL)
    except (NnUNetPruneError, OSError) as e:
        if echo is not None:
            echo(f"Note: {target} was not removed completely: {e}")


def pseudo_label(request: PseudoLabelRequest, echo: Callable[[str], None] | None = print,
                 folders: Mapping[str, str | None] | None = None) -> PseudoLabelResult:
    """Write the new dataset (see the module docstring): check everything (:func:`check_request`), create the new
    dataset folder, predict every fold (:func:`predict_folds`) into its work folder, ensemble and write the kept
    pseudo-labelled cases (:func:`write_pseudo_labels`), copy the labelled cases (:func:`copy_labelled`), write
    dataset.json and :data:`TABLE`, delete the work folder. ``echo`` gets progress lines and the predictions' output;
    ``folders``: nnU-Net's folders (default: as nnU-Net reads them).

    Raises:
        NnUNetPruneError: bad input (before anything is written), or a failed prediction (then the work folder and
            the new dataset's files are deleted again); ``KeyboardInterrupt`` the same way.
    """
    plan = check_request(request, folders)
    target = plan.target
    try:
        target.mkdir()
    except OSError as e:
        raise NnUNetPruneError(f"Cannot create {target} ({e.strerror or e}). Nothing was written.") from None
    record_files(target, TOOL, [])  # the folder is this command's from now on (an empty manifest)
    work = None
    try:
        (target / WORK).mkdir()
        work = target / WORK
        agreements = write_pseudo_labels(plan, predict_folds(plan, work, echo), echo)
        copy_labelled(plan)
        record = pseudo_label_record(plan, agreements)
        text = json.dumps(new_dataset_json(plan.source.dataset_json, record), indent=2)
        _write(target, target / "dataset.json", lambda p: p.write_text(text), digest=True)
        _write(target, target / TABLE, lambda p: p.write_text(table_text(record)), digest=True)
        shutil.rmtree(work)
    except BaseException:
        _clean_up(target, work, echo)
        raise
    return PseudoLabelResult(target, plan.new_id, record, request.configuration)
