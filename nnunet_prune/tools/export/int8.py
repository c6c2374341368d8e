"""INT8 export behind stock prediction, with a Dice bound (``nnunet-prune export MODEL -o OUT --runtime openvino
--int8``).

The steps, all before anything is put at ``OUT``:

1. **Check** (before any work): NNCF installed, the runtime (``openvino``), the output, the
   dataset the model was trained on (preprocessed data, ``splits_final.json``, ``gt_segmentations``, the validation
   cases' raw images: :mod:`nnunet_prune.nnunet.calibration`).
2. **Calibrate**: per fold, sliding-window patches of its training cases.
3. **Reference**: stock ``nnUNetv2_predict_from_modelfolder`` with the float source on each fold's validation cases
   (nnU-Net's default settings: test-time mirroring, step 0.5), scored by stock ``nnUNetv2_evaluate_folder``
   against ``gt_segmentations`` (:func:`case_mean_dice`).
4. **Quantize and check**, scope by scope (:data:`nnunet_prune.tools.export.quantize.SCOPES`): everything in INT8,
   then the first convolution and the segmentation head in float. The INT8 folder is exported to a temporary
   folder (:func:`nnunet_prune.tools.export.folder.export_model_folder`), predicted and scored like the reference;
   the first scope whose Dice drop (float Dice - INT8 Dice) is <= ``max_dice_drop`` in **every** fold is kept.
5. **Put in place**, each fold's ``validation`` folder holding the INT8 predictions and nnU-Net's ``summary.json``
   of them (so ``nnUNetv2_find_best_configuration`` and ``nnunet-prune report`` see the INT8 model's Dice), with
   the check recorded in ``export_summary.json`` (``int8``: per fold and scope the float and
   INT8 Dice, the drop, the bound, the validation cases) and how each fold was quantized in its checkpoint's
   ``nnunet_prune_export`` record; or, when no scope holds the bound, a refusal naming the smallest drop reached,
   with everything written removed (the temporary folder is the command's own; ``OUT`` is not touched).

Stock ``nnUNetv2_predict_from_modelfolder`` runs the folder unchanged (the plans name
:class:`nnunet_prune.networks.runtime.RuntimeNetwork` with ``precision: int8``); folds of different widths still
ensemble. Source of the bound: NNCF's ``quantize_with_accuracy_control(max_drop=...)`` bounds a metric the same way;
here the metric is nnU-Net's own Dice and the fallback is a fixed, named scope.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from nnunet_prune import NnUNetPruneError
from nnunet_prune.core.outputs import make_temp_dir
from nnunet_prune.core.runtime_specs import require_nncf
from nnunet_prune.nnunet.calibration import (
    DEFAULT_PATCHES,
    DatasetFolders,
    FoldCases,
    calibration_patches,
    dataset_folders,
    fold_cases,
    link_images,
)
from nnunet_prune.nnunet.modelfolder import ModelFolder
from nnunet_prune.nnunet.prechecks import check_export_output
from nnunet_prune.tools.export.folder import (
    SUMMARY_FILE,
    ExportOptions,
    ExportResult,
    export_model_folder,
    put_in_place,
)
from nnunet_prune.tools.export.quantize import SCOPES
from nnunet_prune.tools.export.writers import Int8Setup

#: the Dice drop an INT8 folder may show against the float one by default (``--max-dice-drop``)
DEFAULT_MAX_DICE_DROP = 0.01
#: the runtimes that run an INT8 (QDQ) ONNX model
INT8_RUNTIMES = ("openvino",)


@dataclass
class Int8Options:
    """``--int8``'s options: the bound on the Dice drop (float Dice - INT8 Dice, mean foreground Dice of nnU-Net's
    evaluation on each fold's validation cases), calibration patches per fold, the device of the check's
    predictions (the runtimes run on the CPU) and the tries (:data:`SCOPES`, in order)."""

    max_dice_drop: float = DEFAULT_MAX_DICE_DROP
    calibration_patches: int = DEFAULT_PATCHES
    device: str = "cpu"
    scopes: tuple = SCOPES


@dataclass
class Int8Check:
    """One fold's Dice check of one scope: float and INT8 mean foreground Dice on its validation cases."""

    fold: int | str
    scope: str
    float_dice: float
    int8_dice: float
    cases: list[str] = field(default_factory=list)

    @property
    def drop(self) -> float:
        """float Dice - INT8 Dice (negative: INT8 scored higher)."""
        return self.float_dice - self.int8_dice


