"""nnU-Net's Dice in process: per case and class (label or region) from TP/FP/FN voxel counts, exactly as nnU-Net's
evaluation (``compute_tp_fp_fn_tn``); used by the sweeps (proxy and real Dice). Dice of predicted folders comes
from nnU-Net's own ``nnUNetv2_evaluate_folder`` (the benchmark, the demo and the report read its ``summary.json``).
"""

from __future__ import annotations

import math

import numpy as np


def class_counts(reference: dict[str, np.ndarray], prediction: dict[str, np.ndarray], labels,
                 ignore_label=None) -> dict[str, dict[str, tuple[int, int, int]]]:
    """Per case and class (label or region, as nnU-Net's evaluation): (TP, FP, FN) voxel counts; the reference
    volume of a class is TP + FN."""
    from nnunetv2.evaluation.evaluate_predictions import compute_tp_fp_fn_tn, region_or_label_to_mask

    out = {}
    for case, ref in reference.items():
        pred = prediction[case]
        ignore = ref == ignore_label if ignore_label is not None else None
        out[case] = {}
        for label in labels:
            tp, fp, fn, _ = compute_tp_fp_fn_tn(region_or_label_to_mask(ref, label),
                                                region_or_label_to_mask(pred, label), ignore)
            out[case][str(label)] = (int(tp), int(fp), int(fn))
    return out


def dice(tp: int, fp: int, fn: int) -> float:
    """nnU-Net's Dice 2TP / (2TP + FP + FN) from voxel counts; NaN when the class is absent from both."""
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn > 0 else math.nan


def dice_per_case(reference: dict[str, np.ndarray], prediction: dict[str, np.ndarray], labels,
                  ignore_label=None) -> dict[str, dict[str, float]]:
    """nnU-Net's Dice per case (name -> label map, same shapes) and class: 2TP / (2TP + FP + FN), NaN when a class
    is absent from both."""
    return {case: {lab: dice(*c) for lab, c in per.items()}
            for case, per in class_counts(reference, prediction, labels, ignore_label).items()}


def foreground_mean(per_case: dict[str, dict[str, float]]) -> tuple[float, dict[str, float]]:
    """Mean over classes of the per-class mean over cases (as nnU-Net's foreground_mean); classes that are absent
    from both segmentations in every case are skipped instead of turning the result into NaN."""
    labels = next(iter(per_case.values())).keys() if per_case else []
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            per_class = {lab: float(np.nanmean([c[lab] for c in per_case.values()])) for lab in labels}
    values = [v for v in per_class.values() if not math.isnan(v)]
    return (float(np.mean(values)) if values else math.nan), per_class
