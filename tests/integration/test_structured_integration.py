"""Structured pruning through the stock console scripts: an iterative L2 run from the dense folds reaches its target
on schedule and fine-tunes, ``--c`` from a mid-schedule checkpoint continues the schedule, the differently pruned
folds predict as one ensemble through stock ``nnUNetv2_predict``, slimming finds its sparsity-trained fold, bad
settings stop before anything is written."""

from __future__ import annotations

import math
import shutil
import sys

import numpy as np
import pytest
import torch

from nnunet_prune.tools.export.folder import MAX_RELATIVE_DIFFERENCE
from tests.conftest import DATASET_2D, read_json
from tests.helpers import logged_once, restored_afterwards, segmentations

pytestmark = pytest.mark.slow

TRAINER = "nnUNetTrainerStructuredL2_iterative"
#: 4 steps of 20 % to remove half of the filters; 4 epochs give 4 pruning points (the start, after epochs 0-2)
ENV = {"NNUNET_PRUNE_EPOCHS": "4", "NNUNET_PRUNE_SAVE_EVERY": "2",
       "NNUNET_PRUNE_STRUCTURED": "pruning_ratio=0.5,step=0.2,stop_fraction=1"}


@pytest.fixture(scope="module")
def structured_model(nnunet, dataset2d, dense_model):
    """Folds 0 and 1 of nnUNetTrainerStructuredL2_iterative from the dense folds (fold 0: 4 epochs, 4 steps; fold 1
    in 2 epochs, its 4 steps at the start and after epoch 0)."""
    nnunet.train(DATASET_2D, "2d", 1, TRAINER, env={**ENV, "NNUNET_PRUNE_EPOCHS": "2"})
    return nnunet.train(DATASET_2D, "2d", 0, TRAINER, env=ENV)


def totals(history) -> list[int]:
    return [sum(r["widths"].values()) for r in history]


def test_iterative_l2_reaches_its_target_on_schedule_and_fine_tunes(structured_model, dense_model):
    fold = structured_model / "fold_0"
    config = read_json(fold / "pruning_config.json")
    assert config["method_class"] == "StructuredMethod" and config["start"]["from"] == "dense"
    assert config["method"]["criterion"] == "l2" and config["method"]["schedule"] == "iterative"
    assert config["method"]["pruning_ratio"] == 0.5 and config["method"]["max_ratio_coupled"] == 0.8
    assert str(dense_model / "fold_0" / "checkpoint_final.pth") == config["start"]["dense_checkpoint"]
    initial = sum(config["initial_widths"].values())
    history = read_json(fold / "pruning_history.json")["epochs"]
    got = totals(history)
    step1 = math.floor(initial * 0.8 + 0.5)  # step 1 at the start: the first record (epoch 0) shows it done
    assert got[0] == math.floor(initial * 0.8 ** 2 + 0.5) and got[0] < step1
    assert got[1] == math.floor(initial * 0.8 ** 3 + 0.5)
    assert got[2] == got[3] == math.ceil(0.5 * initial)  # the last step lands on the target; epoch 3 fine-tunes
    assert [r["structured_steps_done"] for r in history] == [2, 3, 4, 4]
    assert history[3]["removed"] == {}
    log = next(fold.glob("training_log_*.txt")).read_text()
    assert "Loaded dense weights from" in log
    assert "Structured pruning (l2, iterative, global): remove 0.5 of the filters in 4 step(s)" in log
    assert "Structured pruning step 1 of 4: removing" in log
    logged_once(log, ("Structured pruning step", "Structured pruning ("))
    ckpt = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["network_weights"]["encoder.stages.0.0.convs.0.conv.weight"].shape[0] == \
        history[-1]["widths"]["enc0.conv0"]
    assert (fold / "validation" / "summary.json").is_file()


#: nnUNetv2_train killed after epoch 1 (after its checkpoint_latest.pth, which nnU-Net deletes at a normal end)
KILLED_AFTER_EPOCH_1 = f"""
import os, sys
from nnunet_prune.nnunet.trainers.structured import {TRAINER} as T
end = T.on_epoch_end
def on_epoch_end(self):
    end(self)
    if self.current_epoch == 2:
        os._exit(3)
T.on_epoch_end = on_epoch_end
from nnunetv2.run.run_training import run_training_entry
sys.argv = ["nnUNetv2_train", "{DATASET_2D}", "2d", "0", "-tr", "{TRAINER}", "-device", "cpu"]
run_training_entry()
"""


