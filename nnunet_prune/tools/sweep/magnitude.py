"""The proxy-Dice sweep of post-training magnitude pruning, on top of nnU-Net's own inference.

1. The images are preprocessed once with the model's plans (nnU-Net's preprocessor) and kept in memory.
2. The unpruned ensemble of the chosen folds predicts them (nnU-Net's sliding window, Gaussian weighting and
   mirroring TTA, as ``nnUNetv2_predict``); these reference segmentations are cached on disk.
3. For each tau every fold is pruned (:func:`nnunet_prune.tools.export.transforms.magnitude_prune`), the pruned
   ensemble predicts the same images and the proxy Dice against the reference is computed per case and class and
   averaged like nnU-Net's ``foreground_mean`` (plus the real Dice when labels are given).
4. After the grid, tau is refined around the critical point (:mod:`nnunet_prune.methods.magnitude`).

Every finished tau is written to ``sweep_state.json`` at once: an interrupted sweep run again with the same
settings reuses finished tau values and the cached reference predictions. The cost approaches
(number of tau + 1) x one ensemble inference.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from nnunet_prune import NnUNetPruneError
from nnunet_prune.core.outputs import record_files, remove_owned
from nnunet_prune.methods.magnitude import (
    NORMALISED_GRID,
    PAPER_GRID,
    SweepPoint,
    critical_point,
    extension_tau,
    first_failure,
    refinement_taus,
    taus_for_sparsities,
)
from nnunet_prune.nnunet.modelfolder import ModelFolder, label_names
from nnunet_prune.tools.dice import class_counts, dice, dice_per_case, foreground_mean
from nnunet_prune.tools.export.transforms import magnitude_prune

STATE_FILE = "sweep_state.json"
TOOL = "sweep"
#: at most this many tau values beyond the default grid (x1.5 each: 0.02 -> ~2.6)
MAX_EXTENSION = 12


@dataclass
class SweepSettings:
    """Options of one magnitude-pruning sweep (what ``nnunet-prune sweep`` passes on).

    ``taus`` or ``target_sparsities`` (fractions in [0, 1); tau = quantile of |w|) replace the default grid;
    ``threshold`` is the proxy Dice that defines the critical point; ``tile_step_size`` the sliding-window step as a
    fraction of the patch; ``device`` "cpu" or "cuda". A sweep resumes only with the same :meth:`fingerprint`.
    """

    taus: list[float] | None = None  # None: the paper's grid (or the normalised grid)
    target_sparsities: list[float] | None = None  # quantile grid instead of taus
    threshold: float = 0.95  # proxy Dice of the critical point
    refine_steps: int = 4  # extra tau values between the last good and first bad tau (0: off)
    prune_bias: bool = False
    per_layer_normalised: bool = False
    use_mirroring: bool = True
    tile_step_size: float = 0.5
    device: str = "cpu"
    save_predictions: bool = False
    #: what the critical point is based on: "pooled" (per-class Dice over all cases, mean over the classes large
    #: enough to judge) or "mean" (the paper's foreground mean of per-case Dice)
    proxy_summary: str = "pooled"
    #: "magnitude" (this module) or a structured criterion, "l1" / "l2" / "slimming"
    #: (:class:`nnunet_prune.tools.sweep.structured.StructuredSweep`), with its fractions, unit and distribution
    criterion: str = "magnitude"
    fractions: list[float] | None = None
    ratio_of: str = "filters"
    distribution: str = "global"
    max_ratio: float = 0.95
    max_ratio_coupled: float = 0.8

    def used(self) -> dict:
        """The settings this kind of sweep uses (what its report records): magnitude or structured keys, not both."""
        structured = ("criterion", "fractions", "ratio_of", "distribution", "max_ratio", "max_ratio_coupled")
        magnitude = ("taus", "target_sparsities", "refine_steps", "prune_bias", "per_layer_normalised")
        drop = magnitude if self.criterion != "magnitude" else structured[1:]
        return {k: v for k, v in asdict(self).items() if k not in drop}

    def fingerprint(self) -> dict:
        """The settings that change the numbers (not the grid: more tau values can always be added)."""
        out = {"prune_bias": self.prune_bias, "per_layer_normalised": self.per_layer_normalised,
               "use_mirroring": self.use_mirroring, "tile_step_size": self.tile_step_size}
        if self.criterion != "magnitude":
            out.update(criterion=self.criterion, ratio_of=self.ratio_of, distribution=self.distribution,
                       max_ratio=self.max_ratio, max_ratio_coupled=self.max_ratio_coupled)
        return out


@dataclass
class TauResult:
    """The result of one tau: sparsities (fractions, mean over folds), proxy Dice against the unpruned ensemble (and
    real Dice against labels, if given), zero counts per stage, and ``seconds`` (s) to prune and predict."""

    tau: float
    sparsity_of_nonzero: float  # mean over folds
    sparsity_of_all_parameters: float  # mean over folds
    proxy_dice: float  # the chosen summary (SweepSettings.proxy_summary)
    proxy_dice_per_class: dict  # per class, pooled over cases
    proxy_dice_per_case: dict
    real_dice: float | None = None
    real_dice_per_class: dict | None = None
    stages: dict = field(default_factory=dict)  # stage -> {weights, zero_before, zero_after} summed over folds
    per_fold_sparsity: list = field(default_factory=list)
    seconds: float = 0.0
    proxy_dice_pooled: float | None = None  # mean of pooled per-class Dice over the classes large enough to judge
    proxy_dice_paper_mean: float | None = None  # the paper's foreground mean of per-case Dice
    proxy_dice_paper_per_class: dict | None = None
    reference_voxels: dict | None = None  # per class, summed over cases (the unpruned ensemble's prediction)
    small_classes: list | None = None  # classes too small to judge (left out of the pooled summary)


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
        :func:`nnunet_prune.core.latency.class_counts` returns them."""
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


