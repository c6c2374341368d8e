"""The teacher of a distilled training (nnU-Net glue): its settings, where it is found, whether it fits the student,
and the teacher itself (the trained folds' networks, logits averaged).

Any trainer of this package can learn from a trained model folder in addition to nnU-Net's loss
(:mod:`nnunet_prune.nnunet.trainers.teaching`; docs/distillation.md). Settings: the defaults of
:class:`DistillSettings` (Fast-nnUNet's weight 0.3 and temperature 3), a trainer variant's fixed values
(``nnUNetTrainerDistill`` and every ``*_distill`` variant switch it on), the plans entry
``plans['nnunet_prune']['distill']``, then ``NNUNET_PRUNE_DISTILL`` (``1`` / ``0``, or ``'weight=0.3,temperature=3,
folds=0+1+2'``). The teacher folder: ``NNUNET_PRUNE_TEACHER``, else ``NNUNET_PRUNE_DENSE_MODEL`` (the folder a dense
start reads), else the stock ``nnUNetTrainer`` / ``nnUNetTrainerBudget`` folder of the student's plans, then of
``nnUNetPlans`` (a LUnet or PSP-Seg student's plans are not the dense model's).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from nnunet_prune import NnUNetPruneError
from nnunet_prune.core.flags import parse_flag
from nnunet_prune.core.stats import count_macs, count_parameters
from nnunet_prune.methods.base import MethodSettings
from nnunet_prune.nnunet.modelfolder import ModelFolder, trained_model_folders
from nnunet_prune.nnunet.prechecks import model_folder_folds, parse_fold
from nnunet_prune.nnunet.settings import nnunet_folders

TEACHER_VAR = "NNUNET_PRUNE_TEACHER"
DENSE_VAR = "NNUNET_PRUNE_DENSE_MODEL"
#: the trainers whose folders are searched for the teacher, and the plans searched after the student's own
TEACHER_TRAINERS = ("nnUNetTrainer", "nnUNetTrainerBudget")
STOCK_PLANS = "nnUNetPlans"


@dataclass
class DistillSettings(MethodSettings):
    """Distillation settings (Hinton et al. 2015; Fast-nnUNet's defaults: weight 0.3, temperature 3).

    ``enabled``: learn from the teacher; ``weight``: the KL term's factor in the loss (nnU-Net's loss + weight * KL);
    ``temperature``: T of the softened outputs (the KL is multiplied by T^2); ``folds``: the teacher's folds, ``+``
    between them (e.g. ``0+1+2``, ``all`` for ``fold_all``; a list in the plans entry; empty: every numbered fold
    with ``checkpoint_final.pth``, as ``nnUNetv2_predict``)."""

    NAME: ClassVar[str] = "distill"
    ENV_VAR: ClassVar[str] = "NNUNET_PRUNE_DISTILL"
    EXAMPLE: ClassVar[str] = "weight=0.3,temperature=3,folds=0+1+2+3+4"

    enabled: bool = False
    weight: float = 0.3
    temperature: float = 3.0
    folds: str = ""

    def problems(self) -> list[str]:
        """Out-of-range values (weight >= 0, temperature > 0, folds parseable)."""
        out = super().problems()
        if self.weight < 0:
            out.append(f"weight must be >= 0 (got {self.weight})")
        if not self.temperature > 0:
            out.append(f"temperature must be > 0 (got {self.temperature})")
        try:
            self.fold_list()
        except NnUNetPruneError as e:
            out.append(f"folds: {e}")
        return out

    def fold_list(self) -> list[int | str] | None:
        """The chosen teacher folds (None: every trained fold).

        Raises:
            NnUNetPruneError: an entry is neither a whole number >= 0 nor ``all``."""
        parts = [p for p in str(self.folds).replace(" ", "+").split("+") if p.strip()]
        return [parse_fold(p.strip()) for p in parts] or None

    @classmethod
    def resolve(cls, plans: Mapping | None = None, environ: Mapping[str, str] | None = None,
                fixed: Mapping[str, Any] | None = None, **defaults: Any) -> DistillSettings:
        """:meth:`MethodSettings.resolve`, where setting the variable or the plans entry at all switches
        distillation on: ``NNUNET_PRUNE_DISTILL=1`` (``0`` off), or key=value pairs without ``enabled``; a plans
        entry without ``enabled`` likewise.

        Raises:
            NnUNetPruneError: a value that is neither a switch nor key=value pairs, an unknown key, a bad value, or
                one that contradicts the variant's fixed ``enabled``.
        """
        environ = dict(environ or {})
        text = environ.get(cls.ENV_VAR, "").strip()
        if text and "=" not in text:
            flag = parse_flag(text)
            if flag is None:
                raise NnUNetPruneError(f"{cls.ENV_VAR}={text!r}: expected 1 / 0 (on / off) or key=value pairs, e.g. "
                                       f"'{cls.EXAMPLE}'.")
            environ[cls.ENV_VAR] = f"enabled={int(flag)}"
        elif text and "enabled" not in cls.parse_env(text):
            environ[cls.ENV_VAR] = f"enabled=1,{text}"
        entry = (plans or {}).get("nnunet_prune", {}) if isinstance(plans, Mapping) else {}
        entry = entry.get(cls.NAME) if isinstance(entry, Mapping) else None
        if isinstance(entry, Mapping) and entry:
            entry = {"enabled": True, **entry}
            if isinstance(entry.get("folds"), (list, tuple)):  # the plans entry may list them: [0, 1]
                entry["folds"] = "+".join(map(str, entry["folds"]))
            plans = {**plans, "nnunet_prune": {**plans["nnunet_prune"], cls.NAME: entry}}
        return super().resolve(plans, environ, fixed, **defaults)


def teacher_folder(plans: Mapping, configuration: str, environ: Mapping[str, str], student_folder: Path | None = None,
                   trainers: Sequence[str] = TEACHER_TRAINERS) -> Path:
    """The teacher's model folder (see the module): the variables first, then the search, ``nnUNetPlans`` before the
    student's own plans (a LUnet student's plans hold the small LUnet baseline, not the dense model); the student's
    own folder is skipped.

    Raises:
        NnUNetPruneError: nothing found (naming the folders searched, the trained models of the dataset and the
            variable to set), nnUNet_results unset without a variable, or a variable naming the student's own folder.
    """
    own = Path(student_folder).expanduser().resolve() if student_folder is not None else None
    for var in (TEACHER_VAR, DENSE_VAR):
        if environ.get(var):
            folder = Path(environ[var]).expanduser().resolve()
            if folder == own:
                raise NnUNetPruneError(f"{var} names the student's own model folder {folder}: point {TEACHER_VAR} at "
                                       f"the teacher. Nothing was written.")
            return folder
    results = nnunet_folders()["nnUNet_results"]
    if results is None:
        raise NnUNetPruneError(f"nnUNet_results is not set: set it, or point {TEACHER_VAR} at the teacher's "
                               f"model folder. Nothing was written.")
    dataset = Path(results).expanduser().resolve() / plans["dataset_name"]
    names = [f"{t}__{p}__{configuration}" for p in dict.fromkeys((STOCK_PLANS, plans["plans_name"]))
             for t in trainers]
    folder = next((dataset / n for n in names if (dataset / n).resolve() != own
                   and any((dataset / n).glob("fold_*/checkpoint_final.pth"))), None)
    if folder is None:
        trained = [p.name for p in trained_model_folders(dataset) if p.name.endswith(f"__{configuration}")]
        raise NnUNetPruneError(
            f"Distillation needs a trained teacher, but none of {', '.join(names)} in {dataset} has a finished "
            f"fold. Train the dense model first (nnUNetv2_train ... -tr nnUNetTrainer, or nnUNetTrainerBudget "
            f"for a short run), or point {TEACHER_VAR} at a model folder"
            + (f" (trained for {configuration}: {', '.join(trained)})" if trained else "") + ". Nothing was "
            "written.")
    return folder


def _preprocessing(plans: Mapping, configuration: str) -> dict:
    """What decides the network's input: spacing, normalisation schemes, transposition, and the dataset's intensity
    statistics of the channels that CTNormalization normalises with them (clipping percentiles, mean, std)."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    pm = PlansManager(dict(plans))
    cm = pm.get_configuration(configuration)
    properties = plans.get("foreground_intensity_properties_per_channel") or {}
    ct = {str(i): properties.get(str(i)) for i, scheme in enumerate(cm.normalization_schemes)
          if scheme == "CTNormalization"}  # the only scheme that uses the dataset's statistics
    return {"spacing": [float(s) for s in cm.spacing], "normalization_schemes": list(cm.normalization_schemes),
            "use_mask_for_norm": list(cm.use_mask_for_norm), "transpose_forward": list(pm.transpose_forward),
            "CT intensity statistics": ct}