def check_int8_request(source, output, options: ExportOptions, int8: Int8Options) -> None:
    """What can be checked on the file system and the installation, before any work.

    Raises:
        NnUNetPruneError: NNCF missing or broken, a runtime that cannot run INT8, magnitude zeroing or float16 storage
            asked together with INT8, a bound outside [0, 1), fewer than 1 calibration patch, a bad output or an
            output whose parent folder does not exist.
    """
    require_nncf()
    try:
        import nncf  # noqa: F401 (a broken install stops here, not after hours of calibration and prediction)
    except Exception as e:
        raise NnUNetPruneError(f"NNCF is installed but does not import ({type(e).__name__}: {e}); reinstall it: "
                               f"pip install --force-reinstall \"nnunet-prune[int8]\"") from None
    if options.runtime not in INT8_RUNTIMES:
        raise NnUNetPruneError(f"--int8 runs through OpenVINO: add --runtime openvino (got --runtime "
                               f"{options.runtime}).")
    if not 0 <= int8.max_dice_drop < 1:
        raise NnUNetPruneError(f"--max-dice-drop must be in [0, 1) (a Dice difference); got {int8.max_dice_drop}.")
    if int8.calibration_patches < 1:
        raise NnUNetPruneError(f"--calibration-patches must be >= 1; got {int8.calibration_patches}.")
    if options.fp16:
        raise NnUNetPruneError("--int8 and --fp16 exclude each other (the runtime reads the INT8 model; the "
                               "PyTorch weights stay float32).")
    if options.magnitude_tau is not None:
        raise NnUNetPruneError("--int8 and --magnitude-tau exclude each other: the Dice bound would then cover pruning "
                               "and quantization together. Export the magnitude-pruned folder first, then --int8 it.")
    if len(options.checkpoints) != 1:
        raise NnUNetPruneError("--int8 exports one checkpoint (-chk NAME): each is calibrated and checked on its own;"
                               " run the export once per checkpoint.")
    check_export_output(source, output, options.overwrite)
    if not Path(output).expanduser().resolve().parent.is_dir():
        raise NnUNetPruneError(f"-o {output}: its parent folder does not exist; nothing was written. Create it first.")


def check_int8_source(model: ModelFolder) -> None:
    """The source must be a float PyTorch model folder of a configuration whose input is the image alone.

    Raises:
        NnUNetPruneError: a runtime folder (its runtime, maybe INT8 already, would be the reference), or a cascade's
            full-resolution stage (it also reads the previous stage's segmentation).
    """
    if model.runtime is not None:
        raise NnUNetPruneError(f"{model.path} is a {model.runtime[0]} runtime folder {model.runtime[1] or ''}: --int8 "
                               f"quantizes the float PyTorch model folder and checks it against it; export from that "
                               f"folder.")
    if model.configuration_manager.previous_stage_name:
        raise NnUNetPruneError(f"{model.configuration_name} is a cascade stage (it reads the segmentation of "
                               f"{model.configuration_manager.previous_stage_name} as input): --int8 supports "
                               f"configurations whose input is the image alone (2d, 3d_fullres, 3d_lowres).")


def case_mean_dice(summary: dict) -> float:
    """The mean foreground Dice of nnU-Net's evaluation ``summary`` (``summary.json``), mean over classes of the mean
    over cases, where a class absent from both reference and prediction of a case (nnU-Net's NaN) counts as 1.0 (an
    empty structure segmented as empty): nnU-Net's own ``foreground_mean`` turns NaN then, and a comparison with NaN
    would refuse every fold that lacks a class."""
    import math

    per_case = [c["metrics"] for c in summary["metric_per_case"]]
    labels = list(per_case[0]) if per_case else []
    if not labels:
        return math.nan
    means = [sum(1.0 if math.isnan(c[k]["Dice"]) else c[k]["Dice"] for c in per_case) / len(per_case)
             for k in labels]
    return sum(means) / len(means)