# ------------------------------------------------------------------------------------------------ sweep
class MagnitudeSweep:
    """One sweep over one model folder; see the module docstring."""

    def __init__(self, model: ModelFolder, images: str | os.PathLike, output: str | os.PathLike,
                 labels: str | os.PathLike | None = None, settings: SweepSettings | None = None,
                 restart: bool = False):
        self.model = model
        self.settings = settings or SweepSettings()
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
        in s), the image files' sizes (bytes) and :meth:`SweepSettings.fingerprint`."""
        folds = {str(f): [str(self.model.fold_path(f) / self.model.checkpoint_name), self.model.checkpoint_bytes(f),
                          int((self.model.fold_path(f) / self.model.checkpoint_name).stat().st_mtime)]
                 for f in self.model.folds}
        images = {c: [os.path.getsize(p) for p in files] for c, files in self.cases.items()}
        return {"model": str(self.model.path), "folds": folds, "images": images, **self.settings.fingerprint()}

    def _check_existing_state(self, restart: bool = False) -> None:
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

    def _save_state(self) -> None:
        self.output.mkdir(parents=True, exist_ok=True)
        tmp = self.output / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(self.state, indent=1))
        tmp.replace(self.output / STATE_FILE)
        record_files(self.output, TOOL, [STATE_FILE])

    # -- inference --------------------------------------------------------------------------------------
    def _prepare(self):
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        m = self.model
        device = torch.device(self.settings.device)
        self.network = self._build_network().to(device).eval()
        self.dense_states = [m.load_checkpoint(f)["network_weights"] for f in m.folds]
        ckpt = m.first_checkpoint
        self.predictor = nnUNetPredictor(tile_step_size=self.settings.tile_step_size, use_gaussian=True,
                                         use_mirroring=self.settings.use_mirroring,
                                         perform_everything_on_device=device.type == "cuda", device=device,
                                         verbose=False, verbose_preprocessing=False, allow_tqdm=False)
        self.predictor.manual_initialization(self.network, m.plans_manager, m.configuration_manager, None,
                                             m.dataset_json, m.trainer_name,
                                             ckpt.get("inference_allowed_mirroring_axes"))
        preprocessor = m.configuration_manager.preprocessor_class(verbose=False)
        self.preprocessed = {}
        for case, files in self.cases.items():
            data, _, properties = preprocessor.run_case(files, None, m.plans_manager, m.configuration_manager,
                                                        m.dataset_json)
            self.preprocessed[case] = (torch.from_numpy(data), properties)
        self.label_list = m.label_manager.foreground_regions if m.label_manager.has_regions \
            else m.label_manager.foreground_labels
        self.ignore_label = m.label_manager.ignore_label

    def _build_network(self) -> torch.nn.Module:
        """The network the predictor runs the folds' parameters through: the model folder's own."""
        return self.model.build_network()

    def _predict(self, parameters: list[dict], progress: bool = False) -> dict[str, np.ndarray]:
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

    def _pruned_parameters(self, tau: float) -> tuple[list[dict], list]:
        params, stats = [], []
        for dense in self.dense_states:
            self.network.load_state_dict(dense)
            stats.append(magnitude_prune(self.network, tau, self.settings.prune_bias,
                                         self.settings.per_layer_normalised))
            params.append({k: v.detach().clone() for k, v in self.network.state_dict().items()})
        return params, stats

    def _reference(self, progress: bool = False) -> dict[str, np.ndarray]:
        folder = self.output / "reference"
        files = {c: folder / f"{c}.npz" for c in self.cases}
        if self.state.get("reference_seconds") is not None and all(p.is_file() for p in files.values()):
            return {c: np.load(p)["seg"] for c, p in files.items()}
        start = time.perf_counter()
        if progress:
            print(f"Reference: the unpruned ensemble ({len(self.model.folds)} fold(s)) predicts {len(self.cases)} "
                  f"case(s).", flush=True)
        ref = self._predict(self.dense_states, progress=progress)
        self.state["reference_seconds"] = round(time.perf_counter() - start, 3)
        folder.mkdir(parents=True, exist_ok=True)
        for c, seg in ref.items():
            np.savez_compressed(files[c], seg=seg)
        record_files(self.output, TOOL, files.values())
        self._save_state()
        return ref

    def _real_labels(self) -> dict[str, np.ndarray] | None:
        if self.labels is None:
            return None
        rw = self.model.plans_manager.image_reader_writer_class()
        return {c: rw.read_seg(str(p))[0][0] for c, p in self.labels.items()}

    def _save_predictions(self, tau: float, seg: dict[str, np.ndarray]) -> None:
        rw = self.model.plans_manager.image_reader_writer_class()
        folder = self.output / "predictions" / f"tau_{tau:.6f}"
        folder.mkdir(parents=True, exist_ok=True)
        written = []
        for case, s in seg.items():
            _, props = rw.read_images(self.cases[case])
            written.append(folder / f"{case}{self.model.dataset_json['file_ending']}")
            rw.write_seg(s, str(written[-1]), props)
        record_files(self.output, TOOL, written)

    def evaluate(self, tau: float, reference, real) -> TauResult:
        """Prune every fold at ``tau``, predict all images with the pruned ensemble and compare with ``reference``
        (proxy Dice) and ``real`` (label maps for the real Dice; None to skip). Needs the network, predictor and
        preprocessed images that :meth:`run` prepares."""
        start = time.perf_counter()
        params, stats = self._pruned_parameters(tau)
        pred = self._predict(params)
        counts = class_counts(reference, pred, self.label_list, self.ignore_label)
        proxy = ProxySummary.of(counts)
        per_case = proxy.per_case
        result = TauResult(tau=tau,
                           sparsity_of_nonzero=float(np.mean([s.sparsity_of_nonzero for s in stats])),
                           sparsity_of_all_parameters=float(np.mean([s.sparsity_all_parameters for s in stats])),
                           proxy_dice=proxy.value(self.settings.proxy_summary), proxy_dice_per_class=proxy.pooled,
                           proxy_dice_per_case={c: float(np.nanmean(list(v.values()))) if any(
                               not math.isnan(x) for x in v.values()) else math.nan for c, v in per_case.items()},
                           per_fold_sparsity=[s.sparsity_of_nonzero for s in stats],
                           proxy_dice_pooled=proxy.pooled_mean, proxy_dice_paper_mean=proxy.paper_mean,
                           proxy_dice_paper_per_class=proxy.paper_per_class,
                           reference_voxels=proxy.reference_voxels, small_classes=proxy.small_classes)
        if real is not None:
            result.real_dice, result.real_dice_per_class = foreground_mean(
                dice_per_case(real, pred, self.label_list, self.ignore_label))
        stages = OrderedDict((s, {"weights": 0, "zero_before": 0, "zero_after": 0})
                             for s in (stats[0].stages if stats else ()))  # every stage, in network order
        for s in stats:
            for name, st in s.stages.items():
                row = stages.setdefault(name, {"weights": 0, "zero_before": 0, "zero_after": 0})
                row["weights"] += st.weights
                row["zero_before"] += st.zero_before
                row["zero_after"] += st.zero_after
        result.stages = dict(stages)
        if self.settings.save_predictions:
            self._save_predictions(tau, pred)
        result.seconds = round(time.perf_counter() - start, 3)
        return result

    def grid(self) -> list[float]:
        """The tau values evaluated first: ``settings.taus`` (sorted, unique), 0 plus the tau of each target sparsity
        (quantiles of |w| over the prunable conv weights of all folds), or the default grid (the paper's, or the
        per-layer normalised one)."""
        s = self.settings
        if s.target_sparsities:
            from nnunet_prune.surgery.masks import prunable_convs

            weights = []
            for dense in self.dense_states:
                self.network.load_state_dict(dense)
                weights += [m.weight.detach().clone() for _, m in prunable_convs(self.network)]
            return [0.0] + taus_for_sparsities(weights, s.target_sparsities)
        if s.taus:
            return sorted(set(float(t) for t in s.taus))
        return list(NORMALISED_GRID if s.per_layer_normalised else PAPER_GRID)

    def run(self, progress: bool = True) -> dict:
        """Run (or finish) the sweep; returns the full report (also written to the output folder)."""
        from tqdm import tqdm

        start = time.perf_counter()
        self.output.mkdir(parents=True, exist_ok=True)
        self._prepare()
        results: dict[str, dict] = self.state["results"]
        self._apply_summary()
        reference = self._reference(progress)
        real = self._real_labels()
        grid = self.grid()

        def run_taus(taus, desc):
            todo = [t for t in taus if f"{t:.9g}" not in results]
            # a bar only on a terminal: piped into a log (the demo, CI) every redraw would become a line
            bar = tqdm(todo, desc=desc, unit="tau", disable=not progress or not sys.stderr.isatty())
            for tau in bar:
                r = self.evaluate(tau, reference, real)
                results[f"{tau:.9g}"] = asdict(r)
                self._save_state()
                bar.write(f"  tau={tau:<10.6g} sparsity={r.sparsity_of_nonzero:6.1%}  proxy Dice={r.proxy_dice:.4f}"
                          + (f"  real Dice={r.real_dice:.4f}" if r.real_dice is not None else "")
                          + f"  ({r.seconds:.1f} s)")

        skipped = len(grid) - len([t for t in grid if f"{t:.9g}" not in results])
        if skipped and progress:
            print(f"Reusing {skipped} finished tau values from {self.output / STATE_FILE}.")
        run_taus(grid, "tau grid")
        if not (self.settings.taus or self.settings.target_sparsities):
            for _ in range(MAX_EXTENSION):  # the default grid ends before the proxy Dice falls: go on
                tau = extension_tau(self._points(), self.settings.threshold)
                if tau is None:
                    break
                run_taus([tau], "extending")
        if self.settings.refine_steps > 0:
            run_taus(refinement_taus(self._points(), self.settings.threshold, self.settings.refine_steps),
                     "refining")
        self.state["last_run_seconds"] = round(time.perf_counter() - start, 3)
        self._save_state()
        report = self.report()
        write_outputs(report, self.output)
        return report

    def _points(self) -> list[SweepPoint]:
        return [SweepPoint(r["tau"], r["sparsity_of_nonzero"], r["proxy_dice"])
                for r in self.state["results"].values()]

    def _apply_summary(self) -> None:
        """proxy_dice of every finished tau in the chosen summary (a resumed sweep may choose another one)."""
        key = "proxy_dice_paper_mean" if self.settings.proxy_summary == "mean" else "proxy_dice_pooled"
        for r in self.state["results"].values():
            if r.get(key) is not None:
                r["proxy_dice"] = r[key]

    def report(self) -> dict:
        """The report of every finished tau (what sweep.json holds): model, settings, critical point, first failure,
        timings (s) and the per-tau results sorted by tau."""
        rows = sorted(self.state["results"].values(), key=lambda r: r["tau"])
        points = self._points()
        crit = critical_point(points, self.settings.threshold)
        fail = first_failure(points, self.settings.threshold)
        evaluated = len(rows)
        total_eval_seconds = sum(r["seconds"] for r in rows)
        return {
            "model": str(self.model.path),
            "trainer": self.model.trainer_name,
            "configuration": self.model.configuration_name,
            "folds": [str(f) for f in self.model.folds],
            "cases": list(self.cases),
            "label_names": label_names(self.model.dataset_json),
            "settings": self.settings.used(),
            "threshold": self.settings.threshold,
            "critical_point": asdict(crit) if crit else None,
            "first_failure": asdict(fail) if fail else None,
            "reference_seconds": self.state.get("reference_seconds"),
            "tau_evaluations": evaluated,
            "tau_seconds_total": round(total_eval_seconds, 3),
            "cost_in_ensemble_inferences": round((total_eval_seconds + (self.state.get("reference_seconds") or 0))
                                                 / self.state["reference_seconds"], 2)
            if self.state.get("reference_seconds") else None,
            "results": rows,
        }


