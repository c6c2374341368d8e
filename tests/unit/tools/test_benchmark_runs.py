"""The benchmark's own machinery without nnU-Net: seeds (one run per seed in its own folder, resumable, mean ± spread
per method and class), per-class Dice and notes in its table, and Ctrl-C reported as an interruption.

The steps' commands are replaced inside the benchmark's one runner (:class:`FakeRunner`, a
:class:`~nnunet_prune.tools.runner.StepRunner` that runs a real, trivial subprocess and writes the files a
finished step leaves); the rest is the benchmark's code as it runs. The runs through stock nnU-Net are in
tests/e2e/test_benchmark.py (slow).
"""

from __future__ import annotations

import csv
import json
import shlex
import statistics
import sys
import threading
from pathlib import Path

import pytest

from nnunet_prune import NnUNetPruneError
from nnunet_prune.cli.main import main
from nnunet_prune.tools.benchmark.benchmark import (
    Benchmark,
    BenchmarkSettings,
    MethodResult,
    aggregate_rows,
    method_spec,
)
from nnunet_prune.tools.class_dice import class_notes, format_dice
from nnunet_prune.tools.runner import StepRunner

#: a subprocess that Ctrl-C ends (SIGINT, as the terminal sends it to the whole process group)
KILLED_BY_SIGINT = ("import os, signal; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                    "os.kill(os.getpid(), signal.SIGINT)")


class FakeRunner(StepRunner):
    """The benchmark's runner with every command executed as ``python -c pass`` (logged with the step's environment;
    commands.sh records the real command), leaving a finished fold behind; ``interrupt`` = (method, step) is ended
    by SIGINT instead. ``calls`` (shared by every runner of a benchmark) records (seed, method, step,
    NNUNET_PRUNE_SEED, nnUNet_results) of each step, ``envs`` its whole environment by (seed, method, step)."""

    interrupt: tuple[str, str] | None = None
    calls: list[tuple] = []
    envs: dict[tuple, dict] = {}
    _code = threading.local()  # what the step running in this thread executes

    def run(self, method, step, cmd, extra_env=None) -> None:
        env = self.environment(extra_env)
        seed = int(env["NNUNET_PRUNE_SEED"])
        self.calls.append((seed, method, step, env["NNUNET_PRUNE_SEED"], env["nnUNet_results"]))
        self.envs[(seed, method, step)] = env
        self._code.text = KILLED_BY_SIGINT if (method, step) == self.interrupt else "pass"
        super().run(method, step, cmd, extra_env)
        if step.startswith("train_fold_"):
            m = method_spec(method)
            fold = (Path(env["nnUNet_results"]) / "Dataset990_Fake" / f"{m.trainer}__{m.plans}__2d"
                    / f"fold_{step[len('train_fold_'):]}")
            (fold / "validation").mkdir(parents=True, exist_ok=True)
            (fold / "checkpoint_final.pth").write_bytes(b"")
            (fold / "validation" / "summary.json").write_text("{}")

    def _execute(self, cmd, env, log, line):
        return super()._execute([sys.executable, "-c", self._code.text], env, log, line)


class FakeSteps(Benchmark):
    """A benchmark whose steps run through :class:`FakeRunner`. Measuring gives fixed numbers: Dice of 'organ'
    0.8 + 0.02 * seed (+ 0.05 per method index), 'lesion' 0."""

    interrupt: tuple[str, str] | None = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls: list[tuple] = []
        self.envs: dict[tuple, dict] = {}
        self.runner_class = type("Runner", (FakeRunner,), {"interrupt": self.interrupt, "calls": self.calls,
                                                          "envs": self.envs})

    def check(self) -> None:
        self.dataset_json = {"labels": {"background": 0, "organ": 1, "lesion": 2}, "file_ending": ".nii.gz"}

    def plan(self) -> None:
        pass

    def measure(self, m) -> None:
        row = self.rows[m.name]
        k = [x.name for x in self.methods].index(m.name)
        row.parameters = row.macs = 1e6 * (3 - k)
        row.dice_per_class = {"organ": 0.8 + 0.02 * self.seed + 0.05 * k, "lesion": 0.0}
        row.dice = statistics.fmean(row.dice_per_class.values())
        row.dice_source = "validation"


def bench(tmp_path, seeds: int = 1, log: list | None = None, cls=FakeSteps, methods=("dense", "lunet8", "l2")):
    settings = BenchmarkSettings(dataset="Dataset990_Fake", configuration="2d", folds=[0], methods=list(methods),
                                 epochs=1, iterations=1, val_iterations=1, seed=0, seeds=seeds, runtimes=[])
    return cls(settings, tmp_path / "bench", log=(log.append if log is not None else lambda line: None))


def read_csv(out) -> dict[str, dict]:
    return {r["method"]: r for r in csv.DictReader(open(out / "benchmark.csv"))}


def test_seeds_run_in_their_own_folders_and_the_table_gives_mean_and_spread(tmp_path):
    b = bench(tmp_path, seeds=2)
    md = b.run().read_text()
    out = b.out
    # every step of seed S ran with NNUNET_PRUNE_SEED=S into OUT/seed_S/nnUNet_results
    assert {(seed, s, r) for seed, _, _, s, r in b.calls} == {
        (seed, str(seed), str(out / f"seed_{seed}" / "nnUNet_results")) for seed in (0, 1)}
    assert (out / "seed_1" / "nnUNet_results" / "Dataset990_Fake" / "nnUNetTrainerBudget__nnUNetPlans__2d" / "fold_0"
            / "checkpoint_final.pth").is_file()
    assert (out / "seed_0" / "logs" / "dense.train_fold_0.log").is_file()
    assert "NNUNET_PRUNE_SEED=1" in (out / "commands.sh").read_text()
    rows = read_csv(out)
    dense = rows["dense"]
    organ = [0.8, 0.82]
    means = [statistics.fmean([o, 0.0]) for o in organ]
    assert float(dense["dice"]) == pytest.approx(statistics.fmean(means))
    assert float(dense["dice_spread"]) == pytest.approx(statistics.stdev(means))
    assert float(dense["dice_organ"]) == pytest.approx(0.81)
    assert float(dense["dice_organ_spread"]) == pytest.approx(statistics.stdev(organ))
    assert float(dense["dice_lesion_spread"]) == 0.0
    assert dense["seeds"] == "0 1" and dense["dice_per_seed"].startswith("0:0.4")
    # the table: mean ± standard deviation per method and class, said so, and the class nobody learnt in words
    assert "mean ± sample standard deviation over 2 seeds (0-1" in md
    assert f"| {format_dice(statistics.fmean(means), statistics.stdev(means))} | 0.810 ± 0.014 | 0.000 ± 0.000 |" \
        in md  # the classes in the dataset's order
    assert "No model learnt 'lesion'" in md
    state = json.loads((out / "benchmark_state.json").read_text())
    assert set(state["runs"]) == {"0", "1"} and state["settings"]["seed"] == 0
    assert state["rows"]["dense"]["dice_spread"] == pytest.approx(statistics.stdev(means))
    assert "seed 1: dense train fold 0" in state["steps"]


def test_more_seeds_on_a_rerun_add_runs_and_reuse_the_finished_ones(tmp_path, monkeypatch):
    bench(tmp_path, seeds=2).run()
    log: list[str] = []
    b = bench(tmp_path, seeds=3, log=log)
    b.run()
    assert {seed for seed, *_ in b.calls} == {2}  # seeds 0 and 1 were reused, not trained again
    assert sum("already trained (reused)" in line for line in log) == 2 * 3
    assert read_csv(b.out)["lunet8"]["seeds"] == "0 1 2"
    fake_raw(tmp_path, monkeypatch)
    other = BenchmarkSettings(dataset="Dataset990_Fake", configuration="2d", folds=[0], methods=["dense"], epochs=1,
                              iterations=1, val_iterations=1, seed=5, seeds=3, runtimes=[])
    with pytest.raises(NnUNetPruneError, match="seed: 0 there, 5 now"):
        Benchmark(other, b.out).check()  # another first seed is another benchmark: the real check refuses it


def test_one_seed_gives_plain_cells_and_says_which_seed(tmp_path):
    md = bench(tmp_path, seeds=1).run().read_text()
    assert "; seed 0 (--seeds N repeats every method" in md and "±" not in md.split("## Notes")[0].split("|---|")[1]
    assert read_csv(tmp_path / "bench")["dense"]["dice_spread"] == ""


class InterruptDense(FakeSteps):
    interrupt = ("dense", "train_fold_0")


def test_ctrl_c_is_an_interruption_not_a_failure_and_the_rerun_continues(tmp_path):
    log: list[str] = []
    b = bench(tmp_path, log=log, cls=InterruptDense)
    with pytest.raises(KeyboardInterrupt):
        b.run()
    text = "\n".join(log)
    assert "dense: interrupted" in text and "interrupted; rerun the same command to continue" in text
    assert "FAILED" not in text
    state = json.loads((b.out / "benchmark_state.json").read_text())
    statuses = {k: r["status"] for k, r in state["runs"]["0"].items()}
    assert statuses["dense"] == "interrupted" and "failed" not in statuses.values(), statuses
    assert state["interrupted"] and "seed 0: dense train fold 0" in state["steps"]  # the time so far, for --c
    assert not (b.out / "benchmark.md").exists()
    # the same command again: continues, no leftovers of the interruption
    again = bench(tmp_path)
    again.run()
    assert {r["status"] for r in read_csv(again.out).values()} == {"ok"}
    assert "interrupted" not in json.loads((again.out / "benchmark_state.json").read_text())


def fake_raw(tmp_path, monkeypatch) -> None:
    """nnU-Net's raw and preprocessed folders with an empty Dataset990_Fake (what the benchmark's checks look at)."""
    raw = tmp_path / "raw"
    (raw / "Dataset990_Fake").mkdir(parents=True)
    (raw / "Dataset990_Fake" / "dataset.json").write_text("{}")
    (tmp_path / "pre").mkdir()
    monkeypatch.setenv("nnUNet_raw", str(raw))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "pre"))