def _labels(label_manager) -> dict:
    """What the network's outputs mean, in channel order: regions or labels, and the ignore label."""
    regions = label_manager.foreground_regions if label_manager.has_regions else None
    return {"labels": [int(x) for x in label_manager.all_labels],
            "regions": None if regions is None else [sorted(map(int, r)) if isinstance(r, (list, tuple))
                                                     else [int(r)] for r in regions],
            "ignore label": label_manager.ignore_label}


def _channel_names(dataset_json: Mapping) -> list[str]:
    """The input channels' names in order, case-insensitive (``channel_names``, or the older ``modality``)."""
    names = dataset_json.get("channel_names", dataset_json.get("modality", {}))
    return [str(v).lower() for _, v in sorted(names.items(), key=lambda kv: int(kv[0]))]


def _total_strides(configuration_manager) -> list[int]:
    """The product of the network's strides per axis (a patch the network runs on must be a multiple of it)."""
    import numpy as np

    strides = configuration_manager.network_arch_init_kwargs.get("strides") or []
    dim = len(configuration_manager.patch_size)
    total = np.ones(dim, dtype=int)
    for s in strides:
        total *= np.array([s] * dim if isinstance(s, int) else s, dtype=int)
    return [int(t) for t in total]


def fit_problems(teacher: ModelFolder, plans: Mapping, configuration: str, dataset_json: Mapping) -> list[str]:
    """What keeps ``teacher`` from teaching a student of ``plans`` / ``configuration`` / ``dataset_json``: other labels
    or regions (in output-channel order) or ignore label, other input channels (number or names), a student patch
    the teacher cannot run on (not a multiple of its total strides; another patch size that fits is allowed), or
    other preprocessing (spacing, normalisation, transposition, CT intensity statistics: the teacher would see other
    inputs than it was trained on). [] when it fits."""
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    out = []
    pm = PlansManager(dict(plans))
    cm = pm.get_configuration(configuration)
    mine_labels, their_labels = _labels(pm.get_label_manager(dict(dataset_json))), _labels(teacher.label_manager)
    if mine_labels != their_labels:
        out.append(f"labels/regions {their_labels} (teacher) vs {mine_labels} (student)")
    n_in = determine_num_input_channels(pm, cm, dict(dataset_json))
    if teacher.num_input_channels != n_in:
        out.append(f"{teacher.num_input_channels} input channels (teacher) vs {n_in} (student)")
    names = [_channel_names(d) for d in (teacher.dataset_json, dataset_json)]
    if n_in == teacher.num_input_channels and names[0] != names[1]:
        out.append(f"input channels {names[0]} (teacher) vs {names[1]} (student)")
    strides = _total_strides(teacher.configuration_manager)
    if any(p % s for p, s in zip(cm.patch_size, strides)):
        out.append(f"patch size {list(cm.patch_size)} (student) is not a multiple of the teacher's total strides "
                   f"{strides} (the teacher cannot run on it; its own patch size is {teacher.patch_size})")
    mine, theirs = _preprocessing(plans, configuration), _preprocessing(teacher.plans, teacher.configuration_name)
    out += [f"{k} {theirs[k]} (teacher) vs {mine[k]} (student)" for k in mine if mine[k] != theirs[k]]
    return out