# ------------------------------------------------------------------------------------------------ outputs
def write_outputs(report: dict, output: Path) -> dict[str, Path]:
    """sweep.csv, sweep.json, summary.md and the plots."""
    import pandas as pd

    rows = report["results"]
    table = []
    for r in rows:
        row = {"tau": r["tau"], "sparsity_of_nonzero": r["sparsity_of_nonzero"],
               "sparsity_of_all_parameters": r["sparsity_of_all_parameters"], "proxy_dice": r["proxy_dice"],
               "real_dice": r["real_dice"], "seconds": r["seconds"]}
        row.update({f"proxy_dice_class_{k}": v for k, v in r["proxy_dice_per_class"].items()})
        if r["real_dice_per_class"]:
            row.update({f"real_dice_class_{k}": v for k, v in r["real_dice_per_class"].items()})
        row.update({f"sparsity_{s}": (v["zero_after"] - v["zero_before"]) / (v["weights"] - v["zero_before"])
                    if v["weights"] > v["zero_before"] else 0.0 for s, v in r["stages"].items()})
        table.append(row)
    paths = {"csv": output / "sweep.csv", "json": output / "sweep.json", "markdown": output / "summary.md"}
    pd.DataFrame(table).to_csv(paths["csv"], index=False)
    paths["json"].write_text(json.dumps(report, indent=1, default=str))
    paths["markdown"].write_text(summary_markdown(report))
    try:
        paths.update(plot_sweep(report, output))
    except Exception as e:  # plots are a convenience; the numbers are in the CSV/JSON
        print(f"could not plot the sweep ({type(e).__name__}: {e})")
    record_files(output, TOOL, paths.values())
    return paths


