"""The magnitude-pruning sweep and export on a tiny trained model (CPU, nnU-Net's own inference)."""

from __future__ import annotations

import shutil
import sys

import numpy as np
import pytest

from tests.conftest import DATASET_2D, read_json
from tests.integration.test_nnunet_integration import segmentations

pytestmark = pytest.mark.slow


def sweep(nnunet, *args, check=True):
    return nnunet.run(sys.executable, "-m", "nnunet_prune.cli.main", "sweep", *args, check=check)


def test_sweep_proxy_dice_sparsity_resume_and_export(nnunet, dataset2d, dense_model):
    out = nnunet.base / "sweep"
    images, labels = dataset2d / "imagesTs", dataset2d / "labelsTs"
    first = sweep(nnunet, "-d", DATASET_2D, "-c", "2d", "-tr", "nnUNetTrainerBudget", "-f", 0, 1, "-i", images,
                  "--labels", labels, "-o", out, "--taus", 0, 0.004, "--refine", 0, "--save-predictions")
    assert "Critical point" in first.stdout
    state = read_json(out / "sweep_state.json")
    assert sorted(float(k) for k in state["results"]) == [0.0, 0.004]

    # interrupted / extended sweeps reuse finished tau values and the cached reference predictions
    second = sweep(nnunet, dense_model, "-f", 0, 1, "-i", images, "--labels", labels, "-o", out, "--taus", 0,
                   0.004, 0.02, 0.05, "--refine", 0, "--save-predictions")
    assert "Reusing 2 finished tau values" in second.stdout
    report = read_json(out / "sweep.json")
    rows = {r["tau"]: r for r in report["results"]}
    assert sorted(rows) == [0.0, 0.004, 0.02, 0.05]
    assert rows[0.0]["proxy_dice"] == 1.0 and rows[0.0]["sparsity_of_nonzero"] == 0.0
    sparsities = [rows[t]["sparsity_of_nonzero"] for t in sorted(rows)]
    assert all(a < b for a, b in zip(sparsities, sparsities[1:]))
    assert all(0 <= rows[t]["proxy_dice"] <= 1 for t in rows)
    assert all(rows[t]["real_dice"] is not None for t in rows)
    assert set(rows[0.05]["stages"]) >= {"enc0", "bottleneck", "dec0", "heads"}
    assert report["reference_seconds"] > 0 and report["cost_in_ensemble_inferences"] > 1
    for name in ("sweep.csv", "summary.md", "dice_vs_sparsity.png", "dice_vs_tau.png", "stage_sparsity.png"):
        assert (out / name).is_file()
    assert "Per-stage sparsity" in (out / "summary.md").read_text() or report["critical_point"] is None

    # every file the sweep wrote is recorded as its own; --restart deletes them, but never a file of the user's
    from nnunet_prune.core.outputs import foreign_entries

    assert foreign_entries(out, "sweep") == []
    (out / "my_notes.txt").write_text("keep me")
    refused = sweep(nnunet, dense_model, "-f", 0, 1, "-i", images, "-o", out, "--taus", 0, "--restart",
                    check=False)
    assert refused.returncode == 2 and "my_notes.txt" in refused.stderr and "Traceback" not in refused.stderr
    assert (out / "my_notes.txt").read_text() == "keep me" and (out / "sweep_state.json").is_file()
    (out / "my_notes.txt").unlink()

    # the exported model at tau predicts exactly what the pruned ensemble predicted inside the sweep
    exported = nnunet.base / "magnitude_export"
    nnunet.run(sys.executable, "-m", "nnunet_prune.cli.main", "export", dense_model, "-o", exported,
               "--magnitude-tau", 0.02, "-f", 0, 1)
    summary = read_json(exported / "export_summary.json")
    # the dense model's validation results do not describe the pruned one: not copied
    assert (exported / "fold_0").is_dir() and not (exported / "fold_0" / "validation").exists()
    for f in summary["folds"]:
        assert f["checkpoint_bytes_after"] < f["checkpoint_bytes_before"] / 2
        assert f["sparsity"]["tau"] == 0.02
        assert f["max_abs_difference"] <= 1e-4
    pred = nnunet.base / "pred_magnitude_export"
    nnunet.run("nnUNetv2_predict_from_modelfolder", "-i", images, "-o", pred, "-m", exported, "-f", 0, 1, "-device",
               "cpu", "-npp", 1, "-nps", 1, "--disable_progress_bar")
    a = segmentations(pred)
    b = segmentations(out / "predictions" / "tau_0.020000")
    assert a.keys() == b.keys() and len(a) == 3
    for k in a:
        assert np.mean(a[k] != b[k]) <= 1e-3, k  # identical up to rare float-rounding ties