def open_teacher(trainer: str, plans: Mapping, configuration: str, dataset_json: Mapping,
                 settings: DistillSettings, environ: Mapping[str, str], student_folder: Path | None = None,
                 folds: Sequence | None = None) -> ModelFolder:
    """The teacher's model folder with the chosen folds (``folds``, else the settings', else every numbered fold
    with ``checkpoint_final.pth``), every checkpoint checked against its network, and checked to
    fit the student (:func:`fit_problems`). Called before the student's fold folder is written.

    Raises:
        NnUNetPruneError: no teacher, missing folds, a damaged checkpoint, or a teacher that does not fit (each
            mismatch named).
    """
    folder = teacher_folder(plans, configuration, environ, student_folder)
    chosen = list(folds) if folds is not None else settings.fold_list()
    if chosen is None:  # as nnUNetv2_predict: the numbered folds (fold_all only when there is no other)
        available = model_folder_folds(folder)[1]
        chosen = [f for f in available if f != "all"] or available
    teacher = ModelFolder.open(folder, chosen)
    problems = fit_problems(teacher, plans, configuration, dataset_json)
    if problems:
        raise NnUNetPruneError(f"{trainer}: the teacher {folder} does not fit the student: " + "; ".join(problems)
                               + f". Choose a teacher trained on the same data ({TEACHER_VAR}). Nothing was written.")
    return teacher


