"""Checks of stock ``nnUNetv2_predict`` / ``nnUNetv2_predict_from_modelfolder`` before nnU-Net does any work.

nnU-Net's predictor reads each fold's checkpoint only after start-up and fails deep inside: a checkpoint a fold
lacks (``-chk checkpoint_best.pth`` on an export holding only ``checkpoint_final.pth``) is a raw
``FileNotFoundError`` traceback, and ``-device cuda`` on a machine without a GPU a multi-page traceback from its
worker processes (after it wrote three JSON files into the output folder). :func:`check_prediction` runs when the
predictor is initialised from a model folder (any folder, stock ones included; see
:mod:`nnunet_prune.nnunet.integration.patches`) and turns both into one line that says what to do.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from nnunet_prune import NnUNetPruneError


def _checkpoints_of(fold_dir: Path) -> list[str]:
    return sorted(p.name for p in fold_dir.glob("*.pth")) if fold_dir.is_dir() else []


def _runtime(model_dir: Path) -> str | None:
    """The runtime a runtime folder's plans name (``nnunet-prune export --runtime``), None for a PyTorch folder."""
    from nnunet_prune.networks.runtime import runtime_of

    try:
        plans = json.loads((model_dir / "plans.json").read_text())
    except (OSError, ValueError):
        return None
    for cfg in plans.get("configurations", {}).values():
        found = runtime_of(cfg.get("architecture", {})) if isinstance(cfg, dict) else None
        if found:
            return found[0]
    return None


def _export_hint(model_dir: Path, checkpoint_name: str) -> str:
    if not (model_dir / "export_summary.json").is_file():
        return ""
    return (f" This folder is an `nnunet-prune export`: it holds the checkpoints it was exported with; export "
            f"{checkpoint_name} too with `nnunet-prune export SOURCE -o OUT -chk checkpoint_final.pth "
            f"{checkpoint_name}`.")


def check_checkpoints(model_dir: str | Path, folds: Sequence | None, checkpoint_name: str) -> None:
    """Every fold the predictor will read has ``checkpoint_name`` (``folds`` None: at least one fold has it, as
    nnU-Net's fold detection needs).

    Raises:
        NnUNetPruneError: naming the folds without it and the checkpoints each fold does have.
    """
    model_dir = Path(model_dir)
    fold_dirs = sorted(p for p in model_dir.glob("fold_*") if p.is_dir())
    if folds is None:
        chosen = [p for p in fold_dirs if p.name != "fold_all"]
        if not chosen or any((p / checkpoint_name).is_file() for p in chosen):
            return  # no fold folder at all: nnU-Net's own message; else nnU-Net uses the folds that have it
        lacking = chosen
    else:
        folds = [folds] if isinstance(folds, str) else list(folds)
        lacking = [model_dir / f"fold_{f}" for f in folds if not (model_dir / f"fold_{f}" / checkpoint_name).is_file()]
        if not lacking:
            return
    has = "; ".join(f"{p.name}: {', '.join(_checkpoints_of(p)) or ('no checkpoint' if p.is_dir() else 'missing')}"
                    for p in lacking)
    raise NnUNetPruneError(
        f"{model_dir}: no {checkpoint_name} in {', '.join(p.name for p in lacking)} (what they have: {has}). "
        f"Pick one of those with -chk, or leave -chk out for checkpoint_final.pth." + _export_hint(model_dir,
                                                                                                   checkpoint_name))


def check_device(model_dir: str | Path, device: torch.device) -> None:
    """``device`` can run this model folder: ``cuda`` needs a GPU PyTorch can see; a runtime folder's message
    says where its runtime runs.

    Raises:
        NnUNetPruneError: ``-device cuda`` without a usable CUDA GPU, naming ``-device cpu``.
    """
    if torch.device(device).type != "cuda" or torch.cuda.is_available():
        return
    runtime = _runtime(Path(model_dir))
    build = f"PyTorch {torch.__version__}" + (" (a CPU-only build)" if torch.version.cuda is None else
                                              ", which finds no NVIDIA GPU or driver here")
    if runtime == "openvino":
        raise NnUNetPruneError(f"{model_dir} runs through OpenVINO, which runs on the CPU: use -device cpu "
                               f"(-device cuda needs a GPU, and {build}). Nothing was predicted.")
    if runtime == "onnxruntime":
        raise NnUNetPruneError(f"{model_dir} runs through ONNX Runtime, whose CUDA provider needs a GPU this machine "
                               f"does not have ({build}): use -device cpu (ONNX Runtime's CPU provider). Nothing was "
                               f"predicted.")
    raise NnUNetPruneError(f"-device cuda asks for a GPU, but {build}: use -device cpu. Nothing was predicted.")


def check_prediction(model_dir: str | Path, folds: Sequence | None, checkpoint_name: str,
                     device: torch.device) -> None:
    """:func:`check_checkpoints` then :func:`check_device`: what
    ``nnUNetPredictor.initialize_from_trained_model_folder`` is asked, checked before it reads anything (a folder
    without ``plans.json`` is left to nnU-Net's message).

    Raises:
        NnUNetPruneError: see the two checks.
    """
    if not (Path(model_dir) / "plans.json").is_file():
        return
    check_checkpoints(model_dir, folds, checkpoint_name)
    check_device(model_dir, device)
