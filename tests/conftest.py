"""Shared fixtures: nnU-Net folders in a temp dir, stock console scripts run in subprocesses, tiny datasets and
models built once per test session (the integration tests share them to stay within CI's time budget)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest_plugins = ["tests.slurm_fixture"]  # the session's real Slurm cluster (fixture ``slurm``)

BIN = Path(sys.executable).parent
DATASET_2D = 601
DATASET_3D = 602


def script(name: str) -> str:
    path = BIN / name
    return str(path) if path.exists() else shutil.which(name) or name


class NnUNet:
    """nnU-Net's three folders in a temp dir and a runner for console scripts with them in the environment."""

    def __init__(self, base: Path):
        self.base = base
        self.raw, self.preprocessed, self.results = base / "raw", base / "preprocessed", base / "results"
        for p in (self.raw, self.preprocessed, self.results):
            p.mkdir(parents=True, exist_ok=True)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("nnUNet_", "NNUNET_PRUNE_"))}
        self.env.update({
            "nnUNet_raw": str(self.raw), "nnUNet_preprocessed": str(self.preprocessed),
            "nnUNet_results": str(self.results), "nnUNet_def_n_proc": "2", "nnUNet_compile": "f",
            "PYTHONUNBUFFERED": "1", "MPLBACKEND": "agg",
            # tiny training budgets for every trainer of this package, seeded: every training of the suite is the
            # same on every run (nnUNet_n_proc_DA=0 on the CPU), so no assertion depends on a lucky draw
            "NNUNET_PRUNE_EPOCHS": "2", "NNUNET_PRUNE_ITERS_PER_EPOCH": "4", "NNUNET_PRUNE_VAL_ITERS": "2",
            "NNUNET_PRUNE_SEED": "0",
        })

    def run(self, *cmd, env: dict | None = None, check: bool = True, timeout: int = 900,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
        cmd = [script(cmd[0]) if os.sep not in str(cmd[0]) else str(cmd[0]), *map(str, cmd[1:])]
        proc = subprocess.run(cmd, env={**self.env, **(env or {})}, capture_output=True, text=True,
                              timeout=timeout, cwd=cwd or self.base)
        if check and proc.returncode != 0:
            tail = (proc.stdout + "\n" + proc.stderr)[-6000:]
            raise AssertionError(f"{' '.join(cmd)} failed with exit code {proc.returncode}:\n{tail}")
        return proc

    def train(self, dataset: int, configuration: str, fold, trainer: str, *extra, env: dict | None = None,
              plans: str = "nnUNetPlans") -> Path:
        self.run("nnUNetv2_train", dataset, configuration, fold, "-tr", trainer, "-p", plans, "-device", "cpu",
                 *extra, env={"nnUNet_n_proc_DA": "0", **(env or {})})
        return self.model_folder(dataset, trainer, plans, configuration)

    def model_folder(self, dataset: int, trainer: str, plans: str, configuration: str) -> Path:
        ds = next(p.name for p in self.results.iterdir() if p.name.startswith(f"Dataset{dataset:03d}_"))
        return self.results / ds / f"{trainer}__{plans}__{configuration}"

    def raw_dataset(self, dataset: int) -> Path:
        return next(p for p in self.raw.iterdir() if p.name.startswith(f"Dataset{dataset:03d}_"))

    def preprocessed_dataset(self, dataset: int) -> Path:
        return next(p for p in self.preprocessed.iterdir() if p.name.startswith(f"Dataset{dataset:03d}_"))


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


@pytest.fixture(scope="session")
def nnunet(tmp_path_factory) -> NnUNet:
    return NnUNet(tmp_path_factory.mktemp("nnunet"))


@pytest.fixture(scope="session")
def dataset2d(nnunet) -> Path:
    """Synthetic 2D phantom, 10 training and 3 test cases of 32x32, planned with the default planner and with
    LUnetPlanner (which reuses the default plan's preprocessed data)."""
    nnunet.run(sys.executable, "-m", "nnunet_prune.cli.main", "dataset", "synthetic", "-d", DATASET_2D,
               "--cases", 10, "--test-cases", 3, "--size", 32)
    nnunet.default_plan_output = nnunet.run("nnUNetv2_plan_and_preprocess", "-d", DATASET_2D, "-c", "2d",
                                            "-np", 2, "-npfp", 2).stdout
    nnunet.lunet_plan_output = nnunet.run("nnUNetv2_plan_and_preprocess", "-d", DATASET_2D, "-c", "2d", "-pl",
                                          "LUnetPlanner", "-np", 2, "-npfp", 2).stdout
    return nnunet.raw_dataset(DATASET_2D)


@pytest.fixture(scope="session")
def dense_model(nnunet, dataset2d) -> Path:
    """Folds 0 and 1 of the default network, trained for 2 x 4 iterations (validation probabilities kept)."""
    for fold in (0, 1):
        folder = nnunet.train(DATASET_2D, "2d", fold, "nnUNetTrainerBudget", "--npz")
    return folder


@pytest.fixture(scope="session")
def sauron_model(nnunet, dataset2d) -> Path:
    """Fold 0 of Sauron with thresholds forced high from the first epoch, so channels go during a 3-epoch run."""
    return nnunet.train(DATASET_2D, "2d", 0, "nnUNetTrainerSauron",
                        env={"NNUNET_PRUNE_EPOCHS": "3",
                             "NNUNET_PRUNE_SAURON": "tau_init=0.6,tau_max=0.9,kappa=2,rho=1,stat_batches=2"})


@pytest.fixture(scope="module")
def single_thread():
    """Unit tests of tiny networks: one intra-op thread avoids OpenMP oversubscription on a busy 2-core machine
    (30x faster there); the previous setting is restored afterwards. Use with pytest.mark.usefixtures."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
