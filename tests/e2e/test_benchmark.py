"""`nnunet-prune benchmark`: every method through stock nnU-Net with one budget, one table; reruns reuse."""

from __future__ import annotations

import csv
import json
import re
import shutil
import sys

import pytest

from nnunet_prune.cli.main import main
from nnunet_prune.tools.benchmark.benchmark import METHOD_NAMES, pareto_front
from tests.conftest import DATASET_2D

#: schedules compressed so that every method removes something in 2 epochs of 2 iterations
FORCED = {
    "NNUNET_PRUNE_SAURON": "tau_init=0.6,tau_max=0.9,kappa=2,rho=1,stat_batches=2",
    "NNUNET_PRUNE_STAMP": "per_step=0.2,start_fraction=0,stop_fraction=1,max_dice_drop=0",
    "NNUNET_PRUNE_STRUCTURED": "pruning_ratio=0.5,step=0.25,stop_fraction=1",
    "NNUNET_PRUNE_PSPSEG": "patience=0,tolerance=1000,stop_fraction=1,calibration_patches=2",
}


def test_pareto_front_keeps_the_points_nothing_beats():
    points = [(10.0, 0.8), (5.0, 0.8), (5.0, 0.7), (1.0, 0.5), (20.0, 0.9), (30.0, 0.85)]
    assert pareto_front(points) == [3, 1, 4]  # sorted by cost; (10, .8) is beaten by (5, .8)


@pytest.fixture
def nnunet_env(nnunet, dataset2d, monkeypatch):
    for key, value in nnunet.env.items():
        if key.startswith("nnUNet_"):
            monkeypatch.setenv(key, value)
    return nnunet


@pytest.mark.parametrize("args, words", [
    (["--methods", "dense", "bogus"], "Unknown benchmark method 'bogus'"),
    (["--methods", "l2"], "add 'dense' to --methods"),
    (["-f", "all"], "Fold 'all' has no validation cases"),
    (["--test-images", "IMAGES"], "Give both --test-images and --test-labels"),
    (["--test-images", "IMAGES", "--test-labels", "IMAGES"], "--test-labels"),
    (["--epochs", "0"], "--epochs"),
    (["-c", "3d_lowres", "--methods", "dense"], "has no configuration '3d_lowres'"),
])
def test_bad_input_stops_before_any_work(nnunet_env, tmp_path, capsys, args, words):
    raw = nnunet_env.raw_dataset(DATASET_2D)
    args = [str(raw / "imagesTs") if a == "IMAGES" else a for a in args]
    out = tmp_path / "bench"
    code = main(["benchmark", "-d", str(DATASET_2D), "-c", "2d", "-o", str(out), *args])
    assert code == 2 and words in capsys.readouterr().err
    assert not out.exists()