def predict_and_score(model: Path, cases: FoldCases, work: Path, name: str, runner, reference: Path,
                      device: str, checkpoint: str, probabilities: bool = False, options: Sequence[str] = (),
                      timings: dict | None = None) -> float:
    """Stock prediction of the fold's validation cases with ``model`` (``probabilities``: also the .npz files
    ``nnUNetv2_find_best_configuration`` ensembles with; ``options``: more of the stock command's options, e.g.
    ``-step_size 0.75 --disable_tta``) into ``work/<name>_fold_<F>``, and nnU-Net's evaluation of it against
    ``reference``: :func:`case_mean_dice`. ``runner``: a :class:`nnunet_prune.tools.runner.StepRunner`; ``timings``:
    a dict that gets the prediction command's wall seconds under ``'predict'``.

    Raises:
        NnUNetPruneError: a prediction or evaluation failed (its last output lines), or a case was not scored.
    """
    from nnunet_prune.tools.commands import console_script

    images = work / f"images_fold_{cases.fold}"
    if not images.exists():
        link_images(cases, images)
    out = work / f"{name}_fold_{cases.fold}"
    start = time.perf_counter()
    runner.run(name, f"predict_fold_{cases.fold}", [
        console_script("nnUNetv2_predict_from_modelfolder"), "-i", str(images), "-o", str(out), "-m", str(model),
        "-f", str(cases.fold), "-chk", checkpoint, "-device", device, "--disable_progress_bar",
        *(["--save_probabilities"] if probabilities else []), *options])
    if timings is not None:
        timings["predict"] = time.perf_counter() - start
    runner.run(name, f"evaluate_fold_{cases.fold}", [
        console_script("nnUNetv2_evaluate_folder"), str(reference), str(out), "-djfile", str(model / "dataset.json"),
        "-pfile", str(model / "plans.json"), "-np", "1", "--chill"])
    summary = json.loads((out / "summary.json").read_text())
    scored = {Path(c["prediction_file"]).name for c in summary["metric_per_case"]}
    if len(scored) != len(cases.validation):
        raise NnUNetPruneError(f"fold {cases.fold}: nnU-Net's evaluation scored {len(scored)} of the "
                               f"{len(cases.validation)} validation cases of {name}; a prediction is missing.")
    return case_mean_dice(summary)


def _validation_folder(predictions: Path, fold_dir: Path) -> None:
    """``fold_dir/validation``: the checked INT8 predictions of the fold's validation cases and nnU-Net's
    ``summary.json`` of them (what ``nnUNetv2_find_best_configuration`` and ``nnunet-prune report`` read; the
    source's validation results describe the float model and are not copied)."""
    target = fold_dir / "validation"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(predictions, target, ignore=lambda _, names: [
        n for n in names if n.endswith(".json") and n != "summary.json"])


def _refusal(checks: list[Int8Check], bound: float) -> str:
    if not checks:
        return "INT8 refused: no quantization scope was tried."
    worst = {}
    for c in checks:
        worst[c.scope] = max(worst.get(c.scope, float("-inf")), c.drop)
    best = min(worst, key=worst.get)
    tried = "; ".join(f"{s}: largest drop {d:.4f}" for s, d in worst.items())
    return (f"INT8 refused: no quantization scope keeps the Dice drop <= --max-dice-drop {bound} in every fold "
            f"({tried}); the smallest reached is {worst[best]:.4f} ({best}). Nothing was written. Allow a larger "
            f"drop, give more --calibration-patches, or deploy the float runtime (--runtime openvino without "
            f"--int8).")


