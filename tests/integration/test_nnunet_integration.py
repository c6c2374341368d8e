"""Integration with the stock nnU-Net console scripts, run in subprocesses on tiny synthetic datasets.

Discovery (-tr / -pl found with no extra step), LUnet plans, training, --c resume, prediction,
find_best_configuration, export, the magnitude trainers and errors for unknown names.
"""

from __future__ import annotations

import csv
import re
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import DATASET_2D, DATASET_3D, read_json
from tests.helpers import restored_afterwards, segmentations

pytestmark = pytest.mark.slow


def test_doctor_sees_every_class(nnunet):
    out = nnunet.run(sys.executable, "-m", "nnunet_prune.cli.main", "doctor").stdout
    assert "All good" in out
    assert "ok  nnUNetTrainerSauron" in out and "ok  LUnetPlanner" in out
    assert "NO " not in out
    from nnunet_prune.nnunet.settings import all_variables

    assert all(var in out for var in all_variables())  # every variable the package reads
    assert re.search(r"ok  nnunetv2\.run\.run_training\.get_trainer_from_args +patched", out)


def test_lunet_plans_constant_width_and_shared_data(nnunet, dataset2d):
    pre = nnunet.preprocessed_dataset(DATASET_2D)
    default = read_json(pre / "nnUNetPlans.json")["configurations"]["2d"]
    lunet = read_json(pre / "nnUNetLUnetPlans.json")["configurations"]["2d"]
    feats = lunet["architecture"]["arch_kwargs"]["features_per_stage"]
    default_feats = default["architecture"]["arch_kwargs"]["features_per_stage"]
    assert feats == [32] * len(feats) and len(feats) == len(default_feats) and default_feats[-1] > 32
    # everything but the widths is the default plan's
    for key in ("patch_size", "batch_size", "spacing", "normalization_schemes"):
        assert lunet[key] == default[key]
    assert lunet["data_identifier"] == default["data_identifier"] == "nnUNetPlans_2d"
    assert "reusing it instead of preprocessing again" in nnunet.lunet_plan_output
    assert "LUnet parameter count vs. the default plan's network" in nnunet.lunet_plan_output
    assert not (pre / "nnUNetLUnetPlans_2d").exists()


def test_unknown_trainer_and_planner_list_what_exists(nnunet, dataset2d):
    bad = nnunet.run("nnUNetv2_train", DATASET_2D, "2d", 0, "-tr", "nnUNetTrainerSauronn", "-device", "cpu",
                     check=False)
    text = bad.stdout + bad.stderr
    assert bad.returncode != 0
    assert "There is no trainer (-tr) named 'nnUNetTrainerSauronn'" in text
    assert "Did you mean: nnUNetTrainerSauron" in text and "nnUNetTrainerBudget" in text
    assert "Traceback" not in text
    bad = nnunet.run("nnUNetv2_plan_experiment", "-d", DATASET_2D, "-pl", "LUnetPlaner", check=False)
    text = bad.stdout + bad.stderr
    assert bad.returncode != 0 and "There is no experiment planner (-pl) named 'LUnetPlaner'" in text
    assert "LUnetPlanner" in text and "ExperimentPlanner" in text and "Traceback" not in text


def test_train_predict_and_find_best_configuration(nnunet, dataset2d, dense_model):
    for fold in (0, 1):
        assert (dense_model / f"fold_{fold}" / "validation" / "summary.json").is_file()
    out = nnunet.base / "pred_dense"
    nnunet.run("nnUNetv2_predict", "-i", dataset2d / "imagesTs", "-o", out, "-d", DATASET_2D, "-c", "2d", "-tr",
               "nnUNetTrainerBudget", "-f", 0, 1, "-device", "cpu", "-npp", 0, "-nps", 0, "--disable_progress_bar")
    assert len(segmentations(out)) == 3
    best = nnunet.run("nnUNetv2_find_best_configuration", DATASET_2D, "-c", "2d", "-tr", "nnUNetTrainerBudget",
                      "-f", 0, 1)
    assert "nnUNetTrainerBudget" in best.stdout
    assert (nnunet.results / dense_model.parent.name / "inference_information.json").is_file()


