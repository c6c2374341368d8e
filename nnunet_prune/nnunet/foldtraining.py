"""Checks of a plain fold training before any job is submitted (``nnunet-prune train-folds``): nnU-Net's folders,
the plans and configuration, the trainer as ``nnUNetv2_train`` finds it, the folds against the dataset's split."""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from nnunet_prune import NnUNetPruneError
from nnunet_prune.nnunet.prechecks import parse_fold


def check_fold_training(dataset: str, configuration: str, trainer: str, plans: str, folds: Sequence,
                        environ: Mapping[str, str] | None = None) -> tuple[Path, list]:
    """Everything ``nnUNetv2_train DATASET CONFIGURATION FOLD -tr TRAINER -p PLANS`` would stop at, checked before
    any work: returns (the model folder ``<nnUNet_results>/<dataset>/<trainer>__<plans>__<configuration>``, the folds
    parsed).

    Raises:
        NnUNetPruneError: a folder variable is unset, the plans or configuration do not exist (how to plan them),
            the trainer is unknown to nnU-Net, or a fold is outside the dataset's split."""
    env = os.environ if environ is None else environ
    for var in ("nnUNet_preprocessed", "nnUNet_results"):
        if not env.get(var):
            raise NnUNetPruneError(f"{var} is not set: nnUNetv2_train needs it (on the compute nodes too).")
    pre = Path(env["nnUNet_preprocessed"]) / dataset
    file = pre / f"{plans}.json"
    if not file.is_file():
        raise NnUNetPruneError(f"{file} does not exist: plan it first (nnUNetv2_plan_and_preprocess -d {dataset}"
                               + (f" -pl <planner> -overwrite_plans_name {plans}" if plans != "nnUNetPlans" else "")
                               + ").")
    configs = json.loads(file.read_text()).get("configurations", {})
    if configuration not in configs:
        raise NnUNetPruneError(f"{file} has no configuration {configuration!r}; it has {', '.join(configs)}.")
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    try:
        with contextlib.redirect_stdout(io.StringIO()):
            recursive_find_trainer_class_by_name(trainer)
    except Exception:  # noqa: BLE001 -- nnU-Net raises RuntimeError, older versions others
        raise NnUNetPruneError(f"nnUNetv2_train does not know the trainer {trainer!r} (nnunet-prune doctor lists "
                               f"this package's trainers).") from None
    parsed = [parse_fold(f) for f in folds]
    splits = pre / "splits_final.json"
    n = len(json.loads(splits.read_text())) if splits.is_file() else 5
    outside = [f for f in parsed if f != "all" and f >= n]
    if outside:
        raise NnUNetPruneError(f"Fold(s) {outside}: the split of {dataset} has {n} folds (0-{n - 1}; or 'all').")
    if len(set(map(str, parsed))) != len(parsed):
        raise NnUNetPruneError("-f names a fold twice.")
    return Path(env["nnUNet_results"]) / dataset / f"{trainer}__{plans}__{configuration}", parsed