def _stage_sparsities(result: dict) -> dict[str, float]:
    return {s: (v["zero_after"] - v["zero_before"]) / (v["weights"] - v["zero_before"])
            if v["weights"] > v["zero_before"] else 0.0 for s, v in result["stages"].items()}


def _class_table(report: dict) -> list[str]:
    """Per-class proxy Dice at the critical point (or the last tau) with each class's reference volume."""
    crit = report["critical_point"]
    rows = report["results"]
    at = next((r for r in rows if crit and r["tau"] == crit["tau"]), rows[-1] if rows else None)
    if not at or not at.get("reference_voxels"):
        return []
    names = report.get("label_names", {})
    small = set(at.get("small_classes") or [])
    out = ["", f"Per class at tau = {at['tau']:.6g}" + (" (the critical point)" if crit else "") + ":", "",
           "| class | reference voxels | proxy Dice (pooled) | paper: mean of per-case Dice | judged |",
           "|---|---:|---:|---:|---|"]
    paper = at.get("proxy_dice_paper_per_class") or {}
    for lab, value in at["proxy_dice_per_class"].items():
        p = paper.get(lab)
        out.append(f"| {names.get(lab, lab)} | {at['reference_voxels'].get(lab, 0):,} | "
                   f"{'-' if value is None or math.isnan(value) else f'{value:.4f}'} | "
                   f"{'-' if p is None or math.isnan(p) else f'{p:.4f}'} | "
                   f"{'no: too small to judge' if lab in small else 'yes'} |")
    return out