class Teacher:
    """The teacher's folds as networks, in eval mode, without gradients; called on a batch it returns the folds'
    logits averaged (the full-resolution output, as the predictor's network gives it without mirroring).

    On a GPU the forward passes run under float16 autocast (as nnU-Net's predictor), on a CPU in float32. The
    networks are held outside the student (not a submodule of anything the trainer saves or optimises)."""

    def __init__(self, folder: ModelFolder, device: torch.device):
        self.folder = folder
        self.folds = list(folder.folds)
        self.device = torch.device(device)
        with torch.random.fork_rng(devices=[]):  # building draws initial weights: the student's draws stay the same
            self.networks: list[nn.Module] = [
                folder.load_network(f).to(self.device).requires_grad_(False).eval() for f in self.folds]
        self.trainer_name = folder.trainer_name
        folder.release_checkpoints()  # the weights live in the networks: no second copy in host memory
        self.seconds = 0.0  # forward time summed since the last :meth:`take_seconds`
        self.calls = 0

    @property
    def parameters(self) -> int:
        """Parameters of one fold's network (the first chosen fold)."""
        return count_parameters(self.networks[0])

    def macs_per_patch(self) -> int:
        """Multiply-accumulates of all chosen folds for one patch (batch 1), i.e. the teacher's cost per sample."""
        return sum(count_macs(net, self.folder.patch_size) for net in self.networks)

    def __call__(self, data: torch.Tensor) -> torch.Tensor:
        """(B, C_in, *patch) input -> (B, C_out, *patch) float32 logits averaged over the folds (no gradient)."""
        start = time.perf_counter()
        x = data.to(self.device, non_blocking=True)
        cast = (torch.autocast("cuda", dtype=torch.float16) if self.device.type == "cuda"
                else contextlib.nullcontext())
        with torch.no_grad(), cast:
            total = None
            for net in self.networks:
                out = net(x)
                out = (out[0] if isinstance(out, (list, tuple)) else out).float()
                total = out if total is None else total + out
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return total / len(self.networks)

    def take_seconds(self) -> tuple[float, int]:
        """(seconds spent in forward passes, number of calls) since the last call; both reset."""
        out = (self.seconds, self.calls)
        self.seconds, self.calls = 0.0, 0
        return out

    def describe(self) -> dict:
        """What ``pruning_config.json`` records of the teacher: folder, trainer, folds, parameters, MACs."""
        return {"folder": str(self.folder.path), "trainer": self.trainer_name, "folds": self.folds,
                "parameters_per_fold": self.parameters, "macs_per_patch_all_folds": self.macs_per_patch()}