def test_ctrl_c_makes_the_command_exit_130_with_one_line(tmp_path, monkeypatch, capsys):
    import nnunet_prune.tools.benchmark.benchmark

    fake_raw(tmp_path, monkeypatch)
    monkeypatch.setattr(nnunet_prune.tools.benchmark.benchmark, "Benchmark", InterruptDense)
    code = main(["benchmark", "-d", "Dataset990_Fake", "-c", "2d", "-o", str(tmp_path / "bench"), "--methods",
                 "dense", "lunet8", "--device", "cpu", "--runtimes", "none"])
    out = capsys.readouterr()
    assert code == 130
    assert "interrupted; rerun the same command to continue" in out.out and "FAILED" not in out.out + out.err


@pytest.mark.parametrize("args, words", [(["--seeds", "0"], "--seeds 0: give at least 1"),
                                         (["--seed", "-1"], "--seed=-1: a seed is a whole number")])
def test_bad_seed_options_stop_before_any_work(tmp_path, capsys, args, words):
    out = tmp_path / "bench"
    assert main(["benchmark", "-d", "Dataset990_Fake", "-c", "2d", "-o", str(out), *args]) == 2
    assert words in capsys.readouterr().err and not out.exists()


def row(seed: int, dice: float | None, status: str = "ok", **kw) -> MethodResult:
    return MethodResult("sauron", "Sauron", "nnUNetTrainerSauron", "nnUNetPlans", status=status, seed=seed, dice=dice,
                        dice_per_class={"organ": dice} if dice is not None else {}, **kw)


