"""Distillation through the stock console scripts: a distilled LUnet student (``nnUNetTrainerDistill`` on LUnet
plans) and a distilled STAMP student learn from the dense model's two folds, resume with ``--c`` (the teacher
rebuilt, nothing of it saved), predict, export and report; a teacher that does not fit is refused before the fold
folder exists."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
import torch

from tests.conftest import DATASET_2D, read_json
from tests.helpers import restored_afterwards

pytestmark = pytest.mark.slow

FORCED = "per_step=0.2,start_fraction=0,stop_fraction=1,max_dice_drop=0"


@pytest.fixture(scope="module")
def lunet_student(nnunet, dataset2d, dense_model):
    """Fold 0 of nnUNetTrainerDistill on the LUnet plans; the teacher found by the search (the dense model of the
    stock plans, folds 0 and 1)."""
    return nnunet.train(DATASET_2D, "2d", 0, "nnUNetTrainerDistill", plans="nnUNetLUnetPlans")


@pytest.fixture(scope="module")
def stamp_student(nnunet, dataset2d, dense_model):
    """Fold 0 of nnUNetTrainerSTAMP_distill, 3 epochs, pruning after epochs 0 and 1, teacher fold 1 only."""
    return nnunet.train(DATASET_2D, "2d", 0, "nnUNetTrainerSTAMP_distill",
                        env={"NNUNET_PRUNE_EPOCHS": "3", "NNUNET_PRUNE_STAMP": FORCED,
                             "NNUNET_PRUNE_DISTILL": "weight=0.5,folds=1", "NNUNET_PRUNE_TEACHER": str(dense_model)})


def _check_fold(fold, dense_model, folds, epochs, weight):
    """pruning_config.json, the log, the logger and the checkpoint of a distilled fold."""
    config = read_json(fold / "pruning_config.json")["distillation"]
    assert config["enabled"] and config["weight"] == weight and config["temperature"] == 3.0
    assert config["teacher"]["folder"] == str(dense_model) and config["teacher"]["folds"] == folds
    assert config["loss"].startswith("softmax KL")
    log = sorted(fold.glob("training_log_*.txt"))[-1].read_text()
    assert f"nnunet-prune distillation: teacher {dense_model}, folds {', '.join(map(str, folds))}" in log
    assert "distillation KL" in log
    ckpt = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    kl = ckpt["logging"]["distill_kl"]
    assert len(kl) == epochs and all(v > 0 for v in kl)  # student != teacher: a positive divergence every epoch
    # nothing of the teacher in the checkpoint: the weights are the student's, the optimizer holds only them
    from nnunet_prune.nnunet.modelfolder import ModelFolder

    student = ModelFolder.open(fold.parent, [0]).load_network(0, deep_supervision=True)
    assert not any(k.startswith("teacher") for k in ckpt["network_weights"])
    assert set(ckpt["network_weights"]) == set(student.state_dict())
    state = ckpt["optimizer_state"]
    assert sum(len(g["params"]) for g in state["param_groups"]) == len(list(student.parameters()))
    momentum = sum(s["momentum_buffer"].numel() for s in state["state"].values() if "momentum_buffer" in s)
    # (the lowest deep-supervision head has loss weight 0 in nnU-Net: no gradient, no momentum buffer)
    assert 0 < momentum <= sum(p.numel() for p in student.parameters())
    teacher = torch.load(dense_model / "fold_1" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert momentum != sum(v.numel() for v in teacher["network_weights"].values())
    return ckpt


def test_distilled_lunet_trains_resumes_and_reports(nnunet, dense_model, lunet_student):
    fold = lunet_student / "fold_0"
    _check_fold(fold, dense_model, [0, 1], 2, 0.3)
    assert (fold / "progress_pruning.png").is_file() and (fold / "validation" / "summary.json").is_file()
    with restored_afterwards(lunet_student, nnunet.base / "lunet_student_backup"):
        nnunet.run("nnUNetv2_train", DATASET_2D, "2d", 0, "-tr", "nnUNetTrainerDistill", "-p", "nnUNetLUnetPlans",
                   "-device", "cpu", "--c", env={"nnUNet_n_proc_DA": "0", "NNUNET_PRUNE_EPOCHS": "3"})
        _check_fold(fold, dense_model, [0, 1], 3, 0.3)
        resumed = read_json(fold / "pruning_config.json")["resumes"]
        assert resumed[0]["epoch"] == 2 and resumed[0]["distillation"]["teacher"]["folds"] == [0, 1]
        # other settings on --c: refused, the fold unchanged
        before = (fold / "checkpoint_final.pth").stat().st_mtime_ns
        proc = nnunet.run("nnUNetv2_train", DATASET_2D, "2d", 0, "-tr", "nnUNetTrainerDistill", "-p",
                          "nnUNetLUnetPlans", "-device", "cpu", "--c", check=False,
                          env={"nnUNet_n_proc_DA": "0", "NNUNET_PRUNE_EPOCHS": "4", "NNUNET_PRUNE_DISTILL": "weight=1"})
        assert proc.returncode != 0 and "other distillation settings (weight: 0.3 at the start, 1.0 now)" in \
            proc.stdout + proc.stderr
        assert (fold / "checkpoint_final.pth").stat().st_mtime_ns == before
        # another teacher on --c: refused, naming the one the fold was started with
        other = nnunet.base / "another_teacher"
        shutil.copytree(dense_model, other, ignore=shutil.ignore_patterns("validation", "*.png", "*.txt"))
        proc = nnunet.run("nnUNetv2_train", DATASET_2D, "2d", 0, "-tr", "nnUNetTrainerDistill", "-p",
                          "nnUNetLUnetPlans", "-device", "cpu", "--c", check=False,
                          env={"nnUNet_n_proc_DA": "0", "NNUNET_PRUNE_EPOCHS": "4", "NNUNET_PRUNE_TEACHER": str(other)})
        assert proc.returncode != 0 and f"was started with the teacher {dense_model}" in proc.stdout + proc.stderr
        assert (fold / "checkpoint_final.pth").stat().st_mtime_ns == before
    out = nnunet.base / "distill_report"
    nnunet.run(sys.executable, "-m", "nnunet_prune.cli.main", "report", lunet_student, "-f", 0, "-o", out,
               "--runtimes", "none")
    assert "nnUNetTrainerDistill" in (out / "report.md").read_text()


def test_distilled_stamp_prunes_resumes_predicts_and_exports(nnunet, dataset2d, dense_model, stamp_student):
    fold = stamp_student / "fold_0"
    _check_fold(fold, dense_model, [1], 3, 0.5)
    history = read_json(fold / "pruning_history.json")["epochs"]
    assert sum(history[-1]["widths"].values()) < sum(read_json(fold / "pruning_config.json")["initial_widths"]
                                                     .values())
    env = {"nnUNet_n_proc_DA": "0", "NNUNET_PRUNE_EPOCHS": "4", "NNUNET_PRUNE_STAMP": FORCED,
           "NNUNET_PRUNE_DISTILL": "weight=0.5,folds=1", "NNUNET_PRUNE_TEACHER": str(dense_model)}
    with restored_afterwards(stamp_student, nnunet.base / "stamp_student_backup"):
        nnunet.run("nnUNetv2_train", DATASET_2D, "2d", 0, "-tr", "nnUNetTrainerSTAMP_distill", "-device", "cpu",
                   "--c", env=env)
        _check_fold(fold, dense_model, [1], 4, 0.5)
    out = nnunet.base / "stamp_student_export"
    nnunet.run(sys.executable, "-m", "nnunet_prune.cli.main", "export", stamp_student, "-o", out)
    preds = nnunet.base / "stamp_student_preds"
    nnunet.run("nnUNetv2_predict_from_modelfolder", "-i", dataset2d / "imagesTs", "-o", preds, "-m", out, "-f", 0,
               "-device", "cpu")
    assert len(list(preds.glob("*.nii.gz"))) == len(list((dataset2d / "imagesTs").glob("*_0000.nii.gz")))


def test_a_teacher_that_does_not_fit_is_refused_before_the_fold_folder(nnunet, dataset2d, dense_model, tmp_path):
    wrong = tmp_path / "wrong_teacher"
    shutil.copytree(dense_model, wrong, ignore=shutil.ignore_patterns("validation", "*.png", "*.txt"))
    dataset = read_json(wrong / "dataset.json")
    dataset["labels"]["extra"] = max(v for v in dataset["labels"].values() if isinstance(v, int)) + 1
    (wrong / "dataset.json").write_text(json.dumps(dataset))
    for trainer, extra in (("nnUNetTrainerDistill", {"NNUNET_PRUNE_TEACHER": str(wrong)}),
                           ("nnUNetTrainerBudget", {"NNUNET_PRUNE_TEACHER": str(wrong), "NNUNET_PRUNE_DISTILL": "1"}),
                           ("nnUNetTrainerSTAMP_distill", {"NNUNET_PRUNE_TEACHER": str(tmp_path / "absent")})):
        proc = nnunet.run("nnUNetv2_train", DATASET_2D, "2d", 3, "-tr", trainer, "-device", "cpu", check=False,
                          env={"nnUNet_n_proc_DA": "0", **extra})
        assert proc.returncode != 0 and "ERROR:" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        assert ("does not fit the student: labels" in proc.stderr) or ("does not exist" in proc.stderr), proc.stderr
        results = nnunet.results / dataset2d.name
        assert not (results / f"{trainer}__nnUNetPlans__2d" / "fold_3").exists()
