"""`nnunet-prune demo` without nnU-Net: its one duration figure, the step plan and the time-left estimate, the
advice on a slow machine, the per-class notes of its table, its seed, and Ctrl-C (the end-to-end run is in
tests/e2e/test_demo.py, slow)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from nnunet_prune.tools.benchmark.demo import DEFAULT_SEED, Demo, ModelRow
from nnunet_prune.tools.benchmark.progress import (
    MEASURED_BUDGET,
    MEASURED_MINUTES,
    MEASURED_ON,
    ProgressEstimate,
    budget_scale,
    busy_machine,
    format_minutes,
    plan_steps,
)
from tests.helpers import REPO

README = REPO / "README.md"
MODELS = ["nnU-Net default", "LUnet", "Sauron"]


def test_one_duration_figure_everywhere():
    """The README, `nnunet-prune --help` and the step estimates all say the measured figure."""
    from nnunet_prune.cli.main import build_parser
    from nnunet_prune.tools.benchmark.demo import DemoBudget

    steps = plan_steps(MODELS, ["Sauron"], sweep=True)
    assert sum(s.prior for s in steps) / 60 == pytest.approx(MEASURED_MINUTES, abs=0.01)
    b = DemoBudget()
    assert (b.epochs, b.iterations, b.val_iterations) == MEASURED_BUDGET
    readme = " ".join(README.read_text().split())
    assert f"{MEASURED_MINUTES} minutes on {MEASURED_ON}" in readme
    assert "10 minutes" not in readme
    assert f"{MEASURED_MINUTES} minutes on {MEASURED_ON}" in " ".join(build_parser().format_help().split())


def test_the_plan_follows_the_options_and_the_budget():
    full = plan_steps(MODELS, ["Sauron"], sweep=True)
    assert [s.key for s in full] == ["dataset", "plan default", "plan LUnet", "train nnU-Net default", "train LUnet",
                                     "train Sauron", "export Sauron", "predict nnU-Net default", "predict LUnet",
                                     "predict Sauron", "sweep", "measure"]
    assert [s.model for s in full if s.key.startswith("train")] == [(1, 3), (2, 3), (3, 3)]
    short = plan_steps(MODELS[:2], [], sweep=False)
    assert len(short) == 8 and "sweep" not in [s.key for s in short]
    assert budget_scale(*MEASURED_BUDGET) == 1.0
    quarter = plan_steps(MODELS, ["Sauron"], scale=budget_scale(5, 10, 4))
    assert quarter[3].prior < full[3].prior and quarter[0].prior == full[0].prior  # only trainings scale


def test_headings_say_where_the_demo_is_and_the_time_left_learns_from_finished_steps():
    p = ProgressEstimate(plan_steps(MODELS, ["Sauron"]))
    total = sum(s.prior for s in p.steps)
    assert p.begin("dataset", 0.0) == f"step 1 of 12, {format_minutes(total)} left"
    assert p.begin("plan default", 4.0) .startswith("step 2 of 12, ")  # dataset took as long as estimated
    assert p.speed() == pytest.approx(1.0)
    p.begin("plan LUnet", 18.0)
    heading = p.begin("train nnU-Net default", 24.0)
    assert re.fullmatch(r"step 4 of 12 \(model 1 of 3\), about \d+ min left", heading)
    before = p.remaining()
    # the first training takes three times its estimate: the rest is estimated slower, and the advice comes once
    prior = p.steps[3].prior
    p.finish(24.0 + 3 * prior)
    assert p.speed() > 1.5 and p.remaining("train LUnet") > before - prior
    assert "trained in" in p.slow_step("train nnU-Net default")
    assert p.slow_step("train nnU-Net default") is None
    text = p.advice("slow", 10, 25)
    assert "--epochs 5 --iterations 12" in text and f"{MEASURED_MINUTES} minutes" in text and "left" in text


def test_a_training_on_time_gives_no_advice():
    p = ProgressEstimate(plan_steps(MODELS, ["Sauron"]))
    p.begin("train LUnet", 0.0)
    p.finish(p.steps[4].prior * 1.2)
    assert p.slow_step("train LUnet") is None
    assert format_minutes(30) == "under a minute" and format_minutes(200) == "about 3 min"


def test_busy_machine_is_said_from_the_load_average():
    assert "load average 2.0 on 2 core(s)" in busy_machine(load=2.0, cores=2)
    before_any_step = ProgressEstimate(plan_steps(MODELS, ["Sauron"])).advice("busy", 4, 8)
    assert "left" not in before_any_step and "--epochs 2 --iterations 5" in before_any_step
    assert busy_machine(load=0.3, cores=2) is None
    assert busy_machine(load=5.0, cores=16) is None and busy_machine(load=9.0, cores=16)


def row(name: str, organ: float, lesion: float) -> ModelRow:
    return ModelRow(name, "nnUNetTrainerBudget", "nnUNetPlans", "", parameters=10 ** 6, macs=10 ** 9,
                    checkpoint_mb=4.0, dice=(organ + lesion) / 2, dice_per_class={"organ": organ, "lesion": lesion},
                    train_seconds=60, predict_seconds=5, cpu_ms_per_patch=10.0, cpu_ms_iqr=1.0)


def test_the_demo_table_has_a_column_per_class_and_says_a_missing_class_in_words(tmp_path):
    demo = Demo(tmp_path / "demo")
    demo.rows = [row("nnU-Net default", 0.9, 0.0), row("LUnet", 0.9, 0.87), row("Sauron", 0.9, 0.91)]
    text = demo.summary(None, 120.0, markdown=False)
    assert "Dice organ" in text and "Dice lesion" in text
    assert "nnU-Net default did not learn 'lesion' (Dice 0.00; Sauron reaches 0.91)" in text
    assert f"Seed {DEFAULT_SEED} (--seed)" in text
    nobody = Demo(tmp_path / "demo2")
    nobody.rows = [row("nnU-Net default", 0.9, 0.0), row("LUnet", 0.9, 0.02)]
    assert "No model learnt 'lesion'" in nobody.summary(None, 60.0)


def test_the_seed_goes_to_every_step_and_a_bad_one_is_refused(tmp_path):
    from nnunet_prune import NnUNetPruneError

    assert Demo(tmp_path / "d", seed=42).env["NNUNET_PRUNE_SEED"] == "42"
    with pytest.raises(NnUNetPruneError, match="--seed=-3"):
        Demo(tmp_path / "d", seed=-3)


KILLED_BY_SIGINT = ("import os, signal; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                    "os.kill(os.getpid(), signal.SIGINT)")


class InterruptedDemo(Demo):
    """The demo whose first step's command is ended by Ctrl-C (SIGINT reaches the step's subprocess)."""

    def _run_steps(self, start: float) -> Path:
        self.start_progress()
        self.step("Creating the dataset", "dataset")
        self.run([sys.executable, "-c", KILLED_BY_SIGINT])
        raise AssertionError("not reached")


def test_ctrl_c_in_the_demo_is_said_in_one_line_and_exits_130(tmp_path, monkeypatch, capsys):
    import nnunet_prune.tools.benchmark.demo
    from nnunet_prune.cli.main import main

    monkeypatch.setattr(nnunet_prune.tools.benchmark.demo, "Demo", InterruptedDemo)
    assert main(["demo", "--workdir", str(tmp_path / "demo")]) == 130
    out = capsys.readouterr()
    assert "[step 1 of 12, " in out.out and "Interrupted in step 'dataset'" in out.out
    assert "rerun `nnunet-prune demo`" in out.out and "failed" not in (out.out + out.err).lower()
