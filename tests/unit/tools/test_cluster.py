"""The executors' pieces without a cluster: sbatch options per kind of job, the job graph and its script (run for
real), the job record, the checks that need no Slurm, and what the benchmark keeps for its jobs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from nnunet_prune import NnUNetPruneError
from nnunet_prune.cli.main import main
from nnunet_prune.tools.benchmark.measure import store_measurement, stored_measurement
from nnunet_prune.tools.benchmark.rows import MethodResult
from nnunet_prune.tools.benchmark.settings import BenchmarkSettings
from nnunet_prune.tools.benchmark.state import RunState
from nnunet_prune.tools.cluster.graph import Job, JobGraph, carried_environment, write_script
from nnunet_prune.tools.cluster.job import JobRecord
from nnunet_prune.tools.cluster.slurm import SlurmOptions, require_commands, time_minutes


@pytest.mark.parametrize("text, minutes", [("90", 90), ("10:30", 11), ("12:00:00", 720), ("1-00", 1440),
                                           ("2-00:00:00", 2880), ("0:00:30", 1), ("UNLIMITED", None)])
def test_slurm_times_in_minutes(text, minutes):
    assert time_minutes(text) == minutes


def test_a_bad_time_is_refused():
    with pytest.raises(NnUNetPruneError, match="not a Slurm time"):
        time_minutes("two days")


def test_options_are_given_once_or_per_kind():
    o = SlurmOptions.parse({"partition": ["cpu", "training=gpu"], "gpus": ["training=1"], "time": ["04:00:00"],
                            "mem": None}, ["--constraint=a100", "training=--exclusive"], max_requeues=2)
    assert o.options("training") == {"partition": "gpu", "gpus": "1", "time": "04:00:00", "constraint": "a100",
                                     "exclusive": True}
    assert o.arguments("measurement") == ["--partition=cpu", "--time=04:00:00", "--constraint=a100"]
    assert o.partition("planning") == "cpu" and o.max_requeues == 2


@pytest.mark.parametrize("values, extra, words", [
    ({"gpus": ["1", "2"]}, [], "given twice"),
    ({"gpus": ["training=1", "training=2"]}, [], "given twice for training"),
    ({}, ["exclusive"], "give an sbatch option"),
    ({"time": ["training=soon"]}, [], "not a Slurm time"),
])
def test_bad_options_are_refused(values, extra, words):
    with pytest.raises(NnUNetPruneError, match=words):
        SlurmOptions.parse(values, extra)


def test_kinds_are_checked():
    with pytest.raises(NnUNetPruneError, match="'trainng' is not a kind of job.*planning, training"):
        SlurmOptions.parse({"time": ["trainng=1-00"]})
    with pytest.raises(NnUNetPruneError, match="this command has no prediction jobs"):
        SlurmOptions.parse({"gpus": ["prediction=1"]}, kinds=("training",))
    o = SlurmOptions.parse({}, ["--gres=gpu:1"])
    assert o.asks_for_gpus("training") and not SlurmOptions.parse({"gpus": ["training=1"]}).asks_for_gpus("measurement")


def test_slurm_options_without_the_slurm_executor_are_refused(capsys):
    assert main(["train-folds", "-d", "999", "-c", "2d", "--partition", "gpu"]) == 2
    assert "--partition only apply with --executor slurm" in capsys.readouterr().err


def test_no_sbatch_on_path_is_said_plainly(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(NnUNetPruneError, match="sbatch, squeue, scontrol, sinfo not found on PATH.*--executor "
                                               "commands"):
        require_commands()


def test_a_graph_keeps_its_order_and_refuses_what_cannot_run():
    with pytest.raises(ValueError, match="do not come before it"):
        JobGraph([Job("b", "training", ("true",), ("a",)), Job("a", "planning", ("true",))])
    with pytest.raises(ValueError, match="unknown kind"):
        JobGraph([Job("a", "cooking", ("true",))])
    with pytest.raises(ValueError, match="named twice"):
        JobGraph([Job("a", "planning", ("true",)), Job("a", "planning", ("true",))])
    assert carried_environment({"nnUNet_raw": "r", "HOME": "h", "NNUNET_PRUNE_SEED": "1"}) == \
        {"NNUNET_PRUNE_SEED": "1", "nnUNet_raw": "r"}


def test_the_script_runs_the_pending_jobs_in_order_with_their_dependencies(tmp_path):
    log = tmp_path / "order.txt"

    def step(name: str) -> tuple[str, ...]:
        return (sys.executable, "-c", f"import os; open({str(log)!r}, 'a').write('{name} ' + os.environ['nnUNet_x']"
                                      f" + '\\n')")

    graph = JobGraph([Job("plan", "planning", step("plan"), (), done=True),
                      Job("seed 0: a train fold 0", "training", step("a0"), ("plan",)),
                      Job("seed 0: b train fold 0", "training", step("b0"), ("plan", "seed 0: a train fold 0")),
                      Job("seed 0: b measure", "measurement", step("bm"), ("seed 0: b train fold 0",))],
                     {"nnUNet_x": "it's carried"}, tmp_path, "a test plan")
    script = write_script(graph, tmp_path / "jobs" / "jobs.sh", footer=[step("table")])
    text = script.read_text()
    assert "# job_2: seed 0: b train fold 0 (training; after job_1)" in text  # the done plan is not a job
    assert "# job_3: seed 0: b measure (measurement; after job_2)" in text and "plan (planning" not in text
    subprocess.run(["bash", str(script)], check=True, capture_output=True)
    assert log.read_text().splitlines() == [f"{n} it's carried" for n in ("a0", "b0", "bm", "table")]


def test_the_job_record_counts_attempts_and_requeues(tmp_path, monkeypatch):
    record = JobRecord(tmp_path / "records" / "fold_0.json")
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    assert record.start("fold 0", ["nnUNetv2_train"]) == 1
    record.end("requeued", "signalled")
    record.end("failed", "SystemExit")  # the requeue handler said it first: kept
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert record.start("fold 0", ["nnUNetv2_train"]) == 2
    record.end("done")
    data = record.read()
    assert [a["outcome"] for a in data["attempts"]] == ["requeued", "done"]
    assert [a["restart_count"] for a in data["attempts"]] == [0, 1] and record.requeues() == 1


def test_step_times_of_jobs_are_merged(tmp_path):
    job = RunState(tmp_path / "jobs" / "steps" / "a.json", tool=None)
    job.add_seconds("seed 0: dense train fold 0", 12.0)
    job.add_seconds("seed 0: dense train fold 0", 3.0, resumed=True)  # a requeued attempt adds
    job.save()
    assert not (tmp_path / "jobs" / "steps" / ".nnunet_prune_manifest.json").exists()
    main_state = RunState(tmp_path / "state.json")
    main_state.add_seconds("plan default", 4.0)
    main_state.merge_steps([job.file])
    assert main_state.data["steps"] == {"plan default": 4.0, "seed 0: dense train fold 0": 15.0}


def test_a_measurement_is_reused_only_with_the_same_settings(tmp_path):
    s = BenchmarkSettings("Dataset601_X", "2d", [0, 1], ["dense"], repeats=3, runtimes=[])
    row = MethodResult("dense", "nnU-Net default", "T", "P")
    from dataclasses import asdict

    before = asdict(row)
    row.parameters, row.macs, row.cpu_ms = 10.0, 20.0, 1.5
    file = tmp_path / "seed_0" / "measurements" / "dense.json"
    model = tmp_path / "model"
    for fold in (0, 1):
        (model / f"fold_{fold}").mkdir(parents=True)
        (model / f"fold_{fold}" / "checkpoint_final.pth").write_bytes(b"weights")
    store_measurement(row, before, file, s, model)
    assert set(json.loads(file.read_text())["fields"]) == {"parameters", "macs", "cpu_ms"}
    again = MethodResult("dense", "nnU-Net default", "T", "P", train_seconds=5.0)
    assert stored_measurement(again, file, s, model)
    assert (again.macs, again.cpu_ms, again.train_seconds) == (20.0, 1.5, 5.0)
    (model / "fold_1" / "checkpoint_final.pth").write_bytes(b"retrained")  # another model: measured again
    assert not stored_measurement(MethodResult("dense", "x", "T", "P"), file, s, model)
    store_measurement(row, before, file, s, model)
    s.repeats = 10
    assert not stored_measurement(MethodResult("dense", "x", "T", "P"), file, s, model)


def test_the_benchmark_plan_orders_every_step_after_what_it_needs(tmp_path, monkeypatch):
    from nnunet_prune.tools.benchmark.benchmark import Benchmark
    from nnunet_prune.tools.benchmark.jobs import BenchmarkJobs
    from nnunet_prune.tools.benchmark.methods import table_order

    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "pre"))
    s = BenchmarkSettings("Dataset601_X", "2d", [0, 1], table_order(["magnitude", "l2", "lunet8_distill", "dense"]),
                          test_images=str(tmp_path / "imagesTs"), test_labels=str(tmp_path / "labelsTs"), seeds=2,
                          executor="slurm")
    graph = BenchmarkJobs(Benchmark(s, tmp_path / "out")).graph()
    jobs = {j.name: j for j in graph.jobs}
    dense = ("seed 1: dense train fold 0", "seed 1: dense train fold 1")
    assert jobs["seed 1: magnitude sweep"].after == dense and jobs["seed 1: magnitude sweep"].kind == "prediction"
    assert jobs["seed 1: magnitude train fold 0"].after == ("plan", *dense, "seed 1: magnitude sweep")
    assert jobs["seed 1: l2 train fold 1"].after == ("plan", *dense)  # starts from the dense folds
    assert jobs["seed 1: lunet8_distill train fold 0"].after == ("plan", *dense)  # its teacher
    assert jobs["seed 0: l2 predict"].after == ("seed 0: l2 train fold 0", "seed 0: l2 train fold 1")
    assert jobs["seed 0: l2 measure"].after == ("seed 0: l2 predict",) and jobs["seed 0: l2 measure"].kind == \
        "measurement"
    assert len([n for n in jobs if n.endswith("measure")]) == 2 * 4 and not any(j.done for j in graph.jobs)
    assert jobs["seed 0: dense train fold 0"].command[-3:] == ("-o", str(tmp_path / "out"),
                                                                "seed 0: dense train fold 0")
