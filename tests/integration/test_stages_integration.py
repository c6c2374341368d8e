"""Where a case's prediction time goes (``nnunet-prune report --predict --stages``): the stages add up to the
subprocess's wall time, the network is called once per tile, mirror and fold, and the stage-by-stage prediction
segments exactly as stock ``nnUNetv2_predict_from_modelfolder``; ``report --settings`` scores the validation cases
once per stock setting."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_prune.tools.export.int8 import case_mean_dice
from nnunet_prune.tools.report.stages import STAGES, run_stages

pytestmark = pytest.mark.slow


def _segmentations(folder):
    return {p.name: sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in sorted(folder.glob("*.nii.gz"))}


def test_stages_add_up_and_segment_as_stock_prediction(nnunet, dataset2d, dense_model, tmp_path, monkeypatch):
    for key, value in nnunet.env.items():
        monkeypatch.setenv(key, value)
    row = run_stages(dense_model, dataset2d / "imagesTs", tmp_path / "staged", [0, 1])
    assert row.error is None and row.cases == 3 and list(row.seconds) == list(STAGES)
    assert all(row.seconds[s] >= 0 for s in STAGES if s != "unaccounted")
    # every second of the subprocess is in a named stage (the bound: within 5 % of the wall time)
    assert abs(row.seconds["unaccounted"]) <= 0.05 * row.wall_seconds
    # 32x32 images, 32x32 patch: one tile; 2D mirroring over 2 axes: 4 copies; 2 folds; 3 cases
    assert row.forward_calls == 1 * 4 * 2 * 3
    # peak memory after each stage: the process's own high-water mark in MB (torch alone is well over 100 MB)
    peaks = list(row.peak_rss_mb.values())
    assert list(row.peak_rss_mb) == ["start-up", "read", "preprocess", "network", "resample logits", "write"]
    assert 100 < peaks[0] and peaks == sorted(peaks) and peaks[-1] < 64_000
    stock = tmp_path / "stock"
    nnunet.run("nnUNetv2_predict_from_modelfolder", "-i", dataset2d / "imagesTs", "-o", stock, "-m", dense_model,
               "-f", 0, 1, "-device", "cpu", "--disable_progress_bar")
    a, b = _segmentations(tmp_path / "staged"), _segmentations(stock)
    assert a.keys() == b.keys() and len(a) == 3 and all(np.array_equal(a[k], b[k]) for k in a)
    # without mirroring: one call per tile and fold
    assert run_stages(dense_model, dataset2d / "imagesTs", tmp_path / "flat", [0], tta=False).forward_calls == 3


def test_stages_need_images(nnunet, dense_model):
    proc = nnunet.run(sys.executable, "-m", "nnunet_prune.cli.main", "report", dense_model, "--stages", check=False)
    assert proc.returncode == 2 and "give the images with --predict" in proc.stderr


def test_settings_are_timed_and_scored_on_the_validation_cases(nnunet, dense_model, tmp_path):
    """report --settings: nnU-Net's default setting scores fold 0's validation cases exactly as nnU-Net's own
    validation at the end of training did (same network, cases, step and mirroring); every setting gets a row."""
    out = tmp_path / "report"
    proc = nnunet.run(sys.executable, "-m", "nnunet_prune.cli.main", "report", dense_model, "-f", "0",
                      "--runtimes", "none", "--no-compile", "--repeats", "1", "--warmup", "0", "-o", out,
                      "--settings", "tta:0.5", "notta:1.0")
    assert "Settings against Dice" in proc.stdout
    own = case_mean_dice(json.loads((dense_model / "fold_0" / "validation" / "summary.json").read_text()))
    rows = [line.split("|") for line in (out / "report.md").read_text().splitlines()
            if line.startswith(f"| {dense_model.name} | pytorch |")]
    assert [(r[3].strip(), r[4].strip()) for r in rows] == [("on", "0.5"), ("off", "1.0")]
    assert float(rows[0][9]) == pytest.approx(own, abs=1e-4)  # the table's 4 decimals
    assert all(float(r[6]) > 0 and 0 <= float(r[9]) <= 1 for r in rows)


def test_bad_settings_are_refused_before_any_work(nnunet, dense_model, tmp_path):
    proc = nnunet.run(sys.executable, "-m", "nnunet_prune.cli.main", "report", dense_model, "-o", tmp_path / "r",
                      "--settings", "mirror:0.5", check=False)
    assert proc.returncode == 2 and "give tta:STEP" in proc.stderr and not (tmp_path / "r").exists()