@dataclass
class _Run:
    """One INT8 export under way: the source, its folds' cases and calibration patches, the work folder (the
    command's own, removed at the end), the runner of the stock commands and the float reference Dice per fold."""

    model: ModelFolder
    folders: DatasetFolders
    folds: list[FoldCases]
    options: ExportOptions
    int8: Int8Options
    work: Path
    runner: object = None
    patches: dict = field(default_factory=dict)
    reference: dict = field(default_factory=dict)

    def score(self, folder: Path, cases: FoldCases, name: str, probabilities: bool = False) -> float:
        return predict_and_score(folder, cases, self.work, name, self.runner, self.folders.reference,
                                  self.int8.device, self.model.checkpoint_name, probabilities)

    def try_scope(self, scope: str) -> tuple[ExportResult, list[Int8Check]]:
        """Export the INT8 folder with ``scope`` into the work folder and check every fold's Dice."""
        from nnunet_prune.networks.runtime import clear_executors

        candidate = self.work / f"int8_{scope}"
        try:
            result = export_model_folder(self.model.path, candidate,
                                         replace(self.options, int8=Int8Setup(self.patches, scope)))
        finally:
            clear_executors()  # (the export's check built the candidate's runtime models in this process)
        npz = {c.fold: any(self.model.fold_path(c.fold).glob("validation/*.npz")) for c in self.folds}
        return result, [Int8Check(c.fold, scope, self.reference[c.fold],
                                  self.score(candidate, c, f"int8_{scope}", npz[c.fold]), c.validation)
                        for c in self.folds]

    def accept(self, scope: str, result: ExportResult, checks: list[Int8Check], output: Path) -> ExportResult:
        """Put the candidate of ``scope`` in place at ``output``, its validation folders and the checks recorded."""
        candidate = self.work / f"int8_{scope}"
        result.output = str(output)
        result.int8 = {"accepted_scope": scope, "max_dice_drop": self.int8.max_dice_drop,
                       "calibration_patches": {str(f): len(p) for f, p in self.patches.items()},
                       "calibration_patches_asked": self.int8.calibration_patches, "device": self.int8.device,
                       "settings": "nnUNetv2_predict_from_modelfolder defaults (mirroring on, step 0.5)",
                       "dice": "mean over classes of the mean over cases; a class absent from both counts 1.0",
                       "checks": [{**asdict(c), "drop": c.drop} for c in checks]}
        (candidate / SUMMARY_FILE).unlink()
        for c in self.folds:  # the INT8 model's own validation results, as nnU-Net's validation writes them
            _validation_folder(self.work / f"int8_{scope}_fold_{c.fold}", candidate / f"fold_{c.fold}")
        put_in_place(candidate, output, result)
        return result


def export_int8(source, output, options: ExportOptions, int8: Int8Options | None = None,
                echo: Callable[[str], None] | None = print) -> ExportResult:
    """INT8 export with its Dice check (module docstring). ``options``: the export's options (runtime openvino; its
    ``precision`` is set to int8 here). Returns the accepted export's result, with ``int8`` holding the checks.

    Raises:
        NnUNetPruneError: any input :func:`check_int8_request`, :func:`check_int8_source` or
            :func:`~nnunet_prune.nnunet.calibration.fold_cases` refuses (before any work); no scope holds
            ``max_dice_drop`` (nothing written); a prediction or evaluation failed (its last output lines).
    """
    from nnunet_prune.tools.runner import StepRunner

    int8 = int8 or Int8Options()
    output = Path(output).expanduser().resolve()
    check_int8_request(source, output, options, int8)
    model = ModelFolder.open(source, options.folds, checkpoint_name=options.checkpoints[0])
    check_int8_source(model)
    folders = dataset_folders(model)
    folds = fold_cases(model, folders)
    model.release_checkpoints()
    options = replace(options, folds=model.folds,
                      runtime_options={**(options.runtime_options or {}), "precision": "int8"})
    say = echo or (lambda _: None)
    run = _Run(model, folders, folds, options, int8, make_temp_dir(output.parent, prefix=f".{output.name}.int8."))
    try:
        # no log files: a failed step's message carries its last output lines (the work folder goes at the end)
        run.runner = StepRunner({**os.environ, "nnUNet_compile": "f"}, run.work)
        for cases in folds:
            run.patches[cases.fold] = calibration_patches(model, folders, cases, int8.calibration_patches)
            say(f"fold {cases.fold}: {len(run.patches[cases.fold])} calibration patches from {len(cases.train)} "
                f"training cases; {len(cases.validation)} validation cases for the Dice check")
        run.reference = {c.fold: run.score(model.path, c, "float") for c in folds}
        checks: list[Int8Check] = []
        for scope in int8.scopes:
            result, mine = run.try_scope(scope)
            checks += mine
            say(f"scope {scope}: " + ", ".join(f"fold {c.fold} Dice {c.float_dice:.4f} -> {c.int8_dice:.4f}"
                                               for c in mine))
            if all(c.drop <= int8.max_dice_drop for c in mine):
                return run.accept(scope, result, checks, output)
            shutil.rmtree(run.work / f"int8_{scope}")
        raise NnUNetPruneError(_refusal(checks, int8.max_dice_drop))
    finally:
        shutil.rmtree(run.work, ignore_errors=True)