def test_aggregate_rows_means_spreads_and_failed_seeds():
    agg = aggregate_rows({0: row(0, 0.5, macs=2.0, train_seconds=10.0, notes=["n"]),
                          1: row(1, 0.7, macs=4.0, train_seconds=20.0),
                          2: row(2, None, status="failed", error="boom")})
    assert agg.status == "ok" and agg.seeds == [0, 1] and agg.seed is None
    assert agg.dice == pytest.approx(0.6) and agg.dice_spread == pytest.approx(statistics.stdev([0.5, 0.7]))
    assert agg.dice_per_class_spread["organ"] == pytest.approx(agg.dice_spread)
    assert agg.macs == 3.0 and agg.train_seconds == 15.0 and agg.dice_per_seed == {0: 0.5, 1: 0.7}
    assert agg.notes == ["seed 0: n", "seed 2 failed: boom"]
    one = aggregate_rows({4: row(4, 0.5)})
    assert one.dice == 0.5 and one.dice_spread is None and one.dice_per_class_spread == {} and one.seeds == [4]
    failed = aggregate_rows({0: row(0, None, status="failed", error="boom")})
    assert failed.status == "failed" and failed.error == "boom"


def test_class_notes_say_what_a_foreground_mean_hides():
    notes = class_notes({"nnU-Net default": {"organ": 0.9, "lesion": 0.0, "vessel": 0.05},
                         "LUnet": {"organ": 0.7, "lesion": 0.87, "vessel": 0.02}}, reference="nnU-Net default")
    assert any(n.startswith("nnU-Net default did not learn 'lesion' (Dice 0.00; LUnet reaches 0.87)") for n in notes)
    assert any(n.startswith("No model learnt 'vessel'") for n in notes)
    assert any(n.startswith("LUnet reaches Dice 0.70 on 'organ' against 0.90 for nnU-Net default") for n in notes)
    assert class_notes({"a": {"organ": 0.9}, "b": {"organ": 0.88}}, reference="a") == []
    assert class_notes({"a": {"organ": None}}) == []
    assert format_dice(0.61234) == "0.612" and format_dice(0.6, 0.02) == "0.600 ± 0.020" and format_dice(None) == "-"


