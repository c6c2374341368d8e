"""Checks of a command's input that need neither torch nor nnU-Net nor a runtime (standard library only).

Every ``nnunet-prune`` command runs these before its heavy imports, so that a wrong dataset ID, a fold folder given
as the model folder, a missing fold or a bad option fails in a fraction of a second: importing torch and nnU-Net
takes seconds, on a busy machine or a cold file cache up to a minute. The fuller checks (checkpoints against the
network, images against the model) follow once the model is loaded (:mod:`nnunet_prune.nnunet.modelfolder`).
"""

from __future__ import annotations

import math
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

from nnunet_prune import NnUNetPruneError

#: nnU-Net's three folders, in the order nnU-Net's own messages name them
NNUNET_FOLDER_VARS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
CHECKPOINT = "checkpoint_final.pth"
_DATASET = re.compile(r"^Dataset(\d{3})_.+")
#: at most this many datasets are named in an error message
_LISTED = 30


def existing_datasets(environ: Mapping[str, str] | None = None) -> dict[str, list[str]]:
    """Every dataset folder (``DatasetXXX_Name``) in nnUNet_raw, nnUNet_preprocessed and nnUNet_results (the
    variables of ``environ``, default ``os.environ``), sorted: name -> the variables of the folders that hold it."""
    environ = os.environ if environ is None else environ
    found: dict[str, list[str]] = {}
    for var in NNUNET_FOLDER_VARS:
        folder = Path(environ.get(var) or "")
        if not environ.get(var) or not folder.is_dir():
            continue
        for p in folder.iterdir():
            if _DATASET.match(p.name) and p.is_dir():
                found.setdefault(p.name, []).append(var)
    return dict(sorted(found.items()))


def dataset_listing(environ: Mapping[str, str] | None = None) -> str:
    """One sentence naming the datasets that exist and where (:func:`existing_datasets`), or, without any, the
    folders searched (and which of nnU-Net's variables are not set)."""
    environ = os.environ if environ is None else environ
    found = existing_datasets(environ)
    if found:
        shown = [f"{name} ({', '.join(where)})" for name, where in list(found.items())[:_LISTED]]
        more = f" and {len(found) - _LISTED} more" if len(found) > _LISTED else ""
        return f"Datasets that exist: {', '.join(shown)}{more}."
    searched = ", ".join(f"{v}={environ.get(v) or '(not set)'}" for v in NNUNET_FOLDER_VARS)
    return f"No dataset exists in nnU-Net's folders ({searched}); create one first (e.g. nnunet-prune dataset)."


def resolve_dataset(name_or_id: str | int, environ: Mapping[str, str] | None = None, option: str = "-d") -> str:
    """The dataset's folder name for an ID (``117``, ``"117"``) or a name (``Dataset117_LiTS117``), looked up as
    nnU-Net does in its three folders (of ``environ``, default ``os.environ``), but without importing nnU-Net.

    Raises:
        NnUNetPruneError: neither an ID nor a ``DatasetXXX_Name``, no dataset with that ID or name, or two names for
            one ID; the message lists the datasets that exist (:func:`dataset_listing`).
    """
    text = str(name_or_id).strip()
    found = existing_datasets(environ)
    if text.startswith("Dataset"):
        if text in found:
            return text
        raise NnUNetPruneError(f"{option} {text}: no such dataset in nnU-Net's folders. {dataset_listing(environ)}")
    if not text.isdigit():
        raise NnUNetPruneError(f"{option} {text}: give a dataset ID (e.g. 117) or a name (e.g. Dataset117_LiTS117). "
                               f"{dataset_listing(environ)}")
    candidates = [name for name in found if name.startswith(f"Dataset{int(text):03d}_")]
    if len(candidates) > 1:
        raise NnUNetPruneError(f"{option} {text}: several datasets have ID {int(text)} ({', '.join(candidates)}); "
                               f"nnU-Net needs one. Rename or remove the others, or give the name.")
    if not candidates:
        raise NnUNetPruneError(f"{option} {text}: no dataset with ID {int(text)} in nnU-Net's folders. "
                               f"{dataset_listing(environ)}")
    return candidates[0]


