"""The stock settings users trade against Dice: test-time mirroring and the sliding-window step size.

``nnunet-prune report MODEL ... --settings tta:0.5 notta:0.5 notta:0.75`` predicts each chosen fold's **validation**
cases (the fold's split, as nnU-Net's own validation does) once per setting with stock
``nnUNetv2_predict_from_modelfolder`` (``-step_size``, ``--disable_tta``), timed from start to end as a user waits for
it, and scores each prediction with stock ``nnUNetv2_evaluate_folder`` against the dataset's
``gt_segmentations`` (:func:`nnunet_prune.tools.export.int8.predict_and_score`, the INT8 export's Dice: mean over
classes of the mean over cases, a class absent from reference and prediction counting 1.0). A runtime or INT8
folder is predicted as it is, so its row is that runtime's time and Dice. With ``tta:0.5`` (nnU-Net's defaults) a
fold's Dice is the Dice of nnU-Net's own validation predictions of that fold.

Source: nnU-Net v2's ``nnUNetPredictor`` (``tile_step_size``, ``use_mirroring``) and its evaluation.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from nnunet_prune import NnUNetPruneError

#: what reads the dataset, named in the errors of :func:`nnunet_prune.nnunet.calibration.dataset_folders`
PURPOSE = "--settings (each fold's validation cases, scored by nnU-Net's evaluation)"


def parse_settings(texts: Sequence[str]) -> list[tuple[bool, float]]:
    """``['tta:0.5', 'notta:0.75']`` -> ``[(True, 0.5), (False, 0.75)]`` (mirroring, step size), in order, without
    repeats.

    Raises:
        NnUNetPruneError: a setting that is not ``tta:STEP`` / ``notta:STEP`` with a step size in (0, 1].
    """
    out = []
    for text in texts:
        mode, _, step = text.partition(":")
        try:
            value = float(step)
        except ValueError:
            value = None
        if mode not in ("tta", "notta") or value is None or not 0 < value <= 1:
            raise NnUNetPruneError(f"--settings {text!r}: give tta:STEP (test-time mirroring on) or notta:STEP "
                                   f"(off) with a sliding-window step size in (0, 1], e.g. tta:0.5 (nnU-Net's "
                                   f"default) notta:0.75.")
        if (mode == "tta", value) not in out:
            out.append((mode == "tta", value))
    return out


@dataclass
class SettingRun:
    """One setting of one model folder: the chosen folds' validation cases predicted and scored (``seconds``: the
    stock prediction commands' wall time summed over the folds, without the scoring; ``dice``: mean over the
    folds, ``per_fold`` by fold)."""

    model: str
    runtime: str
    folds: list
    tta: bool
    step_size: float
    cases: int
    seconds: float
    dice: float
    per_fold: dict

    @property
    def seconds_per_case(self) -> float:
        """Wall seconds per validation case."""
        return self.seconds / max(self.cases, 1)


def measure_settings(model, settings: Sequence[tuple[bool, float]], *, device: str = "cpu",
                     label: str | None = None, progress: Callable[[str], None] | None = None) -> list[SettingRun]:
    """Predict and score ``model``'s (a :class:`~nnunet_prune.nnunet.modelfolder.ModelFolder`) validation cases once
    per setting (module docstring); one :class:`SettingRun` per setting, in order.

    Raises:
        NnUNetPruneError: the dataset the model was trained on is not found through nnU-Net's variables, or a
            prediction or evaluation failed (its last output lines).
    """
    from nnunet_prune.nnunet.calibration import dataset_folders, fold_cases
    from nnunet_prune.tools.export.int8 import predict_and_score
    from nnunet_prune.tools.runner import StepRunner

    folders = dataset_folders(model, PURPOSE)
    per_fold = fold_cases(model, folders)
    label = label or model.path.name
    runtime = "pytorch" if model.runtime is None else f"{model.runtime[0]}{' int8' if model.int8 else ''}"
    runs = []
    with tempfile.TemporaryDirectory(prefix="nnunet_prune_settings_") as work:
        runner = StepRunner({**os.environ, "nnUNet_compile": "f"}, work)
        for tta, step in settings:
            name = f"{'tta' if tta else 'notta'}_{step}"
            if progress:
                progress(f"{label}: validation cases with mirroring {'on' if tta else 'off'}, step {step}")
            seconds, dice = 0.0, {}
            for cases in per_fold:
                timings: dict = {}
                dice[cases.fold] = predict_and_score(
                    model.path, cases, Path(work), name, runner, folders.reference, device, model.checkpoint_name,
                    options=["-step_size", str(step), *([] if tta else ["--disable_tta"])], timings=timings)
                seconds += timings["predict"]
            runs.append(SettingRun(label, runtime, [c.fold for c in per_fold], tta, step,
                                   sum(len(c.validation) for c in per_fold), seconds,
                                   sum(dice.values()) / len(dice), dice))
    return runs


def format_settings(runs: Sequence[SettingRun]) -> list[str]:
    """Markdown lines: one row per model folder and setting; 'x faster' and 'Dice change' against the first row."""
    if not runs:
        return []
    ref = runs[0]
    lines = ["| Model | Runtime | Mirroring | Step | Cases | s (stock command) | s / case | x faster "
             "| Dice | Dice change |", "|:---|:---|:---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        lines.append(f"| {r.model} | {r.runtime} | {'on' if r.tta else 'off'} | {r.step_size} | {r.cases} | "
                     f"{r.seconds:.1f} | {r.seconds_per_case:.2f} | {ref.seconds / r.seconds:.2f}x | {r.dice:.4f} | "
                     f"{r.dice - ref.dice:+.4f} |")
    lines += ["", f"Each row: stock nnUNetv2_predict_from_modelfolder of the validation cases of folds "
                  f"{', '.join(map(str, ref.folds))} (each fold its own), timed from start to end (process "
                  f"start-up included), seconds summed over the folds; Dice: nnU-Net's evaluation, the mean over "
                  f"classes of the mean over cases (a class absent from reference and prediction counts 1.0), mean "
                  f"over the folds. Reference of 'x faster' and 'Dice change': the first row."]
    return lines