def test_report_times_stock_prediction_end_to_end_per_runtime(nnunet, dataset2d, dense_model):
    """`report --predict`: stock nnUNetv2_predict_from_modelfolder through PyTorch and through ONNX Runtime
    (exported on the fly to a temporary folder, gone afterwards), timed, with the same segmentations."""
    pytest.importorskip("onnxruntime")
    out = nnunet.base / "report_e2e"
    proc = nnunet.run(sys.executable, "-m", "nnunet_prune.cli.main", "report", dense_model, "-f", 0, "-o", out,
                      "--device", "cpu", "--no-compile", "--repeats", 1, "--warmup", 0, "--threads", 1,
                      "--runtimes", "onnxruntime", "--predict", dataset2d / "imagesTs", "--disable-tta")
    assert "onnxruntime: " in proc.stdout and "0 voxels differ from PyTorch" in proc.stdout
    rows = {r["runtime"]: r for r in csv.DictReader(open(out / "end_to_end.csv"))}
    assert set(rows) == {"pytorch", "onnxruntime"}
    assert all(float(r["seconds"]) > 0 and r["images"] == "3" and r["tta"] == "False" for r in rows.values())
    assert float(rows["onnxruntime"]["voxels_differing"]) == 0 and float(rows["pytorch"]["peak_rss_mb"]) > 50
    md = (out / "report.md").read_text()
    assert "## End to end: nnUNetv2_predict" in md and "(fastest)" in md and "test-time mirroring off" in md
    assert not list(Path(tempfile.gettempdir()).glob("nnunet_prune_e2e_*"))