def parse_fold(value) -> int | str:
    """A fold as nnU-Net names it: an int, or the string "all".

    Raises:
        NnUNetPruneError: ``value`` is neither an integer nor "all".
    """
    if str(value) == "all":
        return "all"
    try:
        fold = int(value)
        if fold < 0:
            raise ValueError
        return fold
    except ValueError:
        raise NnUNetPruneError(f"Invalid fold {value!r}: folds are integers >= 0 (0-4 for nnU-Net's five-fold "
                               f"split) or 'all'.") from None


def trained_model_folders(dataset_results: str | os.PathLike, fold=None, suffix: str = "") -> list[Path]:
    """Model folders (``<trainer>__<plans>__<configuration>``) in a dataset's results folder whose name ends in
    ``suffix`` and that hold a finished fold (``fold`` given) or any finished fold; [] if the folder is missing."""
    root = Path(dataset_results)
    if not root.is_dir():
        return []
    pattern = f"fold_{fold}/{CHECKPOINT}" if fold is not None else f"fold_*/{CHECKPOINT}"
    return sorted(p for p in root.glob("*__*__*") if p.name.endswith(suffix) and any(p.glob(pattern)))


def resolve_model_folder(path: str | os.PathLike | None = None, dataset: str | None = None,
                         configuration: str | None = None, trainer: str = "nnUNetTrainer",
                         plans: str = "nnUNetPlans") -> Path:
    """A model folder given directly, or the nnU-Net way (-d DATASET -c CONFIGURATION [-tr TRAINER] [-p PLANS]):
    ``$nnUNet_results/<dataset>/<trainer>__<plans>__<configuration>``, which must exist.

    Raises:
        NnUNetPruneError: both or neither given, nnUNet_results not set, an unknown dataset (listing those that
            exist), or no such model folder (listing the dataset's trained models).
    """
    if path is not None:
        if dataset is not None:
            raise NnUNetPruneError("Give either MODEL_FOLDER or -d/-c/-tr/-p, not both.")
        return Path(path).expanduser().resolve()
    if dataset is None or configuration is None:
        raise NnUNetPruneError("Name the model: either a MODEL_FOLDER, or -d DATASET -c CONFIGURATION "
                               "[-tr TRAINER] [-p PLANS] (as for nnUNetv2_predict).")
    if not os.environ.get("nnUNet_results"):
        raise NnUNetPruneError("nnUNet_results is not set, so -d/-c cannot be resolved to a model folder. Set it, "
                               "or pass the model folder's path.")
    name = resolve_dataset(dataset)
    folder = Path(os.environ["nnUNet_results"]) / name / f"{trainer}__{plans}__{configuration}"
    if not folder.is_dir():
        trained = [p.name for p in trained_model_folders(folder.parent)]
        listing = ("Trained models of " + name + ": " + ", ".join(trained) + " (name one with -tr TRAINER -p PLANS "
                   "-c CONFIGURATION, or pass its folder).") if trained else f"No model of {name} is trained yet."
        raise NnUNetPruneError(f"{folder.name} does not exist in {folder.parent} (-d {dataset} -c {configuration} "
                               f"-tr {trainer} -p {plans}). {listing}")
    return folder