def test_resume_from_a_mid_schedule_checkpoint_continues_the_schedule(nnunet, structured_model):
    fold = structured_model / "fold_0"
    before = read_json(fold / "pruning_history.json")["epochs"]
    with restored_afterwards(structured_model, nnunet.base / "structured_backup"):
        shutil.rmtree(fold)
        killed = nnunet.run(sys.executable, "-c", KILLED_AFTER_EPOCH_1, env={"nnUNet_n_proc_DA": "0", **ENV},
                            check=False)
        assert killed.returncode == 3 and (fold / "checkpoint_latest.pth").is_file(), killed.stderr[-3000:]
        assert not (fold / "checkpoint_final.pth").exists()
        nnunet.run("nnUNetv2_train", DATASET_2D, "2d", 0, "-tr", TRAINER, "-device", "cpu", "--c",
                   env={"nnUNet_n_proc_DA": "0", **ENV})
        history = read_json(fold / "pruning_history.json")["epochs"]
        assert [r["epoch"] for r in history] == [0, 1, 2, 3]
        assert totals(history) == totals(before)  # step 4 after epoch 2, from the restored schedule
        assert [r["structured_steps_done"] for r in history] == [2, 3, 4, 4]
        assert read_json(fold / "pruning_config.json")["resumes"][0]["epoch"] == 2
        log = sorted(fold.glob("training_log_*.txt"))[-1].read_text()
        assert "Structured pruning step 4 of 4 after epoch 2" in log and "step 1 of 4" not in log


@pytest.fixture(scope="module")
def structured_predictions(nnunet, dataset2d, structured_model):
    """The test images segmented by the ensemble of both folds through stock nnUNetv2_predict (probabilities kept)."""
    pred = nnunet.base / "pred_structured"
    nnunet.run("nnUNetv2_predict", "-i", dataset2d / "imagesTs", "-o", pred, "-d", DATASET_2D, "-c", "2d", "-tr",
               TRAINER, "-f", 0, 1, "-device", "cpu", "-npp", 0, "-nps", 0, "--disable_progress_bar",
               "--save_probabilities")
    return pred


def decided_voxels(predictions, relative_bound: float) -> dict[str, np.ndarray]:
    """Per case, the voxels whose segmentation any network within the export's logit bound must reproduce: the
    top-2 margin of the averaged logits (log p1 - log p2 of nnU-Net's saved probabilities) exceeds twice the bound,
    the bound being ``relative_bound`` x the largest |logit| (at least half the largest logit spread seen). Where the
    margin is smaller, two runtimes that both keep the bound may break the tie differently."""
    logs = {}
    for file in sorted(predictions.glob("*.npz")):
        p = np.load(file)["probabilities"].astype(np.float64)
        # nnU-Net's (C, z, y, x) as nibabel reads the segmentation: (x, y, z), keyed like tests.helpers.segmentations
        p = p.transpose(0, *range(p.ndim - 1, 0, -1))
        logs[file.name[:-len(".npz")] + ".nii.gz"] = np.log(np.clip(p, 1e-30, None))
    largest = max(float((lp.max(0) - lp.min(0)).max()) for lp in logs.values()) / 2
    out = {}
    for case, lp in logs.items():
        top = np.sort(lp, axis=0)
        out[case] = (top[-1] - top[-2]) > 2 * relative_bound * largest
    return out


def test_differently_pruned_folds_predict_as_one_ensemble(structured_model, structured_predictions):
    w0 = read_json(structured_model / "fold_0" / "pruning_history.json")["epochs"][-1]["widths"]
    w1 = read_json(structured_model / "fold_1" / "pruning_history.json")["epochs"][-1]["widths"]
    assert w0 != w1 and sum(w0.values()) == sum(w1.values())
    assert len(list(structured_predictions.glob("*.nii.gz"))) == 3