def test_lunet_trains_with_the_lunet_plans(nnunet, dataset2d):
    folder = nnunet.train(DATASET_2D, "2d", 0, "nnUNetTrainerBudget", plans="nnUNetLUnetPlans")
    ckpt = torch.load(folder / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    widths = {v.shape[0] for k, v in ckpt["network_weights"].items()
              if k.endswith(".conv.weight") and "seg_layers" not in k}
    assert widths == {32}


def test_sauron_prunes_during_training_and_predicts(nnunet, dataset2d, sauron_model):
    fold = sauron_model / "fold_0"
    history = read_json(fold / "pruning_history.json")["epochs"]
    config = read_json(fold / "pruning_config.json")
    assert config["method"]["tau_init"] == 0.6 and config["method"]["lambda"] == 0.5
    assert [r["epoch"] for r in history] == [0, 1, 2]
    removed = sum(sum(r["removed"].values()) for r in history)
    assert removed > 0
    assert history[-1]["num_parameters"] < config["initial_parameters"]
    assert history[-1]["macs"] < config["initial_macs_per_patch"]
    assert all(np.isfinite(r["delta_opt"]) for r in history)
    for png in ("progress.png", "progress_pruning.png", "pruning_widths.png"):
        assert (fold / png).is_file()
    ckpt = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["trainer_name"] == "nnUNetTrainerSauron"
    assert (fold / "validation" / "summary.json").is_file()
    # stock prediction builds one network from the plans and loads the pruned weights into it
    out = nnunet.base / "pred_sauron"
    nnunet.run("nnUNetv2_predict", "-i", dataset2d / "imagesTs", "-o", out, "-d", DATASET_2D, "-c", "2d", "-tr",
               "nnUNetTrainerSauron", "-f", 0, "-device", "cpu", "-npp", 0, "-nps", 0, "--disable_progress_bar")
    assert len(segmentations(out)) == 3


def test_sauron_resume_restores_widths_thresholds_and_optimizer(nnunet, dataset2d, sauron_model):
    fold = sauron_model / "fold_0"
    before = read_json(fold / "pruning_history.json")["epochs"][-1]
    # keep the 3-epoch model for the other tests
    with restored_afterwards(sauron_model, nnunet.base / "sauron_backup"):
        # other method settings than the fold was started with: refused before any work, naming the setting
        other = "tau_init=0.0,tau_max=0.9,kappa=2,rho=1,stat_batches=2"
        refused = nnunet.run("nnUNetv2_train", DATASET_2D, "2d", 0, "-tr", "nnUNetTrainerSauron", "-device", "cpu",
                             "--c", env={"nnUNet_n_proc_DA": "0", "NNUNET_PRUNE_EPOCHS": "4",
                                         "NNUNET_PRUNE_SAURON": other}, check=False)
        assert refused.returncode != 0 and "Traceback" not in refused.stderr, refused.stderr
        assert "tau_init: 0.6 at the start, 0.0 now" in refused.stderr
        assert read_json(fold / "pruning_history.json")["epochs"][-1] == before
        assert read_json(fold / "pruning_config.json")["resumes"] == []
        nnunet.run("nnUNetv2_train", DATASET_2D, "2d", 0, "-tr", "nnUNetTrainerSauron", "-device", "cpu", "--c",
                   env={"nnUNet_n_proc_DA": "0", "NNUNET_PRUNE_EPOCHS": "4",
                        "NNUNET_PRUNE_SAURON": "tau_init=0.6,tau_max=0.9,kappa=2,rho=1,stat_batches=2"})
        history = read_json(fold / "pruning_history.json")["epochs"]
        assert [r["epoch"] for r in history] == [0, 1, 2, 3]
        # pruning_config.json keeps what the fold was started with; the resume is appended with its budget
        config = read_json(fold / "pruning_config.json")
        assert config["budget"]["num_epochs"] == 3 and config["method"]["tau_init"] == 0.6
        resume, = config["resumes"]
        assert resume["epoch"] == 3 and resume["budget"]["num_epochs"] == 4 and resume["method"] == config["method"]
        assert history[2] == before  # restored from the checkpoint's logger, not recomputed
        # the thresholds come from the checkpoint (they only rise), not from tau_init
        assert all(a >= b for a, b in zip(history[3]["sauron_tau"], before["sauron_tau"]))
        assert all(history[3]["widths"][g] <= before["widths"][g] for g in before["widths"])
        ckpt = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
        conv = ckpt["network_weights"]["encoder.stages.0.0.convs.0.conv.weight"]
        assert conv.shape[0] == history[3]["widths"]["enc0.conv0"]
        momentum = ckpt["optimizer_state"]["state"][0]["momentum_buffer"]
        assert momentum.shape == conv.shape


def test_export_gives_identical_stock_predictions_and_smaller_files(nnunet, dataset2d, sauron_model):
    out = nnunet.base / "exported_sauron"
    nnunet.run(sys.executable, "-m", "nnunet_prune.cli.main", "export", sauron_model, "-o", out)
    src, dst = sauron_model / "fold_0" / "checkpoint_final.pth", out / "fold_0" / "checkpoint_final.pth"
    assert dst.stat().st_size < src.stat().st_size / 1.8  # weights only, each tensor stored once
    assert (out / "fold_0" / "validation" / "summary.json").is_file()
    assert read_json(out / "plans.json")["configurations"]["2d"]["architecture"]["network_class_name"] == \
        "nnunet_prune.networks.AdaptivePlainConvUNet"
    summary = read_json(out / "export_summary.json")
    assert summary["folds"][0]["max_abs_difference"] == 0.0
    preds = {}
    for name, folder in (("source", sauron_model), ("export", out)):
        preds[name] = nnunet.base / f"pred_modelfolder_{name}"
        nnunet.run("nnUNetv2_predict_from_modelfolder", "-i", dataset2d / "imagesTs", "-o", preds[name], "-m",
                   folder, "-f", 0, "-device", "cpu", "-npp", 1, "-nps", 1, "--disable_progress_bar")
    a, b = segmentations(preds["source"]), segmentations(preds["export"])
    assert a.keys() == b.keys() and len(a) == 3
    assert all(np.array_equal(a[k], b[k]) for k in a)
    # never overwrite without being asked, never write into the source
    again = nnunet.run(sys.executable, "-m", "nnunet_prune.cli.main", "export", sauron_model, "-o", out, check=False)
    assert again.returncode == 2 and "--overwrite" in again.stderr
    inside = nnunet.run(sys.executable, "-m", "nnunet_prune.cli.main", "export", sauron_model, "-o",
                        sauron_model / "x", check=False)
    assert inside.returncode == 2 and "must not be the source" in inside.stderr
    nnunet.run(sys.executable, "-m", "nnunet_prune.cli.main", "export", sauron_model, "-o", out, "--overwrite")


def test_magnitude_trainer_validates_pruned_dense_fold(nnunet, dataset2d, dense_model):
    folder = nnunet.train(DATASET_2D, "2d", 0, "nnUNetTrainerMagnitude_tau005", "--npz",
                          env={"NNUNET_PRUNE_DENSE_MODEL": str(dense_model)})
    fold = folder / "fold_0"
    stats = read_json(fold / "magnitude_pruning.json")
    assert stats["tau"] == 0.005 and 0 < stats["sparsity_of_nonzero_weights"] < 1
    assert (fold / "validation" / "summary.json").is_file()
    ckpt = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    dense = torch.load(dense_model / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    key = "encoder.stages.0.0.convs.1.conv.weight"
    w, d = ckpt["network_weights"][key], dense["network_weights"][key]
    assert torch.equal(w, torch.where(d.abs() <= 0.005, torch.zeros_like(d), d))
    config = read_json(fold / "pruning_config.json")
    assert config["method"] == {"tau": 0.005, "prune_bias": False, "per_layer_normalised": False}
    assert config["start"]["from"] == "dense" and config["start"]["finetune_epochs"] == 0
    # fine-tuning (the base trainer's, for every method): the zero pattern is held through the optimizer steps
    ft = nnunet.train(DATASET_2D, "2d", 0, "nnUNetTrainerMagnitude_tau005_ft",
                      env={"NNUNET_PRUNE_DENSE_MODEL": str(dense_model), "NNUNET_PRUNE_EPOCHS": "1"}) / "fold_0"
    tuned = torch.load(ft / "checkpoint_final.pth", map_location="cpu", weights_only=False)["network_weights"][key]
    assert torch.equal(tuned == 0, w == 0) and not torch.equal(tuned, w)  # trained, same zeros
    start = read_json(ft / "pruning_config.json")["start"]
    assert start["finetune_epochs"] == 1 and start["initial_lr"] == pytest.approx(0.001)
    assert len(read_json(ft / "pruning_history.json")["epochs"]) == 1
    # a missing dense model is a clear error, not a traceback from inside nnU-Net
    bad = nnunet.run("nnUNetv2_train", DATASET_2D, "2d", 1, "-tr", "nnUNetTrainerMagnitude_tau010", "-device",
                     "cpu", env={"NNUNET_PRUNE_DENSE_MODEL": str(nnunet.base / "nowhere")}, check=False)
    assert bad.returncode != 0 and "NNUNET_PRUNE_DENSE_MODEL" in bad.stderr and "Traceback" not in bad.stderr


def test_3d_lunet_and_resenc_plans(nnunet):
    nnunet.run(sys.executable, "-m", "nnunet_prune.cli.main", "dataset", "synthetic", "-d", DATASET_3D, "--dim",
               3, "--cases", 4, "--test-cases", 1, "--size", 32)
    nnunet.run("nnUNetv2_plan_and_preprocess", "-d", DATASET_3D, "-c", "3d_fullres", "-pl", "LUnetResEncPlanner",
               "-np", 2, "-npfp", 2)
    out = nnunet.run("nnUNetv2_plan_experiment", "-d", DATASET_3D, "-pl", "LUnetPlanner_16").stdout
    pre = nnunet.preprocessed_dataset(DATASET_3D)
    resenc = read_json(pre / "nnUNetLUnetResEncPlans.json")["configurations"]["3d_fullres"]["architecture"]
    assert resenc["network_class_name"].endswith("ResidualEncoderUNet")
    assert set(resenc["arch_kwargs"]["features_per_stage"]) == {32}
    lunet16 = read_json(pre / "nnUNetLUnetPlans_16.json")["configurations"]["3d_fullres"]["architecture"]
    assert set(lunet16["arch_kwargs"]["features_per_stage"]) == {16}
    assert "3d_fullres" in out and "fewer" in out


def test_bad_settings_stop_before_the_fold_folder_exists(nnunet, dataset2d, dense_model, tmp_path):
    """A rejected setting or an unusable dense fold stops nnUNetv2_train with one ERROR line and leaves no fold
    folder behind (an empty fold_k would break nnUNetv2_predict without -f)."""
    import shutil

    damaged = tmp_path / "damaged_dense"
    shutil.copytree(dense_model, damaged)
    file = damaged / "fold_1" / "checkpoint_final.pth"
    ckpt = torch.load(file, map_location="cpu", weights_only=False)
    ckpt["network_weights"]["decoder.extra.weight"] = torch.zeros(3)
    torch.save(ckpt, file)
    # one case per kind of check (the settings' own rules are unit tests: test_magnitude_method, test_safe_outputs)
    cases = [  # (trainer, fold that does not exist yet, environment, words of the error)
        ("nnUNetTrainerSauron", 1, {"NNUNET_PRUNE_SAURON": "kappa=-1"}, "kappa must be a positive integer"),
        ("nnUNetTrainerSauron", 1, {"NNUNET_PRUNE_ITERS_PER_EPOCH": "0"}, "NNUNET_PRUNE_ITERS_PER_EPOCH"),
        ("nnUNetTrainerMagnitude", 1, {"NNUNET_PRUNE_DENSE_MODEL": str(dense_model)}, "tau is required"),
        ("nnUNetTrainerMagnitude_tau005", 1, {"NNUNET_PRUNE_MAGNITUDE_TAU": "0.01"},
         "NNUNET_PRUNE_MAGNITUDE='tau=<value>'"),
        ("nnUNetTrainerMagnitude_tau020", 1, {"NNUNET_PRUNE_DENSE_MODEL": str(damaged)}, "decoder.extra.weight"),
        ("nnUNetTrainerSTAMP_noDropout", 1, {"NNUNET_PRUNE_STAMP": "per_step=1.5"}, "per_step must be"),
    ]
    for trainer, fold, env, words in cases:
        assert not (nnunet.model_folder(DATASET_2D, trainer, "nnUNetPlans", "2d") / f"fold_{fold}").exists()
        bad = nnunet.run("nnUNetv2_train", DATASET_2D, "2d", fold, "-tr", trainer, "-device", "cpu",
                         env={"nnUNet_n_proc_DA": "0", **env}, check=False)
        assert bad.returncode != 0, trainer
        assert "ERROR:" in bad.stderr and words in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
        assert not (nnunet.model_folder(DATASET_2D, trainer, "nnUNetPlans", "2d") / f"fold_{fold}").exists(), \
            trainer
    # plans that were never planned: the planner to run, not a FileNotFoundError from inside nnU-Net
    bad = nnunet.run("nnUNetv2_train", DATASET_2D, "2d", 0, "-tr", "nnUNetTrainerSauron", "-p", "nnUNetLUnetPlans_8",
                     "-device", "cpu", check=False)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr, bad.stderr
    assert "nnUNetv2_plan_and_preprocess -d 601 -pl LUnetPlanner_8" in bad.stderr
    assert "nnUNetPlans" in bad.stderr and "nnUNetLUnetPlans" in bad.stderr  # what exists


def test_damaged_own_checkpoint_is_one_clear_error_on_val_and_continue(nnunet, dataset2d, sauron_model):
    import shutil

    fold = sauron_model / "fold_4"
    shutil.copytree(sauron_model / "fold_0", fold)
    try:
        file = fold / "checkpoint_final.pth"
        file.write_bytes(file.read_bytes()[:2000])
        for flag in ("--val", "--c"):
            bad = nnunet.run("nnUNetv2_train", DATASET_2D, "2d", 4, "-tr", "nnUNetTrainerSauron", "-device", "cpu",
                             flag, env={"nnUNet_n_proc_DA": "0"}, check=False)
            assert bad.returncode != 0 and "ERROR:" in bad.stderr and "Cannot read" in bad.stderr, bad.stderr
            assert "Traceback" not in bad.stderr
    finally:
        shutil.rmtree(fold)


def test_sauron_says_when_the_budget_is_too_short_for_its_schedule(nnunet, dataset2d):
    """The paper's settings on a 2-epoch budget: said at the start (naming the setting), and again at the end."""
    run = nnunet.run("nnUNetv2_train", DATASET_2D, "2d", 2, "-tr", "nnUNetTrainerSauron_lambda0", "-device", "cpu",
                     env={"nnUNet_n_proc_DA": "0", "NNUNET_PRUNE_ITERS_PER_EPOCH": "2", "NNUNET_PRUNE_VAL_ITERS": "1"})
    assert "WARNING: Sauron cannot prune anything in 2 epoch(s)" in run.stdout
    assert "tau_init=0.25,rho=2,kappa=3" in run.stdout
    assert "WARNING: Sauron removed no channel in 2 epochs" in run.stdout
