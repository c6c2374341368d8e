"""Reading trained nnU-Net model folders (``<trainer>__<plans>__<configuration>`` with fold_k subfolders).

Validates up front -- missing files, missing folds, checkpoints that are not nnU-Net's -- so that commands fail
with a clear message before doing any work, and builds networks the way nnU-Net's predictor does.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch
from torch import nn

from nnunet_prune import NnUNetPruneError

CHECKPOINT = "checkpoint_final.pth"


def fold_name(fold) -> str:
    return f"fold_{fold}"


def parse_fold(value) -> int | str:
    if str(value) == "all":
        return "all"
    try:
        return int(value)
    except ValueError:
        raise NnUNetPruneError(f"Invalid fold {value!r}: folds are integers (0-4) or 'all'.") from None


def resolve_model_folder(path: str | os.PathLike | None = None, dataset: str | None = None,
                         configuration: str | None = None, trainer: str = "nnUNetTrainer",
                         plans: str = "nnUNetPlans") -> Path:
    """A model folder given directly, or the nnU-Net way (-d DATASET -c CONFIGURATION [-tr TRAINER] [-p PLANS])."""
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
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    from nnunetv2.utilities.file_path_utilities import get_output_folder

    try:
        maybe_convert_to_dataset_name(dataset)
    except RuntimeError as e:
        raise NnUNetPruneError(f"Unknown dataset {dataset!r}: {e}") from None
    return Path(get_output_folder(dataset, trainer, plans, configuration))


@dataclass
class ModelFolder:
    """A trained nnU-Net model folder, validated."""

    path: Path
    checkpoint_name: str = CHECKPOINT
    folds: list = field(default_factory=list)

    @classmethod
    def open(cls, path: str | os.PathLike, folds: Sequence | None = None,
             checkpoint_name: str = CHECKPOINT) -> ModelFolder:
        """Open ``path``; ``folds`` None means every fold that has ``checkpoint_name``."""
        path = Path(path).expanduser().resolve()
        if not path.is_dir():
            raise NnUNetPruneError(f"{path} does not exist or is not a folder.")
        missing = [f for f in ("plans.json", "dataset.json") if not (path / f).is_file()]
        available = sorted((p.name[5:] for p in path.glob("fold_*") if (p / checkpoint_name).is_file()),
                           key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0))
        if missing or not available:
            what = [*missing, *([f"fold_*/{checkpoint_name}"] if not available else [])]
            raise NnUNetPruneError(
                f"{path} is not a trained nnU-Net model folder: {', '.join(what)} missing. A model folder is "
                f"nnUNet_results/DatasetXXX_Name/<trainer>__<plans>__<configuration> after nnUNetv2_train has "
                f"finished at least one fold.")
        available = [parse_fold(a) for a in available]
        if folds is None:
            chosen = available
        else:
            chosen = [parse_fold(f) for f in folds]
            absent = [f for f in chosen if f not in available]
            if absent:
                raise NnUNetPruneError(
                    f"{path}: fold(s) {', '.join(map(str, absent))} have no {checkpoint_name} (available: "
                    f"{', '.join(map(str, available))}). Train them first or choose others with -f.")
        return cls(path, checkpoint_name, chosen)

    # ---------------------------------------------------------------- metadata
    @cached_property
    def plans(self) -> dict:
        return json.loads((self.path / "plans.json").read_text())

    @cached_property
    def dataset_json(self) -> dict:
        return json.loads((self.path / "dataset.json").read_text())

    @cached_property
    def plans_manager(self):
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        return PlansManager(self.plans)

    @cached_property
    def first_checkpoint(self) -> dict:
        return self.load_checkpoint(self.folds[0])

    @property
    def trainer_name(self) -> str:
        return self.first_checkpoint["trainer_name"]

    @property
    def configuration_name(self) -> str:
        return self.first_checkpoint["init_args"]["configuration"]

    @cached_property
    def configuration_manager(self):
        return self.plans_manager.get_configuration(self.configuration_name)

    @cached_property
    def label_manager(self):
        return self.plans_manager.get_label_manager(self.dataset_json)

    @property
    def num_input_channels(self) -> int:
        from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

        return determine_num_input_channels(self.plans_manager, self.configuration_manager, self.dataset_json)

    @property
    def patch_size(self) -> list[int]:
        return list(self.configuration_manager.patch_size)

    def fold_path(self, fold) -> Path:
        return self.path / fold_name(fold)

    def load_checkpoint(self, fold) -> dict:
        file = self.fold_path(fold) / self.checkpoint_name
        try:
            ckpt = torch.load(file, map_location="cpu", weights_only=False)
        except Exception as e:
            raise NnUNetPruneError(f"Cannot read {file} ({type(e).__name__}: {e}). Is it an nnU-Net checkpoint?") \
                from None
        if not isinstance(ckpt, dict) or "network_weights" not in ckpt or "init_args" not in ckpt:
            raise NnUNetPruneError(f"{file} is not an nnU-Net checkpoint (no 'network_weights'/'init_args').")
        return ckpt

    def validation_summary(self, fold) -> dict | None:
        file = self.fold_path(fold) / "validation" / "summary.json"
        return json.loads(file.read_text()) if file.is_file() else None

    # ---------------------------------------------------------------- networks
    def build_network(self, deep_supervision: bool = False) -> nn.Module:
        """The plans' network as its width-adaptive class (every supported architecture), randomly initialised."""
        from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

        from nnunet_prune.networks import adaptive_class_name

        cm = self.configuration_manager
        return get_network_from_plans(adaptive_class_name(cm.network_arch_class_name), cm.network_arch_init_kwargs,
                                      cm.network_arch_init_kwargs_req_import, self.num_input_channels,
                                      self.label_manager.num_segmentation_heads, allow_init=False,
                                      deep_supervision=deep_supervision)

    def load_network(self, fold, deep_supervision: bool = False) -> nn.Module:
        """The fold's trained network (widths from its checkpoint), in eval mode on the CPU."""
        net = self.build_network(deep_supervision)
        ckpt = self.first_checkpoint if fold == self.folds[0] else self.load_checkpoint(fold)
        net.load_state_dict(ckpt["network_weights"])
        return net.eval()

    def checkpoint_bytes(self, fold) -> int:
        return (self.fold_path(fold) / self.checkpoint_name).stat().st_size