def model_folder_folds(path: str | os.PathLike, folds: Sequence | None = None,
                       checkpoint_name: str = CHECKPOINT) -> tuple[Path, list[int | str]]:
    """The checks of a trained model folder that need only the file system: it exists, holds plans.json,
    dataset.json and at least one ``fold_*/<checkpoint_name>``, and every fold of ``folds`` has that checkpoint.
    Returns (the resolved folder, the chosen folds: ``folds`` parsed, or every fold with the checkpoint).

    Raises:
        NnUNetPruneError: a missing folder or file, a fold folder given instead of its model folder (naming both and
            the ``-f``), an invalid fold, or folds without the checkpoint (naming those that have it).
    """
    path = Path(path).expanduser().resolve()
    if not path.is_dir():
        raise NnUNetPruneError(f"{path} does not exist or is not a folder.")
    missing = [f for f in ("plans.json", "dataset.json") if not (path / f).is_file()]
    available = sorted((p.name[5:] for p in path.glob("fold_*") if (p / checkpoint_name).is_file()),
                       key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0))
    if missing or not available:
        what = [*missing, *([f"fold_*/{checkpoint_name}"] if not available else [])]
        if path.name.startswith("fold_") and (path.parent / "plans.json").is_file():
            raise NnUNetPruneError(f"{path} is a fold folder: give the model folder above it ({path.parent}), and "
                                   f"the fold with -f {path.name[5:]}.")
        raise NnUNetPruneError(
            f"{path} is not a trained nnU-Net model folder: {', '.join(what)} missing. A model folder is "
            f"nnUNet_results/DatasetXXX_Name/<trainer>__<plans>__<configuration> after nnUNetv2_train has "
            f"finished at least one fold.")
    available = [parse_fold(a) for a in available]
    if folds is None:
        return path, available
    chosen = [parse_fold(f) for f in folds]
    absent = [f for f in chosen if f not in available]
    if absent:
        raise NnUNetPruneError(
            f"{path}: fold(s) {', '.join(map(str, absent))} have no {checkpoint_name} (available: "
            f"{', '.join(map(str, available))}). Train them first or choose others with -f.")
    return path, chosen


def check_image_folder(folder: str | os.PathLike, option: str) -> Path:
    """``folder`` (given with ``option``, e.g. ``-i``) exists and is a folder; returns it resolved.

    Raises:
        NnUNetPruneError: it does not exist or is a file.
    """
    path = Path(folder).expanduser().resolve()
    if not path.is_dir():
        raise NnUNetPruneError(f"{option} {folder}: " + ("is a file, not a folder of images." if path.exists() else
                                                         "no such folder."))
    return path


def check_export_output(source: str | os.PathLike, output: str | os.PathLike, overwrite: bool) -> None:
    """Before any work: the export's output is not the source, inside it or around it, and is new, empty, or (with
    ``overwrite``) an earlier export holding only files the export wrote (:mod:`nnunet_prune.core.outputs`).

    Raises:
        NnUNetPruneError: naming the output and what to do.
    """
    from nnunet_prune.core.outputs import check_replaceable, read_manifest

    source, output = Path(source).expanduser().resolve(), Path(output).expanduser().resolve()
    if output == source or source in output.parents or output in source.parents:
        raise NnUNetPruneError(f"The output {output} must not be the source model folder, inside it, or contain "
                               f"it: the trained model must stay untouched. Choose another -o.")
    if output.exists() and not output.is_dir():
        raise NnUNetPruneError(f"-o {output} exists and is not a folder; nothing was written. Choose another -o.")
    if output.exists() and any(output.iterdir()):
        if not overwrite:
            raise NnUNetPruneError(f"{output} exists and is not empty; nothing was written. Choose another -o or "
                                   f"pass --overwrite to replace an earlier export.")
        if (output / "plans.json").is_file() and read_manifest(output) is None:
            raise NnUNetPruneError(f"{output} looks like a trained model folder that was not made by "
                                   f"`nnunet-prune export`; refusing to overwrite it even with --overwrite.")
        check_replaceable(output, "export", "--overwrite")


def check_magnitude_tau(tau: float | None) -> None:
    """``--magnitude-tau``: None (off) or a finite number >= 0.

    Raises:
        NnUNetPruneError: anything else.
    """
    if tau is not None and not (math.isfinite(tau) and tau >= 0):
        raise NnUNetPruneError(f"--magnitude-tau must be a finite number >= 0 (got {tau}).")


def gpu_driver_present() -> bool:
    """Whether this machine has a GPU driver (NVIDIA's ``/proc/driver/nvidia`` or ``nvidia-smi``, ROCm's
    ``/dev/kfd``), whatever PyTorch sees; without one, a command knows it runs on the CPU without importing torch."""
    return os.path.exists("/proc/driver/nvidia") or shutil.which("nvidia-smi") is not None \
        or os.path.exists("/dev/kfd")