def test_the_magnitude_method_trains_at_the_sweeps_tau_with_the_users_other_settings(tmp_path):
    """The user's NNUNET_PRUNE_MAGNITUDE is parsed and only its tau replaced (never edited as a string); the dense
    model it starts from is named; the sweep's report is reused."""
    from nnunet_prune.tools.benchmark.pipeline import Layout, Narrator, Pipeline
    from nnunet_prune.tools.benchmark.state import RunState

    s = BenchmarkSettings(dataset="Dataset990_Fake", configuration="2d", folds=[0], methods=["dense", "magnitude"])
    layout = Layout(tmp_path, tmp_path / "seed_0", s.dataset, s.configuration)
    layout.sweep.mkdir(parents=True)
    (layout.sweep / "sweep.json").write_text(json.dumps({"critical_point": {"tau": 0.0042}}))
    runner = StepRunner({"NNUNET_PRUNE_MAGNITUDE": "tau=0.5; prune_bias=1"}, tmp_path)
    rows = {"magnitude": MethodResult("magnitude", "m", "t", "p")}
    pipeline = Pipeline(s, layout, runner, RunState(), Narrator(lambda line: None, s), rows, {})
    env = pipeline.method_env(method_spec("magnitude"))
    assert env == {"NNUNET_PRUNE_DENSE_MODEL": str(layout.model_folder(method_spec("dense"))),
                   "NNUNET_PRUNE_MAGNITUDE": "tau=0.0042,prune_bias=1"}
    assert rows["magnitude"].tau == 0.0042


def test_the_runner_logs_streams_records_and_says_why_a_step_failed(tmp_path):
    from nnunet_prune.tools.runner import StepFailed

    code = ("import sys; print('Please cite the following paper when using nnU-Net'); print('50%\\r100%'); "
            "print('ERROR: no such plans'); sys.exit(3)")
    logged = StepRunner({"NNUNET_PRUNE_EPOCHS": "2", "HOME": "/x"}, tmp_path, log_dir=tmp_path / "logs",
                        commands=tmp_path / "commands.sh", note_prefix="seed 0, ")
    with pytest.raises(StepFailed, match=r"train_fold_0 failed \(exit code 3; log: .*dense.train_fold_0.log\): "
                                         r"ERROR: no such plans"):
        logged.run("dense", "train_fold_0", [sys.executable, "-c", code], {"NNUNET_PRUNE_SEED": "4"})
    assert "100%" in (tmp_path / "logs" / "dense.train_fold_0.log").read_text()
    assert (tmp_path / "commands.sh").read_text().splitlines() == [
        "# seed 0, dense: train_fold_0",
        f"NNUNET_PRUNE_EPOCHS=2 NNUNET_PRUNE_SEED=4 python -c {shlex.quote(code)}"]
    shown: list[str] = []
    streamed = StepRunner({}, tmp_path, echo=shown.append)
    with pytest.raises(StepFailed, match=r"(?s)`python -c .*` failed \(exit code 3\). Last output:\n.*ERROR: no such"):
        streamed.run("dense", "train_fold_0", [sys.executable, "-c", code])
    assert shown[0].startswith("    $ python -c ") and shown[1:] == ["    | 100%", "    | ERROR: no such plans"]


class DistillSteps(FakeSteps):
    """MACs per method chosen so that a pruned student's distilled row is not its neighbour by MACs alone."""

    MACS = {"dense": 3.0, "lunet8": 2.0, "lunet8_distill": 2.0, "l2": 1.0, "l2_distill": 2.5}

    def measure(self, m) -> None:
        super().measure(m)
        row = self.rows[m.name]
        row.macs = row.parameters = 1e6 * self.MACS[m.name]
        row.initial_parameters = 1e6 * self.MACS["dense"] if m.trainer != "nnUNetTrainerDistill" else row.parameters


