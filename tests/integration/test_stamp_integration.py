"""STAMP through the stock console scripts: a forced short schedule prunes and keeps training, ``--c`` resumes
widths, dropout and schedule position, and ``plans-from-model`` gives a plans file whose network the stock trainer
and predictor build at exactly the fold's widths."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from tests.conftest import DATASET_2D, read_json
from tests.helpers import logged_once, restored_afterwards

pytestmark = pytest.mark.slow

FORCED = "per_step=0.2,start_fraction=0,stop_fraction=1,max_dice_drop=0"


@pytest.fixture(scope="module")
def stamp_model(nnunet, dataset2d):
    """Fold 0 of nnUNetTrainerSTAMP, 3 epochs, a step of 20 % of the remaining channels after epochs 0 and 1."""
    return nnunet.train(DATASET_2D, "2d", 0, "nnUNetTrainerSTAMP",
                        env={"NNUNET_PRUNE_EPOCHS": "3", "NNUNET_PRUNE_STAMP": FORCED})


def test_forced_schedule_prunes_then_trains_the_final_architecture(stamp_model):
    fold = stamp_model / "fold_0"
    config = read_json(fold / "pruning_config.json")
    assert config["method_class"] == "StampMethod"
    assert config["method"]["per_step"] == 0.2 and config["method"]["p_base"] == 0.05  # all settings recorded
    history = read_json(fold / "pruning_history.json")["epochs"]
    initial = sum(config["initial_widths"].values())
    total = [sum(r["widths"].values()) for r in history]
    assert total[0] == initial - round(0.2 * initial)  # step 1: 20 % of the channels
    assert total[1] == total[0] - round(0.2 * total[0])  # step 2: 20 % of what remained
    assert total[2] == total[1] and history[2]["removed"] == {}  # the last epoch trains the final network
    assert [r["stamp_step"] for r in history] == [1, 2, 2]
    # the channels removed and their scores are recorded; dropout follows the ranking, off until the first step
    scores = history[0]["stamp_removed_scores"]
    assert sum(map(len, scores.values())) == initial - total[0]
    assert history[0]["stamp_dropout_mean"] == 0 and max(history[0]["stamp_dropout"].values()) == pytest.approx(0.05)
    assert history[1]["stamp_dropout_mean"] > 0
    # no targeted dropout once the schedule is over: the final architecture trains as it will predict
    assert history[1]["stamp_dropout"] == {} and history[2]["stamp_dropout_mean"] == 0
    assert history[1]["stamp_stop_reason"] == "the schedule's last step is done"
    for png in ("pruning_widths.png", "progress_pruning.png"):
        assert (fold / png).is_file()
    ckpt = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["network_weights"]["encoder.stages.0.0.convs.0.conv.weight"].shape[0] == \
        history[-1]["widths"]["enc0.conv0"]
    assert (fold / "validation" / "summary.json").is_file()
    log = next(fold.glob("training_log_*.txt")).read_text()
    assert "STAMP schedule for 3 epochs: 2 step(s), after epochs (0-based) 0, 1;" in log and "STAMP step 2" in log
    assert len(logged_once(log, ("STAMP step", "STAMP schedule"))) == 3  # each line once (the driver asks twice)
    assert "checkpoint_best.pth not updated" in log  # epochs 0 and 1 were cut after their validation


def test_resume_mid_schedule_restores_widths_dropout_and_position(nnunet, stamp_model):
    fold = stamp_model / "fold_0"
    before = read_json(fold / "pruning_history.json")["epochs"]
    with restored_afterwards(stamp_model, nnunet.base / "stamp_backup"):
        nnunet.run("nnUNetv2_train", DATASET_2D, "2d", 0, "-tr", "nnUNetTrainerSTAMP", "-device", "cpu", "--c",
                   env={"nnUNet_n_proc_DA": "0", "NNUNET_PRUNE_EPOCHS": "6", "NNUNET_PRUNE_STAMP": FORCED})
        history = read_json(fold / "pruning_history.json")["epochs"]
        assert [r["epoch"] for r in history] == [0, 1, 2, 3, 4, 5] and history[2] == before[2]
        # the longer schedule has steps after epochs 0-4: epoch 3 trained with the state saved after epoch 2 (no
        # dropout: that schedule was over), then took the third step and set dropout for epoch 4, the fourth and last
        assert history[3]["stamp_dropout_mean"] == 0 and history[4]["stamp_dropout_mean"] > 0
        assert [history[e]["stamp_step"] for e in (3, 4)] == [3, 4]
        widths2 = sum(before[2]["widths"].values())
        widths3 = sum(history[3]["widths"].values())
        assert widths3 == widths2 - round(0.2 * widths2)
        assert sum(history[4]["widths"].values()) == widths3 - round(0.2 * widths3)
        log = sorted(fold.glob("training_log_*.txt"))[-1].read_text()
        assert "STAMP schedule for 6 epochs: 5 step(s), after epochs (0-based) 0, 1, 2, 3, 4, 2 of them still ahead" \
            in log
        assert read_json(fold / "pruning_config.json")["resumes"][0]["epoch"] == 3


def test_variant_settings_are_fixed_and_recorded():
    from nnunet_prune import NnUNetPruneError
    from nnunet_prune.methods.stamp import StampWidestBlockMethod
    from nnunet_prune.nnunet.trainers import nnUNetTrainerSTAMP_noDropout, nnUNetTrainerSTAMP_widestBlock

    cls = nnUNetTrainerSTAMP_noDropout
    assert cls.method_class.settings_class.resolve(fixed=cls.method_defaults).p_base == 0
    with pytest.raises(NnUNetPruneError, match="fixes"):
        cls.method_class.settings_class.resolve(environ={"NNUNET_PRUNE_STAMP": "p_base=0.1"},
                                                fixed=cls.method_defaults)
    assert nnUNetTrainerSTAMP_widestBlock.method_class is StampWidestBlockMethod


def test_plans_from_model_retrains_the_architecture_with_stock_scripts(nnunet, dataset2d, stamp_model, monkeypatch,
                                                                      capsys):
    cli = (sys.executable, "-m", "nnunet_prune.cli.main", "plans-from-model")
    pre = nnunet.preprocessed_dataset(DATASET_2D)
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(var, nnunet.env[var])
    out = nnunet.run(*cli, stamp_model, "-f", 0, "--plans-name", "nnUNetSTAMPArchPlans").stdout
    assert "nnUNetv2_train 601 2d FOLD -p nnUNetSTAMPArchPlans" in out
    plans_file = pre / "nnUNetSTAMPArchPlans.json"
    plans = read_json(plans_file)
    assert list(plans["configurations"]) == ["2d"] and plans["plans_name"] == "nnUNetSTAMPArchPlans"
    assert plans["configurations"]["2d"]["data_identifier"] == "nnUNetPlans_2d"  # the data is reused
    widths = read_json(stamp_model / "fold_0" / "pruning_history.json")["epochs"][-1]["widths"]
    assert plans["configurations"]["2d"]["architecture"]["arch_kwargs"]["channel_widths"] == widths

    # refused before anything is written: a taken name, the source's own name, a fold that does not exist, a file
    # somebody changed (in-process: the command's own error path, without a new interpreter per case)
    from nnunet_prune.cli.main import main

    text = plans_file.read_text()
    edited = json.loads(text)
    edited["configurations"]["2d"]["batch_size"] = 1
    cases = [([], "exists"), (["--plans-name", "nnUNetPlans"], "source plans' own name"), (["-f", "3"], "fold(s) 3"),
             (["--overwrite"], "changed since")]
    for extra, needle in cases:
        argv = ["plans-from-model", str(stamp_model), "-f", "0", "--plans-name", "nnUNetSTAMPArchPlans"]
        for i in range(0, len(extra), 2):
            if extra[i] in argv:
                argv[argv.index(extra[i]) + 1] = extra[i + 1]
            else:
                argv.append(extra[i])
        if needle == "changed since":
            plans_file.write_text(json.dumps(edited))
        monkeypatch.setattr(sys, "argv", ["nnunet-prune"])
        assert main(argv) == 2, extra
        assert needle in capsys.readouterr().err, extra
        assert plans_file.read_text() == (json.dumps(edited) if needle == "changed since" else text)
    plans_file.write_text(text)
    nnunet.run(*cli, stamp_model, "-f", 0, "--plans-name", "nnUNetSTAMPArchPlans", "--overwrite")

    # the stock scripts train it from scratch at exactly those widths, and predict with it
    folder = nnunet.train(DATASET_2D, "2d", 0, "nnUNetTrainerBudget", plans="nnUNetSTAMPArchPlans",
                          env={"NNUNET_PRUNE_EPOCHS": "1", "NNUNET_PRUNE_ITERS_PER_EPOCH": "2"})
    retrained = torch.load(folder / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    pruned = torch.load(stamp_model / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert {k: v.shape for k, v in retrained["network_weights"].items()} == \
        {k: v.shape for k, v in pruned["network_weights"].items()}
    assert not torch.equal(retrained["network_weights"]["encoder.stages.0.0.convs.0.conv.weight"],
                           pruned["network_weights"]["encoder.stages.0.0.convs.0.conv.weight"])
    pred = nnunet.base / "pred_stamp_arch"
    nnunet.run("nnUNetv2_predict", "-i", dataset2d / "imagesTs", "-o", pred, "-d", DATASET_2D, "-c", "2d", "-tr",
               "nnUNetTrainerBudget", "-p", "nnUNetSTAMPArchPlans", "-f", 0, "-device", "cpu", "-npp", 0, "-nps", 0,
               "--disable_progress_bar")
    assert len(list(pred.glob("*.nii.gz"))) == 3
    # models now use the plans: even --overwrite leaves it
    proc = nnunet.run(*cli, stamp_model, "-f", 0, "--plans-name", "nnUNetSTAMPArchPlans", "--overwrite", check=False)
    assert proc.returncode == 2 and "trained models use it" in proc.stderr
