"""The sweep engine: one pruned ensemble after another through nnU-Net's own inference, compared with the unpruned one.

A sweep prunes every fold of a trained model folder at each point of one axis and measures what that costs in
Dice, without fine-tuning. What is the same for every axis lives here, in :class:`SweepEngine`:

1. the inputs: the images (checked against the model's channels) and optional labels, preprocessed once with the
   model's plans (nnU-Net's preprocessor) and kept in memory;
2. the reference: the unpruned ensemble of the chosen folds predicts them (nnU-Net's sliding window, Gaussian
   weighting and mirroring TTA, as ``nnUNetv2_predict``), cached on disk (``reference/``);
3. the state: every finished point is written to ``sweep_state.json`` at once, keyed by what the numbers depend on;
   an interrupted sweep run again with the same settings reuses finished points and the reference;
4. the proxy Dice of a pruned ensemble against the reference (:class:`ProxySummary`) and the real Dice against
   labels.

What differs is an :class:`Axis` the engine is composed with: the magnitude threshold tau
(:class:`nnunet_prune.tools.sweep.magnitude.TauAxis`) or the fraction of filters removed by a structured criterion
(:class:`nnunet_prune.tools.sweep.structured.FractionAxis`). An axis supplies its settings, its grid, how one point
is pruned and evaluated, the report and the files written from it.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from nnunet_prune import NnUNetPruneError
from nnunet_prune.core.outputs import record_files, remove_owned
from nnunet_prune.nnunet.modelfolder import ModelFolder
from nnunet_prune.tools.dice import dice, dice_per_case, foreground_mean

STATE_FILE = "sweep_state.json"
TOOL = "sweep"
#: the order in which settings appear in a report and in a sweep's state key: that of earlier versions, so that their
#: files stay as they were and their sweeps resume
SETTINGS_ORDER = ("taus", "target_sparsities", "threshold", "refine_steps", "prune_bias", "per_layer_normalised",
                  "use_mirroring", "tile_step_size", "device", "save_predictions", "proxy_summary", "criterion",
                  "fractions", "ratio_of", "distribution", "max_ratio", "max_ratio_coupled")


def in_settings_order(settings: dict) -> dict:
    """``settings`` with its keys in :data:`SETTINGS_ORDER` (keys not listed there last, as given)."""
    return {**{k: settings[k] for k in SETTINGS_ORDER if k in settings},
            **{k: v for k, v in settings.items() if k not in SETTINGS_ORDER}}


@dataclass
class SweepSettings:
    """Options every sweep has (what ``nnunet-prune sweep`` passes on besides its axis's own).

    ``threshold`` is the proxy Dice that defines the critical point; ``tile_step_size`` the sliding-window step as a
    fraction of the patch; ``device`` "cpu" or "cuda"; ``save_predictions`` writes each point's segmentations
    (a sweep whose axis saves them); ``proxy_summary`` what the critical point is based on: "pooled" (per-class Dice
    over all cases, mean over the classes large enough to judge) or "mean" (the paper's foreground mean of per-case
    Dice).
    """

    threshold: float = 0.95
    use_mirroring: bool = True
    tile_step_size: float = 0.5
    device: str = "cpu"
    save_predictions: bool = False
    proxy_summary: str = "pooled"

    def fingerprint(self) -> dict:
        """The settings that change the numbers (the grid, the threshold and the summary do not)."""
        return {"use_mirroring": self.use_mirroring, "tile_step_size": self.tile_step_size}


class Axis:
    """What one kind of sweep adds to the :class:`SweepEngine`: its settings, grid, evaluation and outputs.

    Subclasses set :attr:`noun` and implement :meth:`grid`, :meth:`evaluate`, :meth:`progress_line`, :meth:`report`
    and :meth:`write_outputs`; the other hooks do nothing by default. Points are identified by their value
    (results keyed ``f"{value:.9g}"`` in the state).
    """

    #: what the points are called in messages, plural ("tau values", "fractions")
    noun = "points"
    #: the unit of the progress bar (shown on a terminal)
    unit = "point"
    #: whether the engine's network must be the width-adaptive class (an axis that removes filters physically)
    adaptive = False

    def fingerprint(self) -> dict:
        """The axis's settings that change the numbers (a sweep resumes only with the same)."""
        return {}

    def recorded(self) -> dict:
        """The axis's settings as its report records them."""
        return {}

    def check(self, engine: SweepEngine) -> None:
        """Checks that need the prepared network, before anything is written (default: none).

        Raises:
            NnUNetPruneError: a grid the axis cannot evaluate.
        """

    def start(self, engine: SweepEngine) -> None:
        """After the output folder exists, before the reference predictions (default: nothing)."""

    def after_reference(self, engine: SweepEngine, reference: dict, real: dict | None) -> None:
        """With the reference predictions and the labels (None without), before the first point (default:
        nothing)."""

    def grid(self, engine: SweepEngine) -> list[float]:
        """The values evaluated first, sorted."""
        raise NotImplementedError

    def run(self, engine: SweepEngine, reference: dict, real: dict | None, progress: bool) -> None:
        """Evaluate the points (default: :meth:`grid`; an axis may add points after it)."""
        grid = self.grid(engine)
        engine.note_reused(grid, progress)
        engine.evaluate_all(grid, reference, real, progress, self.noun)

    def evaluate(self, engine: SweepEngine, value: float, reference: dict, real: dict | None):
        """Prune every fold at ``value``, predict the images with the pruned ensemble and compare with
        ``reference`` (and ``real``); returns the point's result (a dataclass)."""
        raise NotImplementedError

    def progress_line(self, result) -> str:
        """The line printed when a point is done."""
        raise NotImplementedError

    def report(self, engine: SweepEngine) -> dict:
        """The report of every finished point (what sweep.json holds)."""
        raise NotImplementedError

    def write_outputs(self, report: dict, output: Path) -> dict[str, Path]:
        """Write the report's files into ``output``; returns them by kind."""
        raise NotImplementedError


# ------------------------------------------------------------------------------------------------ inputs
def list_cases(images: Path, dataset_json: dict) -> dict[str, list[str]]:
    """Case identifier -> channel files (CASE_0000<ending>, CASE_0001<ending>, ...), checked against the dataset's
    channels before any work.

    Raises:
        NnUNetPruneError: the folder is missing, holds no images, holds files without nnU-Net's channel suffix
            (e.g. a labels folder), or a case lacks a channel; the message says which files were expected.
    """
    images = Path(images)
    if not images.is_dir():
        raise NnUNetPruneError(f"-i {images}: no such folder.")
    ending = dataset_json["file_ending"]
    channels = list(dataset_json.get("channel_names", dataset_json.get("modality", {})).values())
    n_channels = len(channels)
    expected = (f"Each case needs {n_channels} file(s) named like nnU-Net's imagesTs: "
                + ", ".join(f"CASE_{i:04d}{ending}" for i in range(n_channels)) + f" (channels {channels}).")
    files = sorted(f for f in os.listdir(images) if f.endswith(ending) and not f.startswith("."))
    if not files:
        raise NnUNetPruneError(f"-i {images} holds no images ending in {ending} (the model's file ending). {expected}")
    pattern = re.compile(rf"^(.+)_(\d{{4}}){re.escape(ending)}$")
    unsuffixed = [f for f in files if not pattern.match(f)]
    if unsuffixed:
        raise NnUNetPruneError(
            f"-i {images}: {len(unsuffixed)} of {len(files)} file(s) lack the channel suffix _XXXX (e.g. "
            f"{', '.join(unsuffixed[:3])}). {expected} A folder of segmentations (labelsTs) goes to --labels.")
    found: dict[str, dict[int, str]] = {}
    for f in files:
        case, channel = pattern.match(f).groups()
        found.setdefault(case, {})[int(channel)] = str(images / f)
    wrong = {c: sorted(ch) for c, ch in found.items() if sorted(ch) != list(range(n_channels))}
    if wrong:
        detail = ", ".join(f"{c} has channel(s) {ch}" for c, ch in list(wrong.items())[:5])
        raise NnUNetPruneError(f"The images in {images} do not match the model's {n_channels} input channel(s): "
                               f"{detail}. {expected}")
    return {c: [ch[i] for i in range(n_channels)] for c, ch in sorted(found.items())}


def check_labels(labels: Path, cases: Sequence[str], ending: str) -> dict[str, Path]:
    """Case -> its label file ``<labels>/<CASE><ending>``, checked before any work.

    Raises:
        NnUNetPruneError: the folder is missing or lacks a case's label file.
    """
    if not labels.is_dir():
        raise NnUNetPruneError(f"--labels {labels}: no such folder.")
    found = {c: labels / f"{c}{ending}" for c in cases}
    missing = [c for c, p in found.items() if not p.is_file()]
    if missing:
        hint = " (it holds files named CASE_0000: is it the images folder?)" \
            if any(labels.glob(f"*_0000{ending}")) else ""
        raise NnUNetPruneError(f"--labels {labels} lacks {len(missing)} of {len(cases)} cases (e.g. "
                               f"{missing[0]}{ending}){hint}. Give a label file CASE{ending} for every image, or "
                               f"omit --labels.")
    return found


# ------------------------------------------------------------------------------------------------ metrics
#: a class whose reference volume (voxels over all cases) is below this many voxels, or below this fraction of
#: the mean reference volume of the foreground classes, is too small to judge: a few stray voxels flip its Dice
SMALL_CLASS_VOXELS = 50
SMALL_CLASS_FRACTION = 0.02


@dataclass
class ProxySummary:
    """Proxy Dice of one pruned ensemble against the unpruned one, per class and summarised.

    ``pooled``: per class, Dice of TP/FP/FN summed over all cases; the summary (``pooled_mean``) is the mean over
    the classes that are large enough to judge. ``paper_mean``: the paper's (and nnU-Net's) foreground mean of
    per-case Dice, which a nearly absent class can dominate (its per-case Dice flips between 0 and 1).
    """

    pooled: dict[str, float]
    reference_voxels: dict[str, int]
    small_classes: list[str]
    pooled_mean: float
    paper_mean: float
    paper_per_class: dict[str, float]
    per_case: dict[str, dict[str, float]]  # case -> class -> Dice (NaN where a class is absent from both)

    @classmethod
    def of(cls, counts: dict[str, dict[str, tuple[int, int, int]]]) -> ProxySummary:
        """Summarise ``counts``: case -> class -> (TP, FP, FN) voxel counts, as
        :func:`nnunet_prune.tools.dice.class_counts` returns them."""
        labels = list(next(iter(counts.values()))) if counts else []
        totals = {lab: np.sum([counts[c][lab] for c in counts], axis=0).astype(int).tolist() for lab in labels}
        volume = {lab: int(t[0] + t[2]) for lab, t in totals.items()}
        pooled = {lab: dice(*t) for lab, t in totals.items()}
        mean_volume = float(np.mean(list(volume.values()))) if volume else 0.0
        small = [lab for lab in labels if volume[lab] < max(SMALL_CLASS_VOXELS, SMALL_CLASS_FRACTION * mean_volume)]
        judged = [pooled[lab] for lab in labels if lab not in small and not math.isnan(pooled[lab])]
        if not judged:  # nothing large enough: every class, rather than no number
            judged = [v for v in pooled.values() if not math.isnan(v)]
        per_case = {c: {lab: dice(*v) for lab, v in per.items()} for c, per in counts.items()}
        paper, paper_per_class = foreground_mean(per_case)
        return cls(pooled, volume, small, float(np.mean(judged)) if judged else math.nan, paper, paper_per_class,
                   per_case)

    def value(self, summary: str) -> float:
        """The summary the critical point is based on: 'pooled' (default) or 'mean' (the paper's)."""
        return self.paper_mean if summary == "mean" else self.pooled_mean


# ------------------------------------------------------------------------------------------------ the engine
class SweepEngine:
    """One sweep of one model folder along one :class:`Axis` (module docstring).

    ``images``: a folder named like nnU-Net's imagesTs; ``labels``: their segmentations for the real Dice (None:
    none); ``restart`` discards an earlier sweep in ``output`` (only its own files).

    Raises:
        NnUNetPruneError: an output inside the model folder, images or labels that do not fit the model, ``cuda``
            without a GPU, or an output holding something other than a sweep of the same model, folds, images and
            settings.
    """

    def __init__(self, model: ModelFolder, images: str | os.PathLike, output: str | os.PathLike,
                 labels: str | os.PathLike | None, settings: SweepSettings | None, axis: Axis,
                 restart: bool = False):
        self.model = model
        self.settings = settings or SweepSettings()
        self.axis = axis
        self.output = Path(output).expanduser().resolve()
        if self.output == model.path or model.path in self.output.parents:
            raise NnUNetPruneError(f"-o {self.output} lies inside the model folder; the trained model stays "
                                   f"untouched. Choose an output outside {model.path}.")
        self.images = Path(images).expanduser().resolve()
        self.cases = list_cases(self.images, model.dataset_json)
        ending = model.dataset_json["file_ending"]
        self.labels = check_labels(Path(labels).expanduser().resolve(), list(self.cases), ending) \
            if labels is not None else None
        if self.settings.device == "cuda" and not torch.cuda.is_available():
            raise NnUNetPruneError("--device cuda: no CUDA device is available. Use --device cpu.")
        self._check_existing_state(restart)

    # -- bookkeeping ------------------------------------------------------------------------------------
    def key(self) -> dict:
        """What a resumed sweep must match: model folder, each fold's checkpoint (path, size in bytes, modification time
        in s), the image files' sizes (bytes) and the settings that change the numbers (common and the axis's)."""
        folds = {str(f): [str(self.model.fold_path(f) / self.model.checkpoint_name), self.model.checkpoint_bytes(f),
                          int((self.model.fold_path(f) / self.model.checkpoint_name).stat().st_mtime)]
                 for f in self.model.folds}
        images = {c: [os.path.getsize(p) for p in files] for c, files in self.cases.items()}
        fingerprint = in_settings_order({**self.settings.fingerprint(), **self.axis.fingerprint()})
        return {"model": str(self.model.path), "folds": folds, "images": images, **fingerprint}

    def _check_existing_state(self, restart: bool = False) -> None:
        """Start a new state, or take the output's (the same key) to resume. What ``restart`` may delete is decided
        by the output's manifest alone (:func:`nnunet_prune.core.outputs.remove_owned`)."""
        state_file = self.output / STATE_FILE
        self.state = {"key": self.key(), "reference_seconds": None, "results": {}}
        if restart and state_file.is_file():
            remove_owned(self.output, TOOL)  # only the earlier sweep's own files; anything else stops here
        if not state_file.is_file():
            if self.output.exists() and any(self.output.iterdir()):
                raise NnUNetPruneError(f"-o {self.output} exists, is not empty and holds no sweep. Choose an empty "
                                       f"or new folder.")
            return
        old = json.loads(state_file.read_text())
        if old.get("key") != self.state["key"]:
            diff = [k for k in self.state["key"] if old.get("key", {}).get(k) != self.state["key"][k]]
            raise NnUNetPruneError(f"{self.output} holds a sweep of a different model, folds, images or settings "
                                   f"(differs in: {', '.join(diff)}). Use another -o, or --restart to discard it.")
        self.state = old

    def save_state(self) -> None:
        """Write ``sweep_state.json`` (atomically) and record it as the sweep's own."""
        self.output.mkdir(parents=True, exist_ok=True)
        tmp = self.output / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(self.state, indent=1))
        tmp.replace(self.output / STATE_FILE)
        record_files(self.output, TOOL, [STATE_FILE])

    def recorded_settings(self) -> dict:
        """The settings this sweep records in its report: the common ones and its axis's, nothing else."""
        return in_settings_order({**asdict(self.settings), **self.axis.recorded()})

    def report_header(self) -> dict:
        """What every report starts with: model folder, trainer, configuration, folds and cases."""
        return {"model": str(self.model.path), "trainer": self.model.trainer_name,
                "configuration": self.model.configuration_name, "folds": [str(f) for f in self.model.folds],
                "cases": list(self.cases)}

    # -- inference --------------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Build the network the folds' parameters run through (the model folder's own, width-adaptive if the axis
        asks), nnU-Net's predictor with the sweep's settings, and preprocess every image once."""
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        m = self.model
        device = torch.device(self.settings.device)
        self.network = m.build_network(adaptive=self.axis.adaptive).to(device).eval()
        self.dense_states = [m.load_checkpoint(f)["network_weights"] for f in m.folds]
        self.patch_size = tuple(m.configuration_manager.patch_size)
        self.predictor = nnUNetPredictor(tile_step_size=self.settings.tile_step_size, use_gaussian=True,
                                         use_mirroring=self.settings.use_mirroring,
                                         perform_everything_on_device=device.type == "cuda", device=device,
                                         verbose=False, verbose_preprocessing=False, allow_tqdm=False)
        self.predictor.manual_initialization(self.network, m.plans_manager, m.configuration_manager, None,
                                             m.dataset_json, m.trainer_name,
                                             m.first_checkpoint.get("inference_allowed_mirroring_axes"))
        preprocessor = m.configuration_manager.preprocessor_class(verbose=False)
        self.preprocessed = {}
        for case, files in self.cases.items():
            data, _, properties = preprocessor.run_case(files, None, m.plans_manager, m.configuration_manager,
                                                        m.dataset_json)
            self.preprocessed[case] = (torch.from_numpy(data), properties)
        self.label_list = m.label_manager.foreground_regions if m.label_manager.has_regions \
            else m.label_manager.foreground_labels
        self.ignore_label = m.label_manager.ignore_label

    def network_parameters(self) -> dict:
        """A copy of the network's current state dict (one fold of an ensemble to predict with)."""
        return {k: v.detach().clone() for k, v in self.network.state_dict().items()}

    def predict(self, parameters: list[dict], progress: bool = False) -> dict[str, np.ndarray]:
        """Case -> segmentation (as nnU-Net exports it) of the ensemble of ``parameters`` (one state dict per fold).
        ``progress``: a line per case with the time left."""
        from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape

        m = self.model
        self.predictor.list_of_parameters = parameters
        out = {}
        start = time.perf_counter()
        with torch.no_grad():
            for i, (case, (data, properties)) in enumerate(self.preprocessed.items(), 1):
                logits = self.predictor.predict_logits_from_preprocessed_data(data).cpu()
                out[case] = convert_predicted_logits_to_segmentation_with_correct_shape(
                    logits, m.plans_manager, m.configuration_manager, m.label_manager, properties)
                if progress:
                    elapsed = time.perf_counter() - start
                    left = elapsed / i * (len(self.preprocessed) - i)
                    print(f"  case {i}/{len(self.preprocessed)} {case}: {elapsed:.0f} s, about {left:.0f} s left",
                          flush=True)
        return out

    def reference(self, progress: bool = False) -> dict[str, np.ndarray]:
        """The unpruned ensemble's segmentations: from ``reference/`` when a resumed sweep has them, else predicted
        (its time in the state's ``reference_seconds``) and cached there."""
        folder = self.output / "reference"
        files = {c: folder / f"{c}.npz" for c in self.cases}
        if self.state.get("reference_seconds") is not None and all(p.is_file() for p in files.values()):
            return {c: np.load(p)["seg"] for c, p in files.items()}
        start = time.perf_counter()
        if progress:
            print(f"Reference: the unpruned ensemble ({len(self.model.folds)} fold(s)) predicts {len(self.cases)} "
                  f"case(s).", flush=True)
        ref = self.predict(self.dense_states, progress=progress)
        self.state["reference_seconds"] = round(time.perf_counter() - start, 3)
        folder.mkdir(parents=True, exist_ok=True)
        for c, seg in ref.items():
            np.savez_compressed(files[c], seg=seg)
        record_files(self.output, TOOL, files.values())
        self.save_state()
        return ref

    def real_labels(self) -> dict[str, np.ndarray] | None:
        """Case -> label map read with the plans' reader (None without ``labels``)."""
        if self.labels is None:
            return None
        rw = self.model.plans_manager.image_reader_writer_class()
        return {c: rw.read_seg(str(p))[0][0] for c, p in self.labels.items()}

    def save_predictions(self, name: str, seg: dict[str, np.ndarray]) -> None:
        """Write ``seg`` (case -> segmentation) to ``predictions/<name>/`` as nnU-Net writes segmentations."""
        rw = self.model.plans_manager.image_reader_writer_class()
        folder = self.output / "predictions" / name
        folder.mkdir(parents=True, exist_ok=True)
        written = []
        for case, s in seg.items():
            _, props = rw.read_images(self.cases[case])
            written.append(folder / f"{case}{self.model.dataset_json['file_ending']}")
            rw.write_seg(s, str(written[-1]), props)
        record_files(self.output, TOOL, written)

    def real_dice(self, real: dict | None, pred: dict) -> tuple[float | None, dict | None]:
        """(foreground mean, per class) real Dice of ``pred`` against the labels ``real``; (None, None) without."""
        if real is None:
            return None, None
        return foreground_mean(dice_per_case(real, pred, self.label_list, self.ignore_label))

    # -- running ----------------------------------------------------------------------------------------
    def note_reused(self, values: Sequence[float], progress: bool) -> None:
        """Say how many of ``values`` a resumed sweep already has."""
        done = [v for v in values if f"{v:.9g}" in self.state["results"]]
        if done and progress:
            print(f"Reusing {len(done)} finished {self.axis.noun} from {self.output / STATE_FILE}.")

    def evaluate_all(self, values: Sequence[float], reference: dict, real: dict | None, progress: bool,
                     desc: str) -> None:
        """Evaluate every value not finished yet, saving the state after each (a bar on a terminal; a line per
        value with ``progress``)."""
        from tqdm import tqdm

        results = self.state["results"]
        todo = [v for v in values if f"{v:.9g}" not in results]
        # a bar only on a terminal: piped into a log (the demo, CI) every redraw would become a line
        bar = tqdm(todo, desc=desc, unit=self.axis.unit, disable=not progress or not sys.stderr.isatty())
        for value in bar:
            result = self.axis.evaluate(self, value, reference, real)
            results[f"{value:.9g}"] = asdict(result)
            self.save_state()
            if progress:
                bar.write(self.axis.progress_line(result))
                sys.stdout.flush()

    def apply_summary(self) -> None:
        """proxy_dice of every finished point in the chosen summary (a resumed sweep may choose another one)."""
        key = "proxy_dice_paper_mean" if self.settings.proxy_summary == "mean" else "proxy_dice_pooled"
        for r in self.state["results"].values():
            if r.get(key) is not None:
                r["proxy_dice"] = r[key]

    def run(self, progress: bool = True) -> dict:
        """Run (or finish) the sweep: prepare, the axis's checks (before anything is written), the reference, every
        point; returns the report (also written to the output folder with the axis's files)."""
        start = time.perf_counter()
        self.prepare()
        self.axis.check(self)
        self.output.mkdir(parents=True, exist_ok=True)
        self.apply_summary()
        self.axis.start(self)
        reference = self.reference(progress)
        real = self.real_labels()
        self.axis.after_reference(self, reference, real)
        self.axis.run(self, reference, real, progress)
        self.state["last_run_seconds"] = round(time.perf_counter() - start, 3)
        self.save_state()
        report = self.axis.report(self)
        self.axis.write_outputs(report, self.output)
        return report