def commands(out: Path) -> dict[str, str]:
    """commands.sh as {comment: the command line under it} (the last of each)."""
    lines = (out / "commands.sh").read_text().splitlines()
    return {c[2:]: line for c, line in zip(lines, lines[1:]) if c.startswith("# ") and not line.startswith("#")}


def test_distilled_rows_learn_from_the_dense_model_of_their_seed(tmp_path, monkeypatch):
    """--distill's rows: trained after the dense model with NNUNET_PRUNE_TEACHER = that seed's dense folder and the
    user's NNUNET_PRUNE_DISTILL (the other rows with distillation off), in commands.sh, right after their student in
    the table and the CSV (distilled, student_of); a rerun reuses them."""
    from nnunet_prune.tools.benchmark.methods import table_order

    monkeypatch.setenv("NNUNET_PRUNE_DISTILL", "weight=0.5,temperature=2")
    monkeypatch.setenv("NNUNET_PRUNE_TEACHER", "/not/this/one")
    methods = table_order(["dense", "lunet8", "l2"], distill=True)
    assert methods == ["dense", "lunet8", "lunet8_distill", "l2", "l2_distill"]
    b = bench(tmp_path, seeds=2, cls=DistillSteps, methods=methods)
    md = b.run().read_text()
    out = b.out
    for seed in (0, 1):
        results = out / f"seed_{seed}" / "nnUNet_results" / "Dataset990_Fake"
        dense = str(results / "nnUNetTrainerBudget__nnUNetPlans__2d")
        trained = [m for s, m, step, *_ in b.calls if s == seed and step == "train_fold_0"]
        assert trained == methods  # the dense model (the teacher) first
        env = {m: b.envs[(seed, m, "train_fold_0")] for m in methods}
        for m in ("lunet8_distill", "l2_distill"):
            assert env[m]["NNUNET_PRUNE_TEACHER"] == dense and env[m]["NNUNET_PRUNE_DISTILL"] == \
                "weight=0.5,temperature=2"
        assert env["l2_distill"]["NNUNET_PRUNE_DENSE_MODEL"] == dense
        assert {env[m]["NNUNET_PRUNE_DISTILL"] for m in ("dense", "lunet8", "l2")} == {"0"}  # no teacher there
        assert (results / "nnUNetTrainerDistill__nnUNetLUnetPlans_8__2d" / "fold_0" / "checkpoint_final.pth").is_file()
        assert (results / "nnUNetTrainerStructuredL2_iterative_distill__nnUNetPlans__2d" / "fold_0").is_dir()
        line = commands(out)[f"seed {seed}, lunet8_distill: train_fold_0"]
        assert f"NNUNET_PRUNE_TEACHER={dense} " in line and "NNUNET_PRUNE_DISTILL=weight=0.5,temperature=2 " in line
        assert line.endswith("nnUNetv2_train 990 2d 0 -tr nnUNetTrainerDistill -p nnUNetLUnetPlans_8 -device cpu")
        assert "NNUNET_PRUNE_DISTILL=0 " in commands(out)[f"seed {seed}, lunet8: train_fold_0"]
        assert "-tr nnUNetTrainerStructuredL2_iterative_distill -p nnUNetPlans" in \
            commands(out)[f"seed {seed}, l2_distill: train_fold_0"]
    rows = read_csv(out)
    assert list(rows) == ["l2", "l2_distill", "lunet8", "lunet8_distill", "dense"]  # by MACs, each student's after it
    assert {m: (r["distilled"], r["student_of"]) for m, r in rows.items()} == {
        "l2": ("false", ""), "l2_distill": ("true", "l2"), "lunet8": ("false", ""),
        "lunet8_distill": ("true", "lunet8"), "dense": ("false", "")}
    assert rows["lunet8_distill"]["label"] == "LUnet 8 + distillation" and rows["lunet8_distill"]["seeds"] == "0 1"
    table = [line.split(" | ")[0] for line in md.split("![Dice")[0].splitlines() if line.startswith("| ")]
    assert table[1:] == ["| structured L2 (iterative)", "| structured L2 (iterative) + distillation", "| LUnet 8",
                         "| LUnet 8 + distillation", "| nnU-Net default"]
    assert "'+ distillation' rows: their method (CSV: student_of) trained with the same budget" in md
    assert "LUnet 8 + distillation: nothing was removed" not in md  # nnUNetTrainerDistill prunes nothing
    again = bench(tmp_path, seeds=2, cls=DistillSteps, methods=methods)
    again.run()
    assert again.calls == []  # every training reused