def summary_markdown(report: dict) -> str:
    """The report as summary.md: setup, critical point, timing, proxy Dice per class, a table of every tau, and the
    sparsity per stage at the critical point."""
    crit = report["critical_point"]
    lines = [f"# Magnitude-pruning sweep: {Path(report['model']).name}", "",
             f"- model: `{report['model']}` (trainer {report['trainer']}, configuration {report['configuration']}, "
             f"folds {', '.join(report['folds'])})",
             f"- images: {len(report['cases'])} cases; proxy Dice = Dice of the pruned vs the unpruned ensemble "
             f"(nnU-Net inference{' with' if report['settings']['use_mirroring'] else ' without'} mirroring TTA)",
             f"- threshold {'|w| <= tau x RMS(layer)' if report['settings']['per_layer_normalised'] else '|w| <= tau'}"
             f"{', biases pruned too' if report['settings']['prune_bias'] else ''}; sparsity counts only weights "
             f"that were non-zero before pruning", ""]
    if crit:
        lines.append(f"**Critical point** (largest sparsity with proxy Dice >= {report['threshold']}): "
                     f"tau = {crit['tau']:.6g}, sparsity {crit['sparsity']:.1%}, proxy Dice {crit['proxy_dice']:.4f}.")
    else:
        lines.append(f"No evaluated tau keeps proxy Dice >= {report['threshold']}.")
    fail = report.get("first_failure")
    if crit and fail and fail["tau"] < crit["tau"]:
        lines.append(f"The curve is not monotonic: proxy Dice first falls below the threshold at tau = "
                     f"{fail['tau']:.6g} (sparsity {fail['sparsity']:.1%}, proxy Dice {fail['proxy_dice']:.4f}) and "
                     f"recovers later; the conservative choice is the last tau before that.")
    if report.get("reference_seconds"):
        n = report["tau_evaluations"]
        per_tau = report["tau_seconds_total"] / n / report["reference_seconds"] if n else 0.0
        lines.append(f"\nTiming: one ensemble inference (the reference) took {report['reference_seconds']:.1f} s; "
                     f"the {n} tau values took {report['tau_seconds_total']:.1f} s, i.e. each tau cost "
                     f"{per_tau:.2f} ensemble inferences (pruning every fold included) and the whole sweep "
                     f"{report['cost_in_ensemble_inferences']}. Running nnUNetv2_predict once per tau would cost "
                     f"the same {n + 1} inferences plus its start-up and preprocessing every time; here the images "
                     f"are preprocessed once and kept in memory.")
    summary = report["settings"].get("proxy_summary", "pooled")
    lines.append("\nProxy Dice: " + (
        "per class, Dice of the voxels of all cases together; the summary is the mean over the classes whose "
        "reference volume is large enough to judge (a class with a few voxels flips between 0 and 1 when a few "
        "stray voxels appear or vanish). `--proxy-summary mean` gives the paper's plain foreground mean."
        if summary == "pooled" else "the paper's foreground mean of per-case Dice (`--proxy-summary mean`); "
        "classes with few reference voxels can dominate it."))
    lines += _class_table(report)
    lines += ["", "| tau | sparsity (non-zero weights) | sparsity (all params) | proxy Dice | real Dice |",
              "|---:|---:|---:|---:|---:|"]
    for r in report["results"]:
        real = f"{r['real_dice']:.4f}" if r["real_dice"] is not None else "-"
        lines.append(f"| {r['tau']:.6g} | {r['sparsity_of_nonzero']:.1%} | {r['sparsity_of_all_parameters']:.1%} | "
                     f"{r['proxy_dice']:.4f} | {real} |")
    if crit:
        at = next(r for r in report["results"] if r["tau"] == crit["tau"])
        lines += ["", f"Per-stage sparsity at the critical point (tau = {crit['tau']:.6g}):", "",
                  "| stage | weights | sparsity |", "|---|---:|---:|"]
        for s, v in _stage_sparsities(at).items():
            lines.append(f"| {s} | {at['stages'][s]['weights']:,} | {v:.1%} |")
    return "\n".join(lines) + "\n"


