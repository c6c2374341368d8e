"""Reading trained nnU-Net model folders (``<trainer>__<plans>__<configuration>`` with fold_k subfolders).

Validates up front -- missing files, missing folds, checkpoints that are not nnU-Net's -- so that commands fail
with a clear message before doing any work, and builds networks the way nnU-Net's predictor does: :func:`build_network`
is the package's one network builder (every tool builds through it).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch
from torch import nn

from nnunet_prune import NnUNetPruneError
from nnunet_prune.nnunet.prechecks import (  # noqa: F401 (re-exported: the checks that need no torch live there)
    CHECKPOINT,
    model_folder_folds,
    parse_fold,
    resolve_model_folder,
    trained_model_folders,
)


def fold_name(fold) -> str:
    """The name of a fold's subfolder: ``fold_<fold>`` (e.g. ``fold_0``, ``fold_all``)."""
    return f"fold_{fold}"


def label_names(dataset_json: dict) -> dict[str, str]:
    """Class key as nnU-Net's evaluation writes it (the label value, or the region tuple; a one-label region also
    as its value) -> label name from dataset.json."""
    out = {}
    for name, value in dataset_json.get("labels", {}).items():
        if isinstance(value, (list, tuple)):
            out[str(tuple(value))] = name
            if len(value) == 1:
                out[str(value[0])] = name
        else:
            out[str(value)] = name
    return out


def _read_json(file: Path) -> dict:
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError) as e:
        raise NnUNetPruneError(f"Cannot read {file} ({type(e).__name__}: {e}). nnUNetv2_train writes it; restore it "
                               f"from the dataset's nnUNet_preprocessed folder or retrain.") from None
    if not isinstance(data, dict):
        raise NnUNetPruneError(f"{file} does not hold a JSON object as nnU-Net writes it.")
    return data


def read_checkpoint(file: str | os.PathLike, keep_training_state: bool = False) -> dict:
    """An nnU-Net checkpoint (``network_weights``, ``init_args``, ``trainer_name``, ...) read on the CPU, its
    weights as a plain state dict; optimizer and grad-scaler state are dropped unless ``keep_training_state``.

    Raises:
        NnUNetPruneError: the file is missing, unreadable, or not an nnU-Net checkpoint.
    """
    from nnunet_prune.networks.checkpoints import normalise_state_dict

    file = Path(file)
    if not file.is_file():
        raise NnUNetPruneError(f"{file} does not exist.")
    try:
        ckpt = torch.load(file, map_location="cpu", weights_only=False)
    except Exception as e:
        raise NnUNetPruneError(f"Cannot read {file} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else e}). "
                               f"The file is damaged or not a PyTorch checkpoint; use the checkpoint nnUNetv2_train "
                               f"wrote, or retrain the fold.") from None
    needed = ("network_weights", "init_args", "trainer_name")
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in needed) or not isinstance(ckpt["network_weights"],
                                                                                          dict):
        raise NnUNetPruneError(f"{file} is not an nnU-Net checkpoint (it needs the entries {', '.join(needed)}, as "
                               f"nnUNetv2_train writes them). A bare state dict cannot be used: nnU-Net needs the "
                               f"trainer and configuration it was trained with.")
    from nnunet_prune.networks.runtime import DIGEST_KEY, RUNTIME_KEY

    if isinstance(ckpt["network_weights"], dict) and RUNTIME_KEY in ckpt["network_weights"]:
        # a runtime folder's fold (nnunet-prune export --runtime): its ONNX model travels next to the weights
        ckpt["network_weights"] = dict(ckpt["network_weights"])
        ckpt["runtime_model"] = ckpt["network_weights"].pop(RUNTIME_KEY)
        ckpt["network_weights"].pop(DIGEST_KEY, None)
    if keep_training_state:
        missing = [k for k in ("optimizer_state", "logging", "current_epoch", "_best_ema") if k not in ckpt]
        if missing:
            raise NnUNetPruneError(f"{file} holds weights only (no {', '.join(missing)}), e.g. an `nnunet-prune "
                                   f"export`: it predicts, but training cannot continue from it (--c). Resume from "
                                   f"the checkpoint nnUNetv2_train wrote.")
    else:
        ckpt = {k: v for k, v in ckpt.items() if k not in ("optimizer_state", "grad_scaler_state")}
    ckpt["network_weights"] = normalise_state_dict(ckpt["network_weights"])
    return ckpt


