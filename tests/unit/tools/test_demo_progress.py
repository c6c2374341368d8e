"""`nnunet-prune demo` without nnU-Net: its one duration figure, the step plan and the time-left estimate, the
advice on a slow machine, the per-class notes of its table, its seed, and Ctrl-C (the end-to-end run is in
tests/e2e/test_demo.py, slow)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from nnunet_prune.tools.benchmark.demo import DEFAULT_SEED, DEMO_SAURON, Demo, ModelRow, demo_methods
from nnunet_prune.tools.benchmark.methods import method_spec
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
from nnunet_prune.tools.runner import StepRunner
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
    # the benchmark pipeline's order: each model trained, exported where it is, predicted, before the next one
    assert [s.key for s in full] == ["dataset", "plan default", "plan LUnet", "train nnU-Net default",
                                     "predict nnU-Net default", "train LUnet", "predict LUnet", "train Sauron",
                                     "export Sauron", "predict Sauron", "sweep", "measure"]
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
    p.finish(next(s for s in p.steps if s.key == "train LUnet").prior * 1.2)
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
    """The demo whose first step's command is ended by Ctrl-C (SIGINT reaches the step's subprocess, run by the
    demo's runner)."""

    def create_dataset(self) -> None:
        self.narrator.heading("Creating the dataset", "dataset")
        self.runner.run("dataset", "create", [sys.executable, "-c", KILLED_BY_SIGINT])
        raise AssertionError("not reached")


def test_ctrl_c_in_the_demo_is_said_in_one_line_and_exits_130(tmp_path, monkeypatch, capsys):
    import nnunet_prune.tools.benchmark.demo
    from nnunet_prune.cli.main import main

    monkeypatch.setattr(nnunet_prune.tools.benchmark.demo, "Demo", InterruptedDemo)
    assert main(["demo", "--workdir", str(tmp_path / "demo")]) == 130
    out = capsys.readouterr()
    assert "[step 1 of 12, " in out.out and "Interrupted in step 'dataset'" in out.out
    assert "rerun `nnunet-prune demo`" in out.out and "failed" not in (out.out + out.err).lower()


class DemoSteps(StepRunner):
    """The demo's runner with every command replaced by ``python -c pass`` (a real subprocess, streamed) that
    leaves what the real step would: the dataset, finished folds, an export, predictions and nnU-Net's
    ``summary.json`` (organ 0.8 + 0.05 per model, lesion 0), the sweep's report. ``calls``: (method, step, the
    command's program and arguments, the step's environment)."""

    calls: list[tuple] = []

    def run(self, method, step, cmd, extra_env=None) -> None:
        self.calls.append((method, step, [Path(cmd[0]).name, *cmd[1:]], self.environment(extra_env)))
        super().run(method, step, [sys.executable, "-c", "print('some output')"], extra_env)
        out = Path(cmd[cmd.index("-o") + 1]) if "-o" in cmd else None
        if step == "create":
            raw = Path(self.env["nnUNet_raw"]) / "Dataset990_Fake"
            for sub in ("imagesTs", "labelsTs"):
                (raw / sub).mkdir(parents=True)
            (raw / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "organ": 1, "lesion": 2},
                                                          "file_ending": ".nii.gz"}))
        elif step == "train_fold_0":
            m = method_spec(method)
            fold = Path(self.env["nnUNet_results"]) / "Dataset990_Fake" / f"{m.trainer}__{m.plans}__2d" / "fold_0"
            (fold / "validation").mkdir(parents=True)
            (fold / "checkpoint_final.pth").write_bytes(b"")
            (fold / "validation" / "summary.json").write_text("{}")
        elif step in ("export", "predict"):
            out.mkdir(parents=True)
            (out / "plans.json").write_text("{}")
        elif step == "evaluate":
            organ = 0.8 + 0.05 * [m.name for m in demo_methods()].index(method)
            out.write_text(json.dumps({"foreground_mean": {"Dice": (organ + 0.0) / 2},
                                       "mean": {"1": {"Dice": organ}, "2": {"Dice": 0.0}}}))
        elif step == "sweep":
            out.mkdir(parents=True)
            (out / "sweep.json").write_text(json.dumps({"threshold": 0.95, "critical_point": {
                "tau": 0.004, "sparsity": 0.8, "proxy_dice": 0.97}}))