def test_a_folder_that_is_not_a_benchmark_is_refused_untouched(nnunet_env, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert main(["benchmark", "-d", str(DATASET_2D), "-c", "2d", "-o", str(out), "--methods", "dense"]) == 2
    assert "holds no benchmark" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


@pytest.mark.slow
def test_every_method_end_to_end_then_a_rerun_reuses_everything(nnunet, dataset2d, tmp_path):
    """Every method with the folds' validation (two at a time); then a test set, nnU-Net's prediction and evaluation,
    and a failing method next to a working one."""
    pre = tmp_path / "preprocessed"  # the benchmark plans what is missing: not into the session's shared folder
    shutil.copytree(nnunet.preprocessed, pre)
    env = {**FORCED, "nnUNet_preprocessed": str(pre)}
    out = tmp_path / "bench"
    cmd = [sys.executable, "-m", "nnunet_prune.cli.main", "benchmark", "-d", DATASET_2D, "-c", "2d", "-o", out,
           "--epochs", 2, "--iters-per-epoch", 2, "--val-iters", 1, "--sweep-taus", 0.001, 0.01, 0.05,
           "--repeats", 2, "--runtimes", "none", "--jobs", 2, "--methods", *METHOD_NAMES, "lunet8_distill"]
    first = nnunet.run(*cmd, env=env, timeout=1800)
    rows = {r["method"]: r for r in csv.DictReader(open(out / "benchmark.csv"))}
    assert set(rows) == {*METHOD_NAMES, "lunet8_distill"}
    # the distilled row: right after its student, trained by nnUNetTrainerDistill from the seed's dense model
    names = list(rows)
    assert names.index("lunet8_distill") == names.index("lunet8") + 1
    assert rows["lunet8_distill"]["distilled"] == "true" and rows["lunet8_distill"]["student_of"] == "lunet8"
    assert rows["lunet8"]["distilled"] == "false"
    distilled = json.loads(next(out.glob("seed_0/nnUNet_results/*/nnUNetTrainerDistill__nnUNetLUnetPlans_8__2d/"
                                         "fold_0/pruning_config.json")).read_text())["distillation"]
    dense_folder = next(out.glob("seed_0/nnUNet_results/*/nnUNetTrainerBudget__nnUNetPlans__2d"))
    assert distilled["enabled"] and distilled["teacher"]["folder"] == str(dense_folder.resolve())
    failed = {k: r["error"] for k, r in rows.items() if r["status"] != "ok"}
    assert not failed, failed
    dense = rows["dense"]
    for name, r in rows.items():
        assert 0 <= float(r["dice"]) <= 1 and r["dice_source"] == "validation"
        if name not in ("dense", "magnitude"):  # every other method removed something or is smaller by design
            assert float(r["parameters"]) < float(dense["parameters"]), name
    params = {k: float(r["parameters"]) for k, r in rows.items()}
    assert params["lunet8"] < params["lunet16"] < params["lunet"]
    assert float(rows["magnitude"]["nonzero_parameters"]) < float(rows["magnitude"]["parameters"])
    assert float(rows["magnitude"]["tau"]) > 0
    # PSP-Seg is measured as exported: its masked branches are gone
    psp = json.loads(next(out.glob("seed_0/nnUNet_results/*/nnUNetTrainerPSPSeg__*/fold_0/pruning_config.json"))
                     .read_text())
    assert params["pspseg_s"] < psp["initial_parameters"]
    # the validation Dice is nnU-Net's own summary.json
    summary = json.loads(next(out.glob("seed_0/nnUNet_results/*/nnUNetTrainerBudget__nnUNetPlans__2d/fold_0/"
                                       "validation/summary.json")).read_text())
    assert abs(float(dense["dice"]) - summary["foreground_mean"]["Dice"]) < 1e-6
    # sorted by MACs; the Pareto plot and each pruning method's map are there
    macs = [float(r["macs_per_patch"]) for r in rows.values()]
    assert macs == sorted(macs)
    assert (out / "pareto.png").stat().st_size > 10_000
    assert {"sauron.png", "stamp.png", "l2.png", "pspseg_s.png"} <= {p.name for p in (out / "maps").iterdir()}
    md = (out / "benchmark.md").read_text()
    assert "| method | parameters | GMAC/patch" in md and "PSP-Seg-S" in md and "Wall time per step" in md
    commands = (out / "commands.sh").read_text()
    assert "nnUNetv2_train" in commands and "NNUNET_PRUNE_EPOCHS=2" in commands and "NNUNET_PRUNE_PSPSEG=" in commands
    assert "NNUNET_PRUNE_SEED=0" in commands and "; seed 0 (--seeds N" in md
    assert re.search(r"NNUNET_PRUNE_TEACHER=\S*seed_0/nnUNet_results/\S+/nnUNetTrainerBudget__nnUNetPlans__2d \S*"
                     r".*-tr nnUNetTrainerDistill -p nnUNetLUnetPlans_8", commands)
    # every trained fold records the seed it was trained with (nnUNetTrainerBudget too)
    configs = list(out.glob("seed_0/nnUNet_results/*/*/fold_0/pruning_config.json"))
    assert len(configs) == len(METHOD_NAMES) + 1  # one model folder per method
    assert {json.loads(c.read_text())["seed"] for c in configs} == {0}
    # trained into the benchmark's own results folder, never into the user's nnUNet_results
    assert not any(p.name.startswith("nnUNetTrainerPSPSeg") for p in nnunet.results.rglob("*"))

    second = nnunet.run(*cmd, env=env, timeout=600)
    assert second.stdout.count("already trained (reused)") == len(METHOD_NAMES) + 1
    assert "training fold" not in second.stdout and "sweep of the dense" not in second.stdout
    again = {r["method"]: r for r in csv.DictReader(open(out / "benchmark.csv"))}
    assert {k: r["dice"] for k, r in again.items()} == {k: r["dice"] for k, r in rows.items()}
    assert len(first.stdout) > len(second.stdout)
    # other settings in the same folder are refused
    bad = nnunet.run(*cmd, "--epochs", 3, env=env, check=False)
    assert bad.returncode == 2 and "other settings" in bad.stderr

    # a test set, two seeds: stock prediction and evaluation per seed, mean ± spread; a failing method is reported
    # and the others go on
    raw = nnunet.raw_dataset(DATASET_2D)
    out2 = tmp_path / "bench2"
    run = nnunet.run(sys.executable, "-m", "nnunet_prune.cli.main", "benchmark", "-d", DATASET_2D, "-c", "2d",
                     "-o", out2, "--epochs", 1, "--iters-per-epoch", 2, "--val-iters", 1, "--methods", "lunet8",
                     "sauron", "--test-images", raw / "imagesTs", "--test-labels", raw / "labelsTs", "--repeats", 1,
                     "--runtimes", "none", "--seeds", 2, env={**env, "NNUNET_PRUNE_SAURON": "tau_max=abc"})
    rows = {r["method"]: r for r in csv.DictReader(open(out2 / "benchmark.csv"))}
    assert rows["lunet8"]["status"] == "ok" and rows["lunet8"]["dice_source"] == "test"
    assert rows["lunet8"]["seeds"] == "0 1" and float(rows["lunet8"]["dice_spread"]) >= 0
    dices = [json.loads((out2 / f"seed_{s}" / "predictions" / "lunet8" / "summary.json").read_text())
             ["foreground_mean"]["Dice"] for s in (0, 1)]
    assert abs(float(rows["lunet8"]["dice"]) - sum(dices) / 2) < 1e-6
    ending = json.loads((raw / "dataset.json").read_text())["file_ending"]
    assert len(list((out2 / "seed_1" / "predictions" / "lunet8").glob(f"*{ending}"))) == \
        len(list((raw / "labelsTs").iterdir()))
    assert "mean ± sample standard deviation over 2 seeds" in (out2 / "benchmark.md").read_text()
    assert rows["sauron"]["status"] == "failed" and "NNUNET_PRUNE_SAURON" in rows["sauron"]["error"]
    assert "sauron: FAILED" in run.stdout and "failed: " in (out2 / "benchmark.md").read_text()


@pytest.mark.slow
def test_int8_rows_are_quantized_timed_and_scored_on_their_own_predictions(nnunet, dataset2d, tmp_path):
    """--int8: each model's INT8 folder (nnunet-prune export --int8) is timed, and its Dice is its own validation
    predictions', never assumed. The bound 0.9 holds for any model whose float Dice is below 0.9 (a drop is at most
    the float Dice), as every model of this budget is: the INT8 model is accepted on every run."""
    out = tmp_path / "bench"
    nnunet.run(sys.executable, "-m", "nnunet_prune.cli.main", "benchmark", "-d", DATASET_2D, "-c", "2d", "-o", out,
               "--methods", "dense", "--epochs", 1, "--iters-per-epoch", 2, "--val-iters", 1, "--repeats", 2,
               "--runtimes", "none", "--int8", "--max-dice-drop", 0.9, timeout=1200)
    row = next(csv.DictReader(open(out / "benchmark.csv")))
    assert row["status"] == "ok" and float(row["dice"]) < 0.9 and not row["int8_error"]
    int8 = out / "seed_0" / "int8" / "dense"
    summary = json.loads((int8 / "fold_0" / "validation" / "summary.json").read_text())
    assert abs(float(row["int8_dice"]) - summary["foreground_mean"]["Dice"]) < 1e-9
    export = json.loads((int8 / "export_summary.json").read_text())["int8"]
    assert export["max_dice_drop"] == 0.9
    assert float(row["int8_ms"]) > 0 and row["fastest_runtime"] in ("pytorch", "openvino int8")
    assert "INT8 ms (OpenVINO)" in (out / "benchmark.md").read_text()