def test_sweep_bad_input_fails_before_any_work(nnunet, dataset2d, dense_model, tmp_path, capsys):
    """Each bad input is one ERROR line (exit 2) and nothing written. The checks need no nnU-Net environment, so
    they run the command's main() in this process (a subprocess costs seconds of imports each); the -d/-c lookup
    reads nnU-Net's folders and runs as a subprocess."""
    from nnunet_prune.cli.main import main

    def refused(*args) -> str:
        capsys.readouterr()
        assert main(["sweep", *map(str, args)]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("ERROR:") and "Traceback" not in err, err
        return err

    images = dataset2d / "imagesTs"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "holds no images ending in .nii.gz" in refused(dense_model, "-i", empty, "-o", tmp_path / "o1")
    two_channels = tmp_path / "two"
    two_channels.mkdir()
    for f in list(images.glob("*_0000.nii.gz"))[:1]:
        shutil.copy(f, two_channels / f.name)
        shutil.copy(f, two_channels / f.name.replace("_0000", "_0001"))
    assert "do not match the model's 1 input channel" in refused(dense_model, "-i", two_channels, "-o",
                                                                  tmp_path / "o2")
    assert "fold(s) 3 have no checkpoint_final.pth" in refused(dense_model, "-i", images, "-f", 0, 3, "-o",
                                                                tmp_path / "o3")
    assert "is not a trained nnU-Net model folder" in refused(dataset2d, "-i", images, "-o", tmp_path / "o4")
    assert "inside the model folder" in refused(dense_model, "-i", images, "-o", dense_model / "sweep")
    # a folder of segmentations given as images: which files were expected
    err = refused(dense_model, "-i", dataset2d / "labelsTs", "-o", tmp_path / "o6")
    assert "lack the channel suffix" in err and "CASE_0000.nii.gz" in err
    for i in (1, 2, 3, 4, 6):
        assert not (tmp_path / f"o{i}").exists()
    assert not (dense_model / "sweep").exists()
    # -d/-c naming a model nobody trained: the error lists the models that exist
    r = sweep(nnunet, "-d", DATASET_2D, "-c", "2d", "-i", images, "-o", tmp_path / "o5", check=False)
    assert r.returncode == 2 and "nnUNetTrainer__nnUNetPlans__2d does not exist" in r.stderr
    assert "Trained models of Dataset601_Synthetic2D:" in r.stderr and dense_model.name in r.stderr
    assert not (tmp_path / "o5").exists()


def test_report_on_trained_folders(nnunet, dataset2d, dense_model, sauron_model):
    out = nnunet.base / "report"
    r = nnunet.run(sys.executable, "-m", "nnunet_prune.cli.main", "report", dense_model, sauron_model, "-f", 0,
                   "-o", out, "--no-compile", "--repeats", 3, "--threads", 1)
    import pandas as pd

    table = pd.read_csv(out / "report.csv")
    assert len(table) == 2
    dense, sauron = table.iloc[0], table.iloc[1]
    assert sauron["macs"] < dense["macs"] and sauron["parameters"] < dense["parameters"]
    assert table["dice"].notna().all() and (table["cpu_ms_eager"] > 0).all()
    assert (out / "report.md").is_file() and (out / "dice_vs_macs.png").is_file()
    assert "nnUNetTrainerSauron" in r.stdout


def test_structured_sweep_removes_filters_measures_latency_and_resumes(nnunet, dataset2d, dense_model):
    out = nnunet.base / "structured_sweep"
    images, labels = dataset2d / "imagesTs", dataset2d / "labelsTs"
    common = (dense_model, "-f", 0, 1, "-i", images, "--labels", labels, "-o", out, "--criterion", "l1",
              "--disable-tta")
    first = sweep(nnunet, *common, "--fractions", 0.3)
    assert "Structured sweep (l1)" in first.stdout and "nnUNetTrainerStructuredL1_iterative" in first.stdout
    second = sweep(nnunet, *common, "--fractions", 0.3, 0.6)
    assert "Reusing 1 finished fractions" in second.stdout
    report = read_json(out / "sweep.json")
    rows = {r["fraction"]: r for r in report["results"]}
    assert sorted(rows) == [0.3, 0.6] and report["dense_latency_ms"] > 0
    for f, r in rows.items():
        assert abs(r["filters_removed"] - f) < 0.01  # physically removed, the same fraction in both folds
        assert r["latency_ms"] > 0 and 0 <= r["proxy_dice"] <= 1 and r["real_dice"] is not None
        assert len(r["per_fold_filters"]) == 2
    assert rows[0.6]["parameters"] < rows[0.3]["parameters"] and rows[0.6]["macs_removed"] > rows[0.3]["macs_removed"]
    for name in ("sweep.csv", "summary.md", "dice_vs_fraction.png"):
        assert (out / name).is_file()
    # before any inference: an unreachable fraction, magnitude options with a structured criterion
    for extra, words in ((("--fractions", 0.99), "unreachable"), (("--taus", 0.01), "magnitude-pruning options")):
        bad = sweep(nnunet, dense_model, "-i", images, "-o", nnunet.base / "never", "--criterion", "l2", *extra,
                    check=False)
        assert bad.returncode == 2 and words in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
        assert not (nnunet.base / "never").exists()