class PresetDemo(Demo):
    """The demo through its real pipeline, with :class:`DemoSteps` as its runner and fixed measurements."""

    runner_class = DemoSteps

    def measure(self) -> None:
        for k, row in enumerate(self.rows):
            row.parameters, row.macs, row.checkpoint_mb = 10 ** 6 // (k + 1), 10 ** 9 // (k + 1), 4.0 / (k + 1)
            row.cpu_ms_per_patch, row.cpu_ms_iqr = 10.0, 1.0
        self.threads, self.patch_size = 2, [64, 64]


def test_the_demo_is_a_preset_of_the_benchmark_pipeline(tmp_path, capsys):
    """Its steps are the benchmark's (plan, per model train -> export -> predict -> nnUNetv2_evaluate_folder, the
    sweep as a step) with the demo's headings and progress; its Dice is nnU-Net's summary.json; nothing is written
    into this process's environment."""
    import os

    environ = dict(os.environ)
    DemoSteps.calls = []
    demo = PresetDemo(tmp_path / "demo", seed=7)
    out = demo.run_all()
    assert dict(os.environ) == environ
    text = capsys.readouterr().out
    headings = [line for line in text.splitlines() if line.startswith("==> ")]
    assert len(headings) == 12 and headings[0].startswith("==> [step 1 of 12, ")
    assert [h.split("] ", 1)[1].split(":")[0].split(" (")[0] for h in headings] == [
        "Creating the synthetic dataset", "Planning and preprocessing", "Planning",
        "Training nnU-Net default", "Predicting the held-out images with nnU-Net default", "Training LUnet",
        "Predicting the held-out images with LUnet", "Training Sauron", "Exporting Sauron as a slim model folder",
        "Predicting the held-out images with Sauron", "Magnitude-pruning sweep of nnU-Net default",
        "Measuring parameters, MACs, CPU latency and held-out Dice"]
    assert "    $ python -c " in text and "    | some output" in text  # each command and its output, streamed
    calls = {(m, s): (cmd, env) for m, s, cmd, env in DemoSteps.calls}
    cmd, env = calls[("sauron", "train_fold_0")]
    assert cmd == ["nnUNetv2_train", "990", "2d", "0", "-tr", "nnUNetTrainerSauron", "-p", "nnUNetPlans", "-device",
                   "cpu"]
    assert env["NNUNET_PRUNE_SAURON"] == DEMO_SAURON and env["NNUNET_PRUNE_SEED"] == "7"
    assert env["nnUNet_results"] == str(demo.workdir / "nnUNet_results") and env["nnUNet_n_proc_DA"] == "0"
    exported = demo.workdir / "exported" / "nnUNetTrainerSauron__nnUNetPlans__2d"
    cmd, _ = calls[("sauron", "predict")]
    assert cmd[0] == "nnUNetv2_predict_from_modelfolder" and cmd[cmd.index("-m") + 1] == str(exported)
    assert calls[("dense", "predict")][0][0] == "nnUNetv2_predict"
    assert calls[("lunet", "evaluate")][0][0] == "nnUNetv2_evaluate_folder"
    assert calls[("magnitude", "sweep")][0][3:5] == ["sweep", str(demo.workdir / "nnUNet_results" / "Dataset990_Fake"
                                                               / "nnUNetTrainerBudget__nnUNetPlans__2d")]
    results = json.loads((demo.workdir / "demo_results.json").read_text())
    rows = {r["name"]: r for r in results["rows"]}
    assert list(rows) == ["nnU-Net default", "LUnet", "Sauron"] and rows["Sauron"]["model_folder"] == str(exported)
    assert rows["LUnet"]["dice"] == pytest.approx(0.425)  # nnU-Net's summary.json, as written
    assert rows["LUnet"]["dice_per_class"] == pytest.approx({"organ": 0.85, "lesion": 0.0})
    assert (demo.workdir / "predictions" / "LUnet" / "summary.json").is_file()
    assert set(results["timings"]) == {"dataset", "plan default", "plan LUnet", "export Sauron", "sweep", "measure"}
    assert results["seed"] == 7 and results["sweep_critical_point"]["tau"] == 0.004
    md = out.read_text()
    assert "| model | parameters | GMAC/patch" in md and "No model learnt 'lesion'" in md
    assert "critical point tau = 0.004" in md and "nnUNetv2_evaluate_folder" in md
