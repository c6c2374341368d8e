"""The benchmark and plain folds on a real single-node Slurm (tests/slurm_fixture.py): the same table as the local
executor, requeue on the time-limit signal continuing with nnU-Net's --c (bounded), reruns that submit nothing
twice, and every bad input refused before a job is submitted."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import DATASET_2D

pytestmark = [pytest.mark.slow, pytest.mark.slurm]
PRUNE = [sys.executable, "-m", "nnunet_prune.cli.main"]
#: the columns a table computes from the trained models (wall times and latencies are measured, so they differ)
SAME = ("method", "status", "parameters", "nonzero_parameters", "macs_per_patch", "dice", "dice_source", "tau")


def table(folder: Path) -> dict[str, dict]:
    return {r["method"]: r for r in csv.DictReader(open(folder / "benchmark.csv"))}


def ledger(folder: Path) -> dict:
    return json.loads((folder / "jobs.json").read_text())


def test_a_benchmark_through_slurm_gives_the_local_table(nnunet, dataset2d, slurm, tmp_path):
    for run in ("local", "slurm"):  # each plans LUnet 8 for itself: not into the session's shared folder
        shutil.copytree(nnunet.preprocessed, tmp_path / f"pre_{run}")
    env = {"nnUNet_preprocessed": str(tmp_path / "pre_local"), **slurm.env}
    args = [*PRUNE, "benchmark", "-d", DATASET_2D, "-c", "2d", "-f", 0, 1, "--methods", "dense", "lunet8", "l2",
            "--epochs", 1, "--iters-per-epoch", 2, "--val-iters", 1, "--repeats", 1, "--runtimes", "none"]
    start = time.perf_counter()
    nnunet.run(*args, "-o", tmp_path / "local", env=env, timeout=900)
    local_s = time.perf_counter() - start

    env["nnUNet_preprocessed"] = str(tmp_path / "pre_slurm")
    out = tmp_path / "slurm"
    # one CPU per job: the 2-CPU node runs two jobs at once (each mostly starts Python and nnU-Net), as a cluster
    # would; every training is seeded and deterministic, so the order and overlap change no number compared here
    on_slurm = [*args, "-o", out, "--executor", "slurm", "--cpus", 1, "--time", "training=30", "--poll", 1]
    first = nnunet.run(*on_slurm, env=env)
    ids = {name: e["job_id"] for name, e in ledger(out / "jobs").items()}
    # planning (LUnet 8's plans) and, per method, its folds and its measurement; l2 starts from the dense folds
    assert len(ids) == 1 + 3 * 3 and first.stdout.count("submitted job") == 10
    assert ledger(out / "jobs")["seed 0: l2 train fold 0"]["after"] == \
        [ids["plan"], ids["seed 0: dense train fold 0"], ids["seed 0: dense train fold 1"]]
    assert "JOBID" in first.stdout and "PENDING" in first.stdout and not (out / "benchmark.csv").exists()

    again = nnunet.run(*on_slurm, env=env)  # while the jobs are queued or running: nothing is submitted twice
    assert "nothing to submit" in again.stdout and "submitted job" not in again.stdout
    assert {n: e["job_id"] for n, e in ledger(out / "jobs").items()} == ids

    start = time.perf_counter()
    waited = nnunet.run(*on_slurm, "--wait", env=env, timeout=900)
    slurm_s = time.perf_counter() - start
    assert "seed 0: l2 measure: done" in waited.stdout and "Table:" in waited.stdout
    mine, theirs = table(out), table(tmp_path / "local")
    assert list(mine) == list(theirs) and len(mine) == 3
    assert {k: {c: r[c] for c in SAME} for k, r in mine.items()} == \
        {k: {c: r[c] for c in SAME} for k, r in theirs.items()}
    assert all(r["status"] == "ok" for r in mine.values())
    state = json.loads((out / "benchmark_state.json").read_text())
    assert state["steps"]["seed 0: dense train fold 1"] > 0  # the jobs' own step times, collected
    print(f"tiny benchmark (3 methods x 2 folds): local {local_s:.0f} s, Slurm (waiting) {slurm_s:.0f} s")

    done = nnunet.run(*on_slurm, env=env)  # everything done: nothing submitted, the table written again
    assert "nothing to submit" in done.stdout and "Table:" in done.stdout


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.5)


def test_a_signalled_training_is_requeued_and_finishes_with_c(nnunet, dataset2d, slurm, tmp_path):
    results = tmp_path / "results"
    # checkpoint_latest.pth every 2 epochs (NNUNET_PRUNE_SAVE_EVERY; nnU-Net's own: 50), carried into the job; 12
    # epochs of 50 iterations (about 2 s each here): the signal, sent within a second of epoch 2's start, always
    # lands more than 15 s before the training could end
    env = {"nnUNet_results": str(results), "nnUNet_n_proc_DA": "0", "NNUNET_PRUNE_EPOCHS": "12",
           "NNUNET_PRUNE_ITERS_PER_EPOCH": "50", "NNUNET_PRUNE_SAVE_EVERY": "2", **slurm.env}
    cmd = [*PRUNE, "train-folds", "-d", DATASET_2D, "-c", "2d", "-tr", "nnUNetTrainerBudget", "-device", "cpu",
           "--executor", "slurm", "--cpus", "2", "--poll", "1"]
    nnunet.run(*cmd, "-f", 0, env=env)
    folder = next(results.glob("*/nnUNetTrainerBudget__nnUNetPlans__2d"))
    jobs = folder / "nnunet_prune_jobs"
    job_id = ledger(jobs)["fold 0"]["job_id"]
    # the epoch after the first checkpoint has begun: the checkpoint (end of epoch 1) is complete
    _wait_for(lambda: any(re.search(r": Epoch [2-9]\d*\s*$", line) for log in (folder / "fold_0").glob(
        "training_log_*.txt") for line in log.read_text().splitlines()), 120, "a first checkpoint")
    subprocess.run(["scancel", "--signal=USR1", job_id], env={**os.environ, **slurm.env}, check=True)
    finished = nnunet.run(*cmd, "-f", 0, "--wait", env=env, timeout=600)
    assert "fold 0: done (job " + job_id in finished.stdout  # the same job, requeued
    record = json.loads((jobs / "records" / "fold_0.json").read_text())
    assert [a["outcome"] for a in record["attempts"]] == ["requeued", "done"]
    assert record["attempts"][1]["restart_count"] == 1
    assert "requeue 1 of at most 3" in record["attempts"][0]["detail"]
    assert (folder / "fold_0" / "checkpoint_final.pth").is_file()
    command = (jobs / "logs" / "fold_0.attempt2.log").read_text().splitlines()[0]
    assert "nnUNetv2_train" in command and command.endswith(" --c")
    # the second attempt continued from the checkpoint: its training log starts at a later epoch than 0
    logs = sorted((folder / "fold_0").glob("training_log_*.txt"), key=lambda p: p.stat().st_mtime)
    assert len(logs) == 2
    epochs = [int(line.split("Epoch ")[1]) for line in logs[1].read_text().splitlines()
              if re.search(r": Epoch \d+\s*$", line)]
    assert epochs and epochs[0] >= 2, epochs

    # no requeue left: the signalled job fails, and a rerun submits it again
    nnunet.run(*cmd, "-f", 1, "--max-requeues", 0, env=env)
    first = ledger(jobs)["fold 1"]["job_id"]
    _wait_for(lambda: list((folder / "fold_1").glob("training_log_*.txt")), 120, "the training to start")
    subprocess.run(["scancel", "--signal=USR1", first], env={**os.environ, **slurm.env}, check=True)
    _wait_for(lambda: json.loads((jobs / "records" / "fold_1.json").read_text())["attempts"][-1]["outcome"]
              != "running", 60, "the job to end")
    record = json.loads((jobs / "records" / "fold_1.json").read_text())
    assert record["attempts"][-1]["outcome"] == "failed" and "--max-requeues 0 spent" in \
        record["attempts"][-1]["detail"]
    slurm.wait_idle(60)
    rerun = nnunet.run(*cmd, "-f", 0, 1, "--max-requeues", 0, "--wait", env=env, timeout=600)
    assert "submitted job" in rerun.stdout and ledger(jobs)["fold 1"]["previous"] == [first]
    assert "fold 1: done" in rerun.stdout and (folder / "fold_1" / "checkpoint_final.pth").is_file()


def _refused(nnunet, cmd, env, words: str) -> None:
    proc = nnunet.run(*cmd, env=env, check=False)
    assert proc.returncode == 2 and words in proc.stderr, proc.stderr + proc.stdout


def test_bad_input_is_refused_before_any_job_is_submitted(nnunet, dataset2d, slurm, tmp_path):
    results = tmp_path / "results"
    env = {"nnUNet_results": str(results), **slurm.env}
    cmd = [*PRUNE, "train-folds", "-d", DATASET_2D, "-c", "2d", "-tr", "nnUNetTrainerBudget", "-f", 0, "-device",
           "cpu", "--executor", "slurm"]
    before = slurm.squeue()
    _refused(nnunet, [*cmd, "--partition", "nosuch"], env, "Unknown partition 'nosuch' for the training jobs")
    _refused(nnunet, [*cmd, "--slurm-arg=--nodes=9"], env, "Slurm refuses the options of the training jobs")
    _refused(nnunet, [*cmd, "-tr", "nnUNetTrainerNoSuch"], env, "does not know the trainer")
    _refused(nnunet, cmd, {**env, "PATH": str(Path(sys.executable).parent)}, "sbatch, squeue, scontrol, sinfo not "
                                                                              "found on PATH")
    # a results folder the compute node does not see: a tmpfs mounted only where the command runs
    private = tmp_path / "private"
    private.mkdir()
    line = " ".join(f"'{c}'" for c in map(str, cmd))
    proc = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                           f"mount -t tmpfs none '{private}' && exec {line}"],
                          env={**nnunet.env, **env, "nnUNet_results": str(private / "results")}, capture_output=True,
                          text=True, timeout=300)
    said = proc.stderr
    assert proc.returncode == 2 and "could not read and write" in said and "compute nodes share" in said, said
    assert slurm.squeue() == before and not results.exists()  # nothing queued, nothing written
