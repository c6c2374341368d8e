"""The checks of a pruning trainer before nnU-Net creates the fold folder (nnU-Net glue): plain functions.

:meth:`nnunet_prune.nnunet.trainers.base.nnUNetTrainerPruning.resolve_settings` calls them at the start of the
trainer's ``__init__``, so a rejected setting leaves nothing behind (an empty ``fold_k`` would break
``nnUNetv2_predict`` without ``-f``):

* :func:`method_settings` -- the method's settings (defaults <- variant <- plans entry <- variable), validated;
* :func:`check_max_ratio` -- the per-group cap is a fraction;
* :func:`check_architecture` -- the plans' network is one whose parts the method removes;
* :func:`dense_start` -- the dense fold a ``start_from_dense`` trainer starts from, found and checked;
* :func:`check_network` -- the method's own objections to the plans' (unpruned) network.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from torch import nn

from nnunet_prune import NnUNetPruneError
from nnunet_prune.methods.base import MethodSettings, PruningMethod
from nnunet_prune.nnunet.seeding import method_rng
from nnunet_prune.nnunet.trainers import dense
from nnunet_prune.surgery import build_channel_graph
from nnunet_prune.surgery.graph import UnsupportedNetworkError


def method_settings(method_class: type[PruningMethod] | None, plans: Mapping, fixed: Mapping[str, Any],
                    environ: Mapping[str, str]) -> MethodSettings | None:
    """The method's :class:`~nnunet_prune.methods.base.MethodSettings`: its defaults, the variant's ``fixed`` values,
    the plans entry, then the method's variable in ``environ`` (None without a method).

    Raises:
        NnUNetPruneError: an unknown key, a bad value, or one that contradicts a fixed value.
    """
    if method_class is None:
        return None
    return method_class.settings_class.resolve(plans, environ=environ, fixed=fixed)


def check_max_ratio(trainer: str, max_ratio: float | None) -> None:
    """``pruning_max_ratio`` is None or a fraction in [0, 1].

    Raises:
        NnUNetPruneError: naming the trainer and the value.
    """
    if max_ratio is not None and not 0 <= max_ratio <= 1:
        raise NnUNetPruneError(f"{trainer}.pruning_max_ratio must be in [0, 1], got {max_ratio}.")


def method_generator(settings: MethodSettings | None, seed: int | None, rank: int = 0) -> np.random.Generator | None:
    """The method's generator, derived from the training's ``seed`` and the DDP ``rank`` (None unseeded, or when the
    method's settings carry a seed of their own, e.g. STAMP's ``seed`` >= 0: that one wins)."""
    own = getattr(settings, "seed", -1)
    if isinstance(own, int) and own >= 0:
        return None
    return method_rng(seed, rank)


def check_architecture(trainer: str, method_class: type[PruningMethod] | None, plans: Mapping,
                       configuration: str) -> None:
    """The plans' network must be one whose parts the method removes (channels, weights or branches, from the
    architecture registry): a channel-pruning trainer on PSP-Seg plans, or PSP-Seg's trainer on a U-Net's plans,
    stops here with the planner or trainer to use. An unsupported network passes (it is reported when built).

    Raises:
        NnUNetPruneError: naming the plans, the network and what to run instead.
    """
    if method_class is None:
        return
    from nnunet_prune.surgery import architectures

    try:
        name = PlansManager(plans).get_configuration(configuration).network_arch_class_name
        arch = architectures.for_class_name(name)
    except (UnsupportedNetworkError, KeyError, ValueError, TypeError):
        return  # an unsupported network is reported when the network is built
    removes = method_class.removes
    if removes in arch.removes:
        return
    plans_name = plans.get("plans_name", "?")
    dataset = str(plans.get("dataset_name", "?"))
    dataset_id = dataset[len("Dataset"):len("Dataset") + 3] if dataset.startswith("Dataset") else dataset
    network = name.rpartition(".")[2]
    if removes == "branches":
        raise NnUNetPruneError(
            f"{trainer} prunes the parallel branches of PSP-Seg's network, but plans {plans_name} build a {network}. "
            f"Plan PSP-Seg first: `nnUNetv2_plan_and_preprocess -d {dataset_id} -pl PSPSegPlanner_S` (or "
            f"PSPSegPlanner_B, PSPSegPlanner_L), then train with `-p nnUNetPSPSegPlans_S`. Nothing was written.")
    raise NnUNetPruneError(
        f"{trainer} removes {removes} of nnU-Net's U-Nets, but plans {plans_name} build {network} (its parts: "
        f"{', '.join(arch.removes)}). Train these plans with `-tr nnUNetTrainerPSPSeg` (or nnUNetTrainer / "
        f"nnUNetTrainerBudget for the unpruned network), or {trainer} with `-p nnUNetPlans`. Nothing was written.")


@dataclass(frozen=True)
class DenseStart:
    """Where a dense start comes from: the dense fold's ``checkpoint_final.pth`` path, and its checkpoint once checked
    (None when the check waits for the start of training: the fold has a checkpoint of its own, ``--c`` / ``--val``);
    ``searched``: the trainers whose model folders were searched (empty when ``NNUNET_PRUNE_DENSE_MODEL`` named it)."""

    path: str
    checkpoint: dict | None
    searched: tuple[str, ...]


def dense_start(trainer: str, plans: dict, configuration: str, fold, dataset_json: dict,
                environ: Mapping[str, str], trainers: Sequence[str], hint: str = "") -> DenseStart:
    """The dense fold a ``start_from_dense`` trainer starts from
    (:func:`~nnunet_prune.nnunet.trainers.dense.dense_checkpoint_path`), checked
    (:func:`check_dense_start`) unless the trainer's own fold already has a checkpoint (``--c`` / ``--val``).

    Raises:
        NnUNetPruneError: nnUNet_results unset, or the dense fold missing, unreadable, of other plans or
            configuration, or with weights that do not fit.
    """
    resuming = dense.has_own_checkpoint(trainer, plans, configuration, fold)
    path = dense.dense_checkpoint_path(plans, configuration, fold, environ, trainers)
    searched = () if environ.get(dense.ENV_VAR) else tuple(trainers)
    start = DenseStart(path, None, searched)
    if resuming:
        return start
    return DenseStart(path, check_dense_start(start, trainer, plans, configuration, fold, dataset_json, hint),
                      searched)


def check_dense_start(start: DenseStart, trainer: str, plans: dict, configuration: str, fold, dataset_json: dict,
                      hint: str = "") -> dict:
    """The dense fold's checkpoint, checked (:func:`nnunet_prune.nnunet.trainers.dense.check_dense`).

    Raises:
        NnUNetPruneError: missing (naming the folders searched and what to train), unreadable, of other plans or
            configuration, or weights that do not fit.
    """
    return dense.check_dense(start.path, trainer, plans, configuration, fold, dataset_json,
                             searched=start.searched, train_first=hint)


def check_network(trainer: str, configuration: str, method: PruningMethod, network: nn.Module,
                  patch_size: Sequence[int]) -> None:
    """The method's :meth:`~nnunet_prune.methods.base.PruningMethod.network_problems` on the plans' (unpruned)
    ``network``, built on the CPU before nnU-Net creates the fold folder.

    Raises:
        NnUNetPruneError: listing the problems and the variable that sets the method.
    """
    problems = method.network_problems(network, build_channel_graph(network), patch_size)
    if problems:
        s = method.settings
        raise NnUNetPruneError(f"{trainer} cannot work on this {configuration} network: "
                               + "; ".join(problems) + (f". Change {s.ENV_VAR} or the plans entry "
                                                        f"'nnunet_prune': {{'{s.NAME.lower()}': ...}}"
                                                        if s.ENV_VAR else "") + ". Nothing was written.")


def plans_network(build: Callable[..., nn.Module], plans: dict, configuration: str,
                  dataset_json: dict) -> tuple[nn.Module, tuple[int, ...]]:
    """The plans' network without deep supervision, built with the trainer's ``build`` (its
    ``build_network_architecture``), and the configuration's patch size."""
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

    pm = PlansManager(plans)
    cm = pm.get_configuration(configuration)
    network = build(pm, cm, determine_num_input_channels(pm, cm, dataset_json),
                    pm.get_label_manager(dataset_json).num_segmentation_heads, enable_deep_supervision=False)
    return network, cm.patch_size