def _adaptive_configuration(configuration_manager):
    """A copy of ``configuration_manager`` whose architecture names the width-adaptive class of its network (the
    class pruned widths load into; every other entry unchanged).

    Raises:
        NnUNetPruneError: an architecture the registry does not support.
    """
    from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

    from nnunet_prune.networks import adaptive_class_name

    configuration = dict(configuration_manager.configuration)
    architecture = dict(configuration["architecture"])
    architecture["network_class_name"] = adaptive_class_name(architecture["network_class_name"])
    configuration["architecture"] = architecture
    return ConfigurationManager(configuration)


def build_network(plans_manager, configuration_manager, dataset_json: dict, trainer_name: str = "nnUNetTrainer",
                  deep_supervision: bool = False, adaptive: bool = False) -> nn.Module:
    """THE network builder of this package: the network exactly as ``nnUNetPredictor`` builds it for a model folder
    (and ``nnUNetv2_train`` for a plans file): the trainer class ``trainer_name`` (found where nnU-Net looks, this
    package's trainers included), its ``build_network_architecture`` (both of nnU-Net's signatures), randomly
    initialised. A pruning trainer returns its width-adaptive network; a stock trainer returns the plans' class, which
    is the adaptive one in an exported folder. ``trainer_name``: the checkpoint's (a model folder), or the stock
    ``nnUNetTrainer`` that trains plans by default. ``adaptive``: the plans' architecture named by its
    width-adaptive class first (:func:`nnunet_prune.networks.adaptive_class_name`), for a tool that changes widths
    (the structured sweep) or loads a pruned fold into a network of the plans.

    Raises:
        NnUNetPruneError: nnU-Net does not know the trainer; with ``adaptive``, an unsupported architecture.
    """
    import inspect

    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

    cm = _adaptive_configuration(configuration_manager) if adaptive else configuration_manager
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net narrates its search (several lines per lookup)
            trainer_class = recursive_find_trainer_class_by_name(trainer_name)
    except RuntimeError as e:
        if isinstance(e, NnUNetPruneError):
            raise
        raise NnUNetPruneError(f"The checkpoint names the trainer {trainer_name}, which nnU-Net cannot find (nor can "
                               f"nnUNetv2_predict). Install the package that defines it.") from None
    n_in = determine_num_input_channels(plans_manager, cm, dataset_json)
    n_out = plans_manager.get_label_manager(dataset_json).num_segmentation_heads
    if "plans_manager" in inspect.signature(trainer_class.build_network_architecture).parameters:
        return trainer_class.build_network_architecture(plans_manager, cm, n_in, n_out,
                                                        enable_deep_supervision=deep_supervision)
    return trainer_class.build_network_architecture(cm.network_arch_class_name, cm.network_arch_init_kwargs,
                                                    cm.network_arch_init_kwargs_req_import, n_in, n_out,
                                                    enable_deep_supervision=deep_supervision)


def check_trained_fold(file: str | os.PathLike, plans: dict, configuration: str, dataset_json: dict) -> dict:
    """Check a trained fold's checkpoint that a trainer starts from, before the trainer writes anything: readable,
    trained with the same plans identifier and configuration, weights that fit the plans' network. Returns it.

    Raises:
        NnUNetPruneError: naming the file, what does not match and what to do.
    """
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_prune.networks.checkpoints import check_state_dict

    ckpt = read_checkpoint(file)
    init = ckpt["init_args"] if isinstance(ckpt["init_args"], dict) else {}
    theirs = init.get("configuration")
    their_plans = init.get("plans", {}).get("plans_name") if isinstance(init.get("plans"), dict) else None
    if theirs != configuration or (their_plans is not None and their_plans != plans.get("plans_name")):
        raise NnUNetPruneError(
            f"{file} was trained with plans {their_plans!r}, configuration {theirs!r}; this run uses plans "
            f"{plans.get('plans_name')!r}, configuration {configuration!r}. Start from a fold trained with the same "
            f"plans (-p) and configuration.")
    pm = PlansManager(plans)
    cm = pm.get_configuration(configuration)
    with torch.random.fork_rng(devices=[]):  # a check draws nothing from a seeded training's generator
        network = build_network(pm, cm, dataset_json, adaptive=True)  # the network the trainer loads it into
    ckpt["network_weights"] = check_state_dict(network, ckpt["network_weights"], str(file), cm.patch_size)
    return ckpt