def test_the_distilled_environment_of_one_row(tmp_path):
    """method_env: a distilled row gets the dense folder as its teacher (and as its start where it starts from it);
    an undistilled row gets distillation off only where the user's NNUNET_PRUNE_DISTILL would switch it on."""
    from nnunet_prune.tools.benchmark.pipeline import Layout, Narrator, Pipeline
    from nnunet_prune.tools.benchmark.state import RunState

    s = BenchmarkSettings(dataset="Dataset990_Fake", configuration="2d", folds=[0], methods=["dense"])
    layout = Layout(tmp_path, tmp_path / "seed_3", s.dataset, s.configuration)
    dense = str(layout.model_folder(method_spec("dense")))

    def env(name, user):
        pipeline = Pipeline(s, layout, StepRunner(user, tmp_path), RunState(), Narrator(lambda line: None, s), {}, {})
        return pipeline.method_env(method_spec(name))

    assert env("l2_distill", {}) == {"NNUNET_PRUNE_DENSE_MODEL": dense, "NNUNET_PRUNE_TEACHER": dense}
    assert env("pspseg_s_distill", {"NNUNET_PRUNE_DISTILL": "1"}) == {"NNUNET_PRUNE_TEACHER": dense}
    assert env("lunet16", {}) == {} and env("lunet16", {"NNUNET_PRUNE_DISTILL": " "}) == {}
    assert env("lunet16", {"NNUNET_PRUNE_DISTILL": "weight=1"}) == {"NNUNET_PRUNE_DISTILL": "0"}
    assert env("dense", {"NNUNET_PRUNE_DISTILL": "1"}) == {"NNUNET_PRUNE_DISTILL": "0"}


@pytest.mark.parametrize("methods, user, words", [
    (["lunet16_distill", "stamp_distill"], "", "lunet16_distill, stamp_distill learn from the benchmark's dense"),
    (["dense", "lunet16_distill"], "0", "cannot train with your NNUNET_PRUNE_DISTILL='0'"),
    (["dense", "lunet16_distill"], "temp=3", "unknown distill setting 'temp'"),
])
def test_distilled_rows_are_checked_before_any_work(methods, user, words):
    from nnunet_prune.tools.benchmark.settings import _check_distilled

    s = BenchmarkSettings(dataset="Dataset990_Fake", configuration="2d", folds=[0], methods=methods)
    with pytest.raises(NnUNetPruneError, match=words):
        _check_distilled(s, [method_spec(n) for n in methods], {"NNUNET_PRUNE_DISTILL": user})
    _check_distilled(s, [method_spec("dense")], {"NNUNET_PRUNE_DISTILL": user})  # nothing distilled: not read


def test_the_distill_option_and_explicit_distilled_names_on_the_command_line(tmp_path, monkeypatch, capsys):
    import nnunet_prune.tools.benchmark.benchmark

    fake_raw(tmp_path, monkeypatch)
    monkeypatch.setattr(nnunet_prune.tools.benchmark.benchmark, "Benchmark", FakeSteps)
    common = ["benchmark", "-d", "Dataset990_Fake", "-c", "2d", "--device", "cpu", "--runtimes", "none", "-o"]
    assert main([*common, str(tmp_path / "a"), "--methods", "lunet8,dense", "--distill"]) == 0
    # FakeSteps' MACs fall with the method's index: the distilled row is the cheapest, yet follows its student
    assert list(read_csv(tmp_path / "a")) == ["lunet8", "lunet8_distill", "dense"]
    assert main([*common, str(tmp_path / "b"), "--methods", "dense", "stamp_distill,lunet8_distill"]) == 0
    assert set(read_csv(tmp_path / "b")) == {"dense", "lunet8_distill", "stamp_distill"}
    capsys.readouterr()
    assert main([*common, str(tmp_path / "c"), "--methods", "dense", "magnitude_distill"]) == 2
    assert "magnitude has no distilled row" in capsys.readouterr().err and not (tmp_path / "c").exists()
    assert main([*common, str(tmp_path / "d"), "--methods", "dense,lunet8", "lunet8"]) == 2
    assert "names a method twice" in capsys.readouterr().err
