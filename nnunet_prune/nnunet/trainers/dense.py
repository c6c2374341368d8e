"""Where a pruning trainer's dense start comes from, checked before nnU-Net writes anything (glue).

A trainer with ``start_from_dense = True`` starts from fold F of a trained model instead of random weights: the
folder in ``NNUNET_PRUNE_DENSE_MODEL`` (a model folder with ``fold_F/checkpoint_final.pth``), else the stock
``nnUNetTrainer__<plans>__<configuration>`` folder of the same dataset, or, if that has no fold F,
``nnUNetTrainerBudget__<plans>__<configuration>``. Unlike nnU-Net's ``-pretrained_weights`` (which skips the
segmentation heads), every tensor is loaded, heads included: the pruned model starts as the trained model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from os.path import isfile, join

from nnunet_prune import NnUNetPruneError
from nnunet_prune.nnunet.modelfolder import check_trained_fold, trained_model_folders

ENV_VAR = "NNUNET_PRUNE_DENSE_MODEL"
#: model folders searched for the dense fold when NNUNET_PRUNE_DENSE_MODEL is not set, in this order
DEFAULT_DENSE_TRAINERS = ("nnUNetTrainer", "nnUNetTrainerBudget")


def _results() -> str | None:
    from nnunetv2.paths import nnUNet_results

    return None if nnUNet_results is None else str(nnUNet_results)


def dense_checkpoint_path(plans: dict, configuration: str, fold, environ: Mapping[str, str],
                          trainers: Sequence[str] = DEFAULT_DENSE_TRAINERS) -> str:
    """``$NNUNET_PRUNE_DENSE_MODEL/fold_F/checkpoint_final.pth``, else that of the first of ``trainers``' model
    folders (same plans and configuration) that has fold F (see the module).

    Raises:
        NnUNetPruneError: neither the variable nor ``nnUNet_results`` is set.
    """
    folder = environ.get(ENV_VAR)
    if not folder:
        results = _results()
        if results is None:
            raise NnUNetPruneError(f"nnUNet_results is not set: set it, or point {ENV_VAR} at the dense model "
                                   f"folder.")
        candidates = [join(results, plans["dataset_name"], f"{t}__{plans['plans_name']}__{configuration}")
                      for t in trainers]
        folder = next((c for c in candidates if isfile(join(c, f"fold_{fold}", "checkpoint_final.pth"))),
                      candidates[0])
    return join(folder, f"fold_{fold}", "checkpoint_final.pth")


def own_fold_folder(trainer: str, plans: dict, configuration: str, fold) -> str | None:
    """The fold folder nnU-Net's __init__ will use for ``trainer`` (None when nnUNet_results is not set)."""
    results = _results()
    if results is None:
        return None
    return join(results, plans["dataset_name"], f"{trainer}__{plans['plans_name']}__{configuration}", f"fold_{fold}")


def has_own_checkpoint(trainer: str, plans: dict, configuration: str, fold) -> bool:
    """Whether the trainer's fold already has a checkpoint (``--c`` / ``--val``: the dense fold is not needed)."""
    own = own_fold_folder(trainer, plans, configuration, fold)
    return own is not None and any(isfile(join(own, f"checkpoint_{k}.pth")) for k in ("final", "latest", "best"))


def check_dense(path: str, trainer: str, plans: dict, configuration: str, fold, dataset_json: dict,
                searched: Sequence[str] = (), train_first: str = "") -> dict:
    """The dense fold's checkpoint, checked (:func:`~nnunet_prune.nnunet.modelfolder.check_trained_fold`).

    ``searched``: the trainers whose folders were looked in (named in the message; empty when the variable named the
    folder); ``train_first``: what to train (default: the stock trainer or nnUNetTrainerBudget).

    Raises:
        NnUNetPruneError: it is missing (the message lists the folders trained with these plans), unreadable,
            of other plans or configuration, or its weights do not fit the network.
    """
    if not isfile(path):
        results = _results()
        trained = [] if results is None else [
            str(p) for p in trained_model_folders(join(results, plans["dataset_name"]), fold,
                                                  f"__{plans['plans_name']}__{configuration}")
            if "Magnitude" not in p.name]
        where = (f"no fold_{fold}/checkpoint_final.pth in the folders of {', '.join(searched)} "
                 f"(__{plans['plans_name']}__{configuration})" if searched
                 else f"{path} does not exist")
        raise NnUNetPruneError(
            f"{trainer} starts from a trained dense fold, but {where}. Train it first ("
            + (train_first or "nnUNetv2_train ... -tr nnUNetTrainer, or nnUNetTrainerBudget for a short run")
            + f"), or point {ENV_VAR} at the model folder that holds fold_{fold}/checkpoint_final.pth"
            + (f"; trained with these plans: {', '.join(trained)}" if trained else "") + ". Nothing was written.")
    return check_trained_fold(path, plans, configuration, dataset_json)
