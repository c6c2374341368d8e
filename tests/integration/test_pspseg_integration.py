"""PSP-Seg through the stock nnU-Net commands on the tiny 2D dataset: planning, a forced pruning schedule, --c mid-mask
and after deletion, stock prediction of folds with different branches, export and report (CPU)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from tests.conftest import DATASET_2D, read_json
from tests.helpers import segmentations

pytestmark = pytest.mark.slow

PLANS = "nnUNetPSPSegPlans_S"
TRAINER = "nnUNetTrainerPSPSeg"
#: every epoch is a convergence, the FD loss is never "worse": mask after an epoch, delete after the next
FORCED = "patience=0,tolerance=1000,stop_fraction=1,calibration_patches=2"


@pytest.fixture(scope="module")
def psp_plans(nnunet, dataset2d):
    out = nnunet.run("nnUNetv2_plan_and_preprocess", "-d", DATASET_2D, "-c", "2d", "-pl", "PSPSegPlanner_S")
    return out.stdout


def branch_keys(checkpoint) -> set[str]:
    sd = torch.load(checkpoint, map_location="cpu", weights_only=False)["network_weights"]
    return {k.rsplit(".", 1)[0] for k in sd if k.endswith(".branch_weight")}


def masked_keys(checkpoint) -> set[str]:
    sd = torch.load(checkpoint, map_location="cpu", weights_only=False)["network_weights"]
    return {k.rsplit(".", 1)[0] for k, v in sd.items() if k.endswith(".active") and not bool(v)}


def test_plans_and_bad_pairings(nnunet, dataset2d, psp_plans):
    pre = nnunet.preprocessed_dataset(DATASET_2D)
    cfg = read_json(pre / f"{PLANS}.json")["configurations"]["2d"]
    default = read_json(pre / "nnUNetPlans.json")["configurations"]["2d"]
    arch = cfg["architecture"]
    assert arch["network_class_name"] == "nnunet_prune.networks.pspseg.PSPSegUNet"
    n = min(5, default["architecture"]["arch_kwargs"]["n_stages"])  # S: 5 stages where nnU-Net's plan has them
    assert arch["arch_kwargs"]["features_per_stage"] == [16, 32, 64, 128, 256][:n]
    assert len(arch["arch_kwargs"]["branch_kernels"][0]) == 4
    for key in ("patch_size", "batch_size", "spacing", "normalization_schemes", "data_identifier"):
        assert cfg[key] == default[key]
    assert "PSP-Seg params" in psp_plans and "reusing it instead of preprocessing again" in psp_plans
    # the wrong trainer for the plans, both ways: one ERROR line naming what to run, no fold folder
    for trainer, plans, words in ((TRAINER, "nnUNetPlans", "-pl PSPSegPlanner_S"),
                                  ("nnUNetTrainerSauron", PLANS, "-tr nnUNetTrainerPSPSeg")):
        bad = nnunet.run("nnUNetv2_train", DATASET_2D, "2d", 3, "-tr", trainer, "-p", plans, "-device", "cpu",
                         env={"nnUNet_n_proc_DA": "0"}, check=False)
        assert bad.returncode != 0 and words in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
        assert not list(nnunet.results.glob(f"*/{trainer}__{plans}__2d/fold_3"))


def test_forced_pruning_resumes_mid_mask_and_after_deletion_then_predicts_exports_and_reports(
        nnunet, dataset2d, psp_plans):
    stages = read_json(nnunet.preprocessed_dataset(DATASET_2D) / f"{PLANS}.json")["configurations"]["2d"][
        "architecture"]["arch_kwargs"]["n_stages"]
    N_MODULES = 2 * stages - 1  # one PRM per encoder stage and per decoder stage  # noqa: N806
    env = {"NNUNET_PRUNE_ITERS_PER_EPOCH": "2", "NNUNET_PRUNE_VAL_ITERS": "1", "NNUNET_PRUNE_PSPSEG": FORCED}
    # fold 0, 2 epochs: masked after epoch 0, the last epoch allows no surgery -> ends with the branches masked
    model = nnunet.train(DATASET_2D, "2d", 0, TRAINER, plans=PLANS, env={**env, "NNUNET_PRUNE_EPOCHS": "2"})
    fold = model / "fold_0"
    final = fold / "checkpoint_final.pth"
    masked = masked_keys(final)
    assert len(masked) == N_MODULES and len(branch_keys(final)) == 4 * N_MODULES
    config = read_json(fold / "pruning_config.json")
    assert config["method"]["patience"] == 0 and config["method"]["k"] == 1
    assert (fold / "branch_map.png").is_file() and (fold / "validation" / "summary.json").is_file()

    # --c mid-mask: the masks come back from the checkpoint; after epoch 2 they are deleted and the same event masks
    # the next branch of every module
    nnunet.train(DATASET_2D, "2d", 0, TRAINER, "--c", plans=PLANS, env={**env, "NNUNET_PRUNE_EPOCHS": "4"})
    history = read_json(fold / "pruning_history.json")["epochs"]
    assert [r["epoch"] for r in history] == [0, 1, 2, 3]
    assert [e["kind"] for e in history[0]["pspseg_events"]] == ["mask"]
    delete, mask = history[2]["pspseg_events"]
    assert delete["kind"] == "delete" and set(delete["branches"]) == masked and mask["kind"] == "mask"
    assert history[2]["deleted_branches"] == N_MODULES and history[3]["num_parameters"] < history[0]["num_parameters"]
    kept, masked2 = branch_keys(final), masked_keys(final)
    assert len(kept) == 3 * N_MODULES and not (kept & masked) and masked2 == set(mask["branches"]) <= kept

    # --c after the deletion: deleted branches stay deleted, the next event deletes the second masks
    nnunet.train(DATASET_2D, "2d", 0, TRAINER, "--c", plans=PLANS, env={**env, "NNUNET_PRUNE_EPOCHS": "6"})
    history = read_json(fold / "pruning_history.json")["epochs"]
    delete, mask = history[4]["pspseg_events"]
    assert set(delete["branches"]) == masked2 and set(mask["branches"]) <= kept - masked2
    assert len(branch_keys(final)) == 2 * N_MODULES and masked_keys(final) == set(mask["branches"])
    assert len(read_json(fold / "pruning_config.json")["resumes"]) == 2

    # fold 1: one epoch, nothing pruned -> the two folds hold different branches
    nnunet.train(DATASET_2D, "2d", 1, TRAINER, plans=PLANS, env={**env, "NNUNET_PRUNE_EPOCHS": "1"})
    assert len(branch_keys(model / "fold_1" / "checkpoint_final.pth")) == 4 * N_MODULES

    # stock prediction of the ensemble; the export deletes the masked branches and predicts the same
    images = dataset2d / "imagesTs"
    pred = nnunet.base / "pred_pspseg"
    nnunet.run("nnUNetv2_predict", "-i", images, "-o", pred, "-d", DATASET_2D, "-c", "2d", "-tr", TRAINER, "-p",
               PLANS, "-f", 0, 1, "-device", "cpu", "-npp", 0, "-nps", 0, "--disable_progress_bar")
    exported = nnunet.base / "pspseg_export"
    out = nnunet.run(sys.executable, "-m", "nnunet_prune.cli.main", "export", model, "-o", exported, "-f", 0, 1)
    assert f"{N_MODULES} masked branches deleted" in out.stdout
    summary = read_json(exported / "export_summary.json")
    assert summary["folds"][0]["max_abs_difference"] <= 1e-5
    assert summary["folds"][0]["parameters_after"] < summary["folds"][0]["parameters_before"]
    assert len(branch_keys(exported / "fold_0" / "checkpoint_final.pth")) == N_MODULES
    pred_export = nnunet.base / "pred_pspseg_export"
    nnunet.run("nnUNetv2_predict_from_modelfolder", "-i", images, "-o", pred_export, "-m", exported, "-f", 1, 0,
               "-device", "cpu", "-npp", 1, "-nps", 1, "--disable_progress_bar")
    a, b = segmentations(pred), segmentations(pred_export)
    assert a.keys() == b.keys() and len(a) == 3
    for k in a:
        assert np.mean(a[k] != b[k]) <= 1e-3, k  # identical up to rare float-rounding ties

    # the efficiency report measures the pruned folds
    rep = nnunet.base / "pspseg_report"
    nnunet.run(sys.executable, "-m", "nnunet_prune.cli.main", "report", model, "-f", 0, 1, "-o", rep,
               "--no-compile", "--repeats", 1, "--warmup", 0, "--runtimes", "none")
    assert (rep / "report.csv").is_file()
