"""Unknown ``NNUNET_PRUNE_*`` variables are refused by every entry point before any work (issue 23, item 1): a typo
such as ``NNUNET_PRUNE_EPOCH=2`` must not silently leave nnU-Net's 1000 epochs."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from nnunet_prune import NnUNetPruneError
from nnunet_prune.nnunet.names import PLANNERS
from nnunet_prune.nnunet.settings import (
    METHOD_VARIABLE_NAMES,
    PACKAGE_VARIABLES,
    RENAMED_VARIABLES,
    check_variables,
    variable_problems,
)
from tests.conftest import DATASET_2D

TYPO = "NNUNET_PRUNE_EPOCH"
CLOSEST = "NNUNET_PRUNE_EPOCHS"


# ------------------------------------------------------------------------------------------------ the function
def test_the_static_method_table_matches_the_methods_settings_classes():
    """The check imports no trainer (no torch): its table of method variables must equal the derived one."""
    from nnunet_prune.nnunet.settings import method_variables

    assert set(METHOD_VARIABLE_NAMES) == set(method_variables())


def test_known_variables_pass_and_others_are_ignored():
    env = {name: "1" for name in [*PACKAGE_VARIABLES, *METHOD_VARIABLE_NAMES]}
    env.update({"nnUNet_raw": "/x", "PATH": "/bin", "NNUNET_PRUNEX": "1", "MY_NNUNET_PRUNE_EPOCH": "1"})
    assert variable_problems(env) == []
    check_variables(env)  # no error
    assert "NNUNET_PRUNE_SEED" in PACKAGE_VARIABLES and "NNUNET_PRUNE_CI_VENV" in PACKAGE_VARIABLES


@pytest.mark.parametrize("typo, closest", [
    (TYPO, CLOSEST),
    ("NNUNET_PRUNE_ITER_PER_EPOCH", "NNUNET_PRUNE_ITERS_PER_EPOCH"),
    ("NNUNET_PRUNE_SAURN", "NNUNET_PRUNE_SAURON"),
    ("NNUNET_PRUNE_STRUCTURD", "NNUNET_PRUNE_STRUCTURED"),
    ("nnunet_prune_epochs", CLOSEST),  # the wrong case is ignored by the package too
    ("NNUNET_PRUNE_DENSE_MODELS", "NNUNET_PRUNE_DENSE_MODEL"),
])
def test_unknown_variable_is_refused_naming_the_closest_known_one(typo, closest):
    with pytest.raises(NnUNetPruneError) as e:
        check_variables({typo: "2", CLOSEST if typo != CLOSEST else "PATH": "3"})
    message = str(e.value)
    assert f"{typo} is not a variable of this package (did you mean {closest}?)" in message
    assert "\n" not in message and "nnunet-prune doctor" in message


def test_a_name_far_from_every_known_one_is_refused_without_a_guess():
    problems = variable_problems({"NNUNET_PRUNE_QQQQQQQQQQQQQQQQ": "1"})
    assert problems == ["NNUNET_PRUNE_QQQQQQQQQQQQQQQQ is not a variable of this package"]


def test_every_unknown_variable_is_named_at_once():
    problems = variable_problems({TYPO: "2", "NNUNET_PRUNE_VAL_ITER": "1"})
    assert [p.split()[0] for p in problems] == [TYPO, "NNUNET_PRUNE_VAL_ITER"]


def test_renamed_variables_keep_their_message():
    old, new = next(iter(RENAMED_VARIABLES.items()))
    expected = f"{old} is no longer read: set {new} (one variable per method; see `nnunet-prune doctor`)."
    with pytest.raises(NnUNetPruneError) as e:
        check_variables({old: "0.01", TYPO: "2"})
    assert str(e.value) == expected


# -------------------------------------------------------------------------------------------- every trainer
def trainer_classes() -> list[type]:
    from nnunet_prune.nnunet import trainers

    return [getattr(trainers, name) for name in trainers.__all__]


@pytest.mark.parametrize("name", PLANNERS)
def test_every_planner_refuses_an_unknown_variable_first(name, monkeypatch):
    from nnunet_prune.nnunet import planners

    monkeypatch.setenv("NNUNET_PRUNE_NO_REUS", "1")
    with pytest.raises(NnUNetPruneError, match="NNUNET_PRUNE_NO_REUS is not a variable of this package "
                                               r"\(did you mean NNUNET_PRUNE_NO_REUSE\?\)"):
        getattr(planners, name)(999)  # refused before nnU-Net looks for the dataset


def test_every_trainer_refuses_an_unknown_variable_first(monkeypatch, tmp_path):
    """Every trainer class of the package (budget, pruning base and every method variant) stops at the start of its
    __init__: before nnU-Net reads the plans or creates the fold folder (plans={} would fail anywhere later)."""
    import torch

    monkeypatch.setenv(TYPO, "2")
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    classes = trainer_classes()
    assert {"nnUNetTrainerBudget", "nnUNetTrainerPruning", "nnUNetTrainerSauron"} <= {c.__name__ for c in classes}
    for cls in classes:
        with pytest.raises(NnUNetPruneError, match=f"{TYPO} is not a variable of this package \\(did you mean "
                                                   f"{CLOSEST}\\?\\)"):
            cls({}, "2d", 0, {}, torch.device("cpu"))
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------- the command line
def test_every_command_refuses_an_unknown_variable_before_any_work(monkeypatch, capsys, tmp_path):
    from nnunet_prune.cli.main import SUBCOMMANDS, main

    monkeypatch.setenv(TYPO, "2")
    out = tmp_path / "out"
    calls = {
        "dataset": ["dataset", "synthetic", "-d", "7", "--raw", str(tmp_path / "raw")],
        "demo": ["demo", "--workdir", str(out)],
        "report": ["report", str(tmp_path), "-o", str(out)],
        "export": ["export", str(tmp_path), "-o", str(out)],
        "sweep": ["sweep", str(tmp_path), "-i", str(tmp_path), "-o", str(out)],
        "plans-from-model": ["plans-from-model", str(tmp_path), "-f", "0", "--plans-name", "x"],
        "benchmark": ["benchmark", "-d", "7", "-c", "2d", "-o", str(out)],
        "pseudo-label": ["pseudo-label", "-d", "7", "-c", "2d", "-tr", "nnUNetTrainerBudget", "-i", str(tmp_path),
                         "-o", "8"],
        "benchmark-step": ["benchmark-step", "-o", str(out), "plan"],
        "train-folds": ["train-folds", "-d", "7", "-c", "2d", "--executor", "commands"],
    }
    assert set(calls) == set(SUBCOMMANDS) - {"doctor"}
    for argv in calls.values():
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith(f"ERROR: {TYPO} is not a variable of this package (did you mean {CLOSEST}?)"), argv
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing was written


def test_command_line_refusal_is_fast_and_imports_no_torch(tmp_path):
    """In a fresh interpreter (as a user runs it): the refusal comes before torch or nnU-Net is imported."""
    code = ("import os, sys\nos.environ['NNUNET_PRUNE_EPOCH'] = '2'\nfrom nnunet_prune.cli.main import main\n"
            f"rc = main(['sweep', '-d', '999', '-c', '2d', '-i', {str(tmp_path)!r}])\n"
            "heavy = [m for m in ('torch', 'nnunetv2', 'onnxruntime', 'openvino') if m in sys.modules]\n"
            "print('RESULT', rc, heavy)\n")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "RESULT 2 []" in proc.stdout, proc.stdout + proc.stderr
    assert f"did you mean {CLOSEST}?" in proc.stderr
    assert time.perf_counter() - start < 20  # (about 0.1 s; torch alone takes seconds to import)


def test_doctor_lists_an_unknown_variable_as_a_problem(monkeypatch, capsys):
    """doctor does not stop at it: it prints it with the variables, lists it under Problems and exits with 1 (this
    runs doctor's check in a fresh interpreter too: some seconds)."""
    from nnunet_prune.cli.main import main

    monkeypatch.setenv(TYPO, "2")
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    line = f"{TYPO} is not a variable of this package (did you mean {CLOSEST}?)"
    assert f"  NO  {line}" in out
    problems = out.split("\nProblems:\n", 1)[1]
    assert f"  - {line}: rename or unset it" in problems


# -------------------------------------------------------------------------------------- stock nnU-Net (slow)
@pytest.mark.slow
def test_stock_nnunetv2_train_with_a_misspelt_budget_variable_fails_fast(nnunet, dataset2d):
    """The issue's command: `NNUNET_PRUNE_EPOCH=2 nnUNetv2_train ... -tr nnUNetTrainerBudget` started 1000 epochs.
    Now it stops with one line naming NNUNET_PRUNE_EPOCHS, before nnU-Net creates the fold folder."""
    start = time.perf_counter()
    proc = nnunet.run("nnUNetv2_train", DATASET_2D, "2d", 4, "-tr", "nnUNetTrainerBudget", "-device", "cpu",
                      env={TYPO: "2"}, check=False)
    seconds = time.perf_counter() - start
    assert proc.returncode != 0
    assert f"{TYPO} is not a variable of this package (did you mean {CLOSEST}?)" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list(nnunet.results.glob("*/nnUNetTrainerBudget__nnUNetPlans__2d/fold_4"))
    assert seconds < 120, seconds  # start-up and imports only, no epoch


@pytest.mark.slow
def test_stock_planning_with_a_package_planner_refuses_a_misspelt_variable(nnunet, dataset2d):
    plans = nnunet.preprocessed_dataset(DATASET_2D) / "nnUNetLUnetPlans.json"
    before = plans.stat().st_mtime_ns
    proc = nnunet.run("nnUNetv2_plan_and_preprocess", "-d", DATASET_2D, "-c", "2d", "-pl", "LUnetPlanner",
                      "-np", 1, "-npfp", 1, env={"NNUNET_PRUNE_NO_REUS": "1"}, check=False)
    assert proc.returncode != 0
    assert "NNUNET_PRUNE_NO_REUS is not a variable of this package (did you mean NNUNET_PRUNE_NO_REUSE?)" in \
        proc.stdout + proc.stderr
    assert plans.stat().st_mtime_ns == before  # the plans were not written again