@dataclass
class ModelFolder:
    """A trained nnU-Net model folder, validated."""

    path: Path
    checkpoint_name: str = CHECKPOINT
    folds: list = field(default_factory=list)
    _checkpoints: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def open(cls, path: str | os.PathLike, folds: Sequence | None = None,
             checkpoint_name: str = CHECKPOINT, validate: bool = True) -> ModelFolder:
        """Open ``path``; ``folds`` None means every fold that has ``checkpoint_name``. With ``validate`` every
        chosen fold's checkpoint is checked against the network at once (:meth:`validate`).

        Raises:
            NnUNetPruneError: not a model folder, missing folds, or a checkpoint that does not fit.
        """
        path, chosen = model_folder_folds(path, folds, checkpoint_name)  # the file-system checks (no torch)
        folder = cls(path, checkpoint_name, chosen)
        if validate:
            folder.validate()
        return folder

    def validate(self) -> None:
        """Check every chosen fold's checkpoint against the plans' network before any work: a readable nnU-Net
        checkpoint, of a configuration the plans hold, with the network's keys, tensor ranks and kernel sizes,
        and widths that fit together (:func:`nnunet_prune.networks.checkpoints.check_state_dict`).

        Raises:
            NnUNetPruneError: naming the file, what is wrong and what to do.
        """
        from nnunet_prune.networks.checkpoints import check_state_dict

        configurations = self.plans.get("configurations", {})
        for fold in self.folds:
            ckpt = self.load_checkpoint(fold)
            configuration = ckpt["init_args"].get("configuration") if isinstance(ckpt["init_args"], dict) else None
            if configuration not in configurations:
                raise NnUNetPruneError(
                    f"{self.path}: the checkpoint's configuration {configuration!r} cannot be read from plans.json "
                    f"(fold {fold} was trained for it; plans.json defines {', '.join(configurations) or 'none'}). "
                    f"Is plans.json the one the model was trained with?")
            if configuration != self.configuration_name:
                raise NnUNetPruneError(
                    f"{self.path}: fold {fold} was trained for configuration {configuration!r} but fold "
                    f"{self.folds[0]} for {self.configuration_name!r}; a model folder holds one configuration.")
        network = self.build_network()
        for fold in self.folds:  # (read_checkpoint already normalised the weights)
            check_state_dict(network, self.load_checkpoint(fold)["network_weights"],
                             str(self.fold_path(fold) / self.checkpoint_name), self.patch_size)

    # ---------------------------------------------------------------- metadata
    @cached_property
    def plans(self) -> dict:
        """The folder's plans.json (read once), as PyTorch sees it: in a runtime folder (``nnunet-prune export
        --runtime``) each configuration names the PyTorch network the runtime runs (:attr:`runtime` says which).

        Raises:
            NnUNetPruneError: the file cannot be read or holds no JSON object.
        """
        from nnunet_prune.networks.runtime import pytorch_architecture

        plans = _read_json(self.path / "plans.json")
        for cfg in plans.get("configurations", {}).values():
            if isinstance(cfg, dict) and isinstance(cfg.get("architecture"), dict):
                cfg["architecture"] = pytorch_architecture(cfg["architecture"])
        return plans

    @cached_property
    def runtime(self) -> tuple[str, dict] | None:
        """(runtime name, options) of a runtime folder's configuration, None for a PyTorch folder."""
        from nnunet_prune.networks.runtime import runtime_of

        configurations = _read_json(self.path / "plans.json").get("configurations", {})
        cfg = configurations.get(self.configuration_name, {})
        while isinstance(cfg, dict) and "architecture" not in cfg and cfg.get("inherits_from") in configurations:
            cfg = configurations[cfg["inherits_from"]]
        return runtime_of(cfg.get("architecture", {})) if isinstance(cfg, dict) else None

    @property
    def int8(self) -> bool:
        """Whether this is an INT8 runtime folder (``nnunet-prune export --int8``)."""
        return self.runtime is not None and self.runtime[1].get("precision") == "int8"

    @cached_property
    def dataset_json(self) -> dict:
        """The folder's dataset.json (read once).

        Raises:
            NnUNetPruneError: the file cannot be read or holds no JSON object.
        """
        return _read_json(self.path / "dataset.json")

    @cached_property
    def plans_manager(self):
        """nnU-Net's ``PlansManager`` of :attr:`plans`."""
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        return PlansManager(self.plans)

    @cached_property
    def first_checkpoint(self) -> dict:
        """The first chosen fold's checkpoint (:meth:`load_checkpoint`); trainer and configuration names are read from
        it."""
        return self.load_checkpoint(self.folds[0])

    @property
    def trainer_name(self) -> str:
        """The trainer class name the first chosen fold was trained with (from its checkpoint)."""
        return self.first_checkpoint["trainer_name"]

    @property
    def configuration_name(self) -> str:
        """The configuration (e.g. ``2d``, ``3d_fullres``) the first chosen fold was trained for (from its
        checkpoint)."""
        return self.first_checkpoint["init_args"]["configuration"]

    @cached_property
    def configuration_manager(self):
        """nnU-Net's ``ConfigurationManager`` of :attr:`configuration_name`."""
        return self.plans_manager.get_configuration(self.configuration_name)

    @cached_property
    def label_manager(self):
        """nnU-Net's ``LabelManager`` of the plans and dataset.json (labels or regions, ignore label)."""
        return self.plans_manager.get_label_manager(self.dataset_json)

    @property
    def num_input_channels(self) -> int:
        """The network's input channels, as nnU-Net's ``determine_num_input_channels`` counts them (image channels, plus
        one-hot previous-stage channels in a cascade)."""
        from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

        return determine_num_input_channels(self.plans_manager, self.configuration_manager, self.dataset_json)

    @property
    def patch_size(self) -> list[int]:
        """The configuration's patch size in voxels, one entry per spatial axis."""
        return list(self.configuration_manager.patch_size)

    def fold_path(self, fold) -> Path:
        """The fold's subfolder ``<path>/fold_<fold>`` (it need not exist)."""
        return self.path / fold_name(fold)

    def load_checkpoint(self, fold) -> dict:
        """The fold's checkpoint (read once, then cached) without optimizer state; ``network_weights`` is a plain
        state dict (:func:`nnunet_prune.networks.checkpoints.normalise_state_dict`).

        Raises:
            NnUNetPruneError: the file cannot be read or is not an nnU-Net checkpoint.
        """
        key = str(fold)
        if key not in self._checkpoints:
            self._checkpoints[key] = read_checkpoint(self.fold_path(fold) / self.checkpoint_name)
        return self._checkpoints[key]

    def release_checkpoints(self) -> None:
        """Drop the cached checkpoints' weights (a long-lived folder whose weights now live in networks, e.g. a
        distillation teacher, holds no second copy in host memory); names and init arguments stay readable, and a
        later :meth:`load_checkpoint` reads the file again."""
        first = self.first_checkpoint
        self._checkpoints.clear()
        self.__dict__["first_checkpoint"] = {k: v for k, v in first.items() if k != "network_weights"}

    def validation_summary(self, fold) -> dict | None:
        """The fold's ``validation/summary.json`` (nnU-Net's validation metrics), or None if the fold was not
        validated."""
        file = self.fold_path(fold) / "validation" / "summary.json"
        return _read_json(file) if file.is_file() else None

    # ---------------------------------------------------------------- networks
    def build_network(self, deep_supervision: bool = False, adaptive: bool = False) -> nn.Module:
        """The network as ``nnUNetv2_predict`` builds it (:func:`build_network` with the checkpoint's trainer),
        randomly initialised; its architecture must be registered (:mod:`nnunet_prune.surgery.architectures`).
        ``adaptive``: as the width-adaptive class whatever trainer made the folder (see :func:`build_network`).

        Raises:
            NnUNetPruneError: the trainer is unknown, or the architecture is not supported.
        """
        from nnunet_prune.networks import adaptive_class_name

        adaptive_class_name(self.configuration_manager.network_arch_class_name)  # supported, or a clear error
        return build_network(self.plans_manager, self.configuration_manager, self.dataset_json, self.trainer_name,
                             deep_supervision, adaptive)

    def load_network(self, fold, deep_supervision: bool = False) -> nn.Module:
        """The fold's trained network (widths and blocks from its checkpoint), in eval mode on the CPU."""
        from nnunet_prune.surgery.architectures import of

        net = self.build_network(deep_supervision)
        ckpt = self.load_checkpoint(fold)
        of(net).resize(net, ckpt["network_weights"])  # also when a stock class was built (it does not resize)
        net.load_state_dict(ckpt["network_weights"])
        return net.eval()

    def checkpoint_bytes(self, fold) -> int:
        """Size of the fold's checkpoint file in bytes."""
        return (self.fold_path(fold) / self.checkpoint_name).stat().st_size