def test_runtime_export_of_differently_pruned_folds_predicts_like_pytorch(nnunet, dataset2d, structured_model,
                                                                         structured_predictions, tmp_path):
    """`export --runtime openvino` of two folds of different widths: stock nnUNetv2_predict_from_modelfolder
    segments the test images as the PyTorch ensemble did; without the runtime's package it stops with one clear line.
    (ONNX Runtime goes through the same stock prediction in the `report --predict` test.)"""
    runtime = "openvino"
    pytest.importorskip(runtime)
    out = nnunet.base / f"structured_{runtime}"
    nnunet.run(sys.executable, "-m", "nnunet_prune.cli.main", "export", structured_model, "-o", out, "--runtime",
               runtime, "--threads", 1)
    arch = read_json(out / "plans.json")["configurations"]["2d"]["architecture"]
    assert arch["network_class_name"] == "nnunet_prune.networks.runtime.RuntimeNetwork"
    assert arch["arch_kwargs"]["runtime"] == runtime
    summary = read_json(out / "export_summary.json")
    assert [f["runtime_argmax_agreement"] for f in summary["folds"]] == [1.0, 1.0]
    pred = tmp_path / "pred"
    nnunet.run("nnUNetv2_predict_from_modelfolder", "-i", dataset2d / "imagesTs", "-o", pred, "-m", out, "-f", 0, 1,
               "-device", "cpu", "-npp", 1, "-nps", 1, "--disable_progress_bar")
    a, b = segmentations(structured_predictions), segmentations(pred)
    assert a.keys() == b.keys() and len(a) == 3
    # every voxel the export's logit bound decides is segmented alike (a near-tie may go either way: not compared)
    decided = decided_voxels(structured_predictions, MAX_RELATIVE_DIFFERENCE["fp32"])
    assert decided.keys() == a.keys()
    assert sum(int(d.sum()) for d in decided.values()) >= 0.99 * sum(d.size for d in decided.values())
    assert all(np.array_equal(a[k][decided[k].reshape(a[k].shape)], b[k][decided[k].reshape(a[k].shape)])
               for k in a)

    fake = tmp_path / "site"  # the runtime's package as if it were not installed
    (fake / runtime).mkdir(parents=True)
    (fake / runtime / "__init__.py").write_text("raise ImportError('not installed (test)')\n")
    missing = nnunet.run("nnUNetv2_predict_from_modelfolder", "-i", dataset2d / "imagesTs", "-o", tmp_path / "no",
                         "-m", out, "-f", 0, "-device", "cpu", "-npp", 1, "-nps", 1, check=False,
                         env={"PYTHONPATH": str(fake)})
    assert missing.returncode != 0 and 'pip install "nnunet-prune[deploy]"' in missing.stderr
    assert "Traceback" not in missing.stderr and not list((tmp_path / "no").glob("*.nii.gz"))


def test_slimming_prunes_the_sparsity_trained_fold(nnunet, dataset2d):
    sparse = nnunet.train(DATASET_2D, "2d", 0, "nnUNetTrainerSlimmingSparsity",
                          env={"NNUNET_PRUNE_SLIMMING": "lambda=0.001", "NNUNET_PRUNE_EPOCHS": "1"})
    history = read_json(sparse / "fold_0" / "pruning_history.json")["epochs"]
    assert history[-1]["slimming_gamma_l1"] > 0 and history[-1]["removed"] == {}
    folder = nnunet.train(DATASET_2D, "2d", 0, "nnUNetTrainerStructuredSlimming_oneshot",
                          env={"NNUNET_PRUNE_EPOCHS": "1", "NNUNET_PRUNE_STRUCTURED": "pruning_ratio=0.3"})
    log = next((folder / "fold_0").glob("training_log_*.txt")).read_text()
    assert f"Loaded dense weights from {sparse / 'fold_0' / 'checkpoint_final.pth'}" in log
    config = read_json(folder / "fold_0" / "pruning_config.json")
    final = read_json(folder / "fold_0" / "pruning_history.json")["epochs"][-1]["widths"]
    assert sum(final.values()) == math.ceil(0.7 * sum(config["initial_widths"].values()))
    assert all(final[g] == w for g, w in config["initial_widths"].items() if g.startswith("up"))  # no gamma


def test_bad_settings_and_dense_folds_stop_before_anything_is_written(nnunet, dataset2d, dense_model):
    cases = [  # (trainer, fold, plans, environment, words of the error)
        ("nnUNetTrainerStructuredL1_oneshot", 1, "nnUNetPlans",
         {"NNUNET_PRUNE_STRUCTURED": "pruning_ratio=0.9,max_ratio=0.6"}, "unreachable"),
        ("nnUNetTrainerStructuredL2_oneshot", 3, "nnUNetPlans", {},
         "no fold_3/checkpoint_final.pth in the folders of nnUNetTrainer, nnUNetTrainerBudget"),
        ("nnUNetTrainerStructuredL2_oneshot", 0, "nnUNetLUnetPlans", {"NNUNET_PRUNE_DENSE_MODEL": str(dense_model)},
         "was trained with plans 'nnUNetPlans'"),
    ]
    for trainer, fold, plans, env, words in cases:
        bad = nnunet.run("nnUNetv2_train", DATASET_2D, "2d", fold, "-tr", trainer, "-p", plans, "-device", "cpu",
                         env={"nnUNet_n_proc_DA": "0", **env}, check=False)
        assert bad.returncode != 0, trainer
        assert "ERROR:" in bad.stderr and words in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
        assert not (nnunet.model_folder(DATASET_2D, trainer, plans, "2d") / f"fold_{fold}").exists()