def plot_sweep(report: dict, output: Path) -> dict[str, Path]:
    """dice_vs_sparsity.png, dice_vs_tau.png and stage_sparsity.png, each drawn in its own style on a figure without
    pyplot (the caller's backend and rcParams, e.g. a global seaborn font scale, neither leak in nor change)."""
    from matplotlib.ticker import PercentFormatter

    from nnunet_prune.core.plotting import PART_COLORS, new_figure, plain_number, plot_style, readable_log_axis, save

    rows = report["results"]
    taus = [r["tau"] for r in rows]
    sp = [r["sparsity_of_nonzero"] * 100 for r in rows]
    proxy = [r["proxy_dice"] for r in rows]
    real = [r["real_dice"] if r.get("real_dice") is not None else math.nan for r in rows]
    has_real = any(not math.isnan(v) for v in real)
    crit, fail = report["critical_point"], report.get("first_failure")
    model = Path(report["model"])
    title = f"{model.parent.name}/{model.name}" if model.parent.name else model.name
    folds = report.get("folds") or []
    subtitle = (f"fold{'s' if len(folds) > 1 else ''} {', '.join(map(str, folds))}; " if folds else "") + \
        f"{len(report.get('cases') or [])} cases, {len(rows)} tau values"
    positive = [t for t in taus if t > 0]
    paths = {}
    with plot_style():
        for name in ("dice_vs_sparsity.png", "dice_vs_tau.png"):
            by_sparsity = name == "dice_vs_sparsity.png"
            x = sp if by_sparsity else taus
            fig = new_figure(figsize=(8.5, 4.5), layout="constrained")
            ax = fig.add_subplot()
            ax.plot(x, proxy, "o-", ms=4, label="proxy Dice (pruned vs unpruned ensemble)")
            if has_real:
                ax.plot(x, real, "s--", ms=4, label="real Dice (vs labels)")
            ax.axhline(report["threshold"], color="0.4", ls=":", label=f"threshold {report['threshold']:g}")
            if crit:
                ax.axvline(crit["sparsity"] * 100 if by_sparsity else crit["tau"], color="tab:red", ls=":",
                           label=f"critical point: tau {crit['tau']:.4g},\n{crit['sparsity']:.1%} sparsity, "
                                 f"proxy Dice {crit['proxy_dice']:.3f}")
            if crit and fail and fail["tau"] < crit["tau"]:  # not monotonic: where it first fell below
                ax.plot([fail["sparsity"] * 100 if by_sparsity else fail["tau"]], [fail["proxy_dice"]], "x",
                        color="tab:red", ms=9, mew=2, label=f"first below threshold: tau {fail['tau']:.4g}")
            if by_sparsity:
                ax.set_xlabel("sparsity of the weights that were non-zero before pruning")
                ax.xaxis.set_major_formatter(PercentFormatter(100))
                ax.set_xlim(-2, 102)
            else:
                ax.set_xlabel("tau (magnitude threshold"
                              + (", in units of each layer's RMS" if report["settings"].get("per_layer_normalised")
                                 else "") + ")")
                if positive and max(positive) > 20 * min(positive):  # an extended grid: small tau values stay apart
                    linear = min(positive) * 2
                    ax.set_xscale("symlog", linthresh=linear, linscale=0.5)
                    ax.set_xlim(-0.25 * linear, max(positive) * 1.3)
                    readable_log_axis(ax, "x", linthresh=linear)  # 0 and plain decimals, never 1e-05
                    ax.set_xlabel(ax.get_xlabel() + f"; log scale above {plain_number(linear)}")
            ax.set_ylabel("Dice (pooled over cases, mean of the judged classes)"
                          if report["settings"].get("proxy_summary", "pooled") == "pooled"
                          else "Dice (foreground mean of per-case Dice)")
            ax.set_ylim(0, 1.02)
            ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0, frameon=False)
            fig.suptitle(f"Magnitude-pruning sweep: {title}")
            ax.set_title(subtitle, fontsize=8, color="0.3")
            paths[name] = output / name
            save(fig, paths[name])

        chosen = list({r["tau"]: r for r in ([r for r in rows if crit and r["tau"] == crit["tau"]]
                                            + [rows[-1]])}.values())
        stages = list(rows[-1]["stages"])
        fig = new_figure(figsize=(max(7.0, 0.55 * len(stages) + 2), 4.5), layout="constrained")
        ax = fig.add_subplot()
        width = 0.8 / len(chosen)
        xs = np.arange(len(stages))
        for i, r in enumerate(chosen):
            v = _stage_sparsities(r)
            what = "critical point" if crit and r["tau"] == crit["tau"] else "largest tau"
            ax.bar(xs + (i - (len(chosen) - 1) / 2) * width, [v.get(s, 0) * 100 for s in stages], width,
                   color=("tab:blue", "tab:red")[i % 2],
                   label=f"{what}: tau {r['tau']:.4g} ({r['sparsity_of_nonzero']:.0%} overall)")

        def part(stage: str) -> str:
            return ("decoder" if stage.startswith("dec") else stage if stage in ("bottleneck", "heads")
                    else "encoder")

        parts = [part(s) for s in stages]
        for i in range(1, len(stages)):
            if parts[i] != parts[i - 1]:
                ax.axvline(i - 0.5, color="0.6", lw=0.8, ls="--")
        ax.set_xticks(xs)
        ax.set_xticklabels(stages, rotation=45, ha="right", rotation_mode="anchor")
        for label, p in zip(ax.get_xticklabels(), parts):
            label.set_color(PART_COLORS.get(p, "0.2"))
        ax.grid(False, axis="x")
        ax.set_xlabel("stage (network order: encoder, bottleneck, decoder, segmentation heads)")
        ax.set_ylabel("sparsity of non-zero weights")
        ax.yaxis.set_major_formatter(PercentFormatter(100))
        ax.set_ylim(0, 100)
        ax.legend(loc="lower left", bbox_to_anchor=(0, 1.01), ncol=len(chosen), borderaxespad=0, frameon=False)
        fig.suptitle(f"Per-stage sparsity: {title}")
        paths["stage_sparsity.png"] = output / "stage_sparsity.png"
        save(fig, paths["stage_sparsity.png"])
    return paths
