"""Seeded trainings: NNUNET_PRUNE_SEED (or a trainer class's `seed`) for every trainer of this package, validated
before any work, recorded in pruning_config.json; two seeded CPU runs are identical (slow test, stock nnUNetv2_train).
"""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from nnunet_prune import NnUNetPruneError
from nnunet_prune.nnunet.seeding import (
    SEED_VAR,
    check_seed,
    derived_seeds,
    method_rng,
    read_seed,
    seed_augmenter_workers,
    seed_everything,
)
from tests.conftest import DATASET_2D


@pytest.mark.parametrize("value, expected", [(0, 0), ("7", 7), (" 12 ", 12), (2 ** 32 - 1, 2 ** 32 - 1)])
def test_a_seed_is_a_whole_number_up_to_32_bits(value, expected):
    assert check_seed(value) == expected


@pytest.mark.parametrize("value", [-1, "abc", "1.5", 1.5, 2 ** 32, True, ""])
def test_anything_else_is_refused_naming_where_it_came_from(value):
    with pytest.raises(NnUNetPruneError, match=r"--seed=.*a seed is a whole number from 0 to 4294967295"):
        check_seed(value, "--seed")


def test_the_variable_wins_over_the_class_attribute_and_unset_means_unseeded():
    assert read_seed({}, None) is None
    assert read_seed({SEED_VAR: ""}, 3) == 3
    assert read_seed({SEED_VAR: "5"}, 3) == 5
    with pytest.raises(NnUNetPruneError, match=f"{SEED_VAR}='x'"):
        read_seed({SEED_VAR: "x"}, 3)
    with pytest.raises(NnUNetPruneError, match=r"nnUNetTrainerMine\.seed=-2"):
        read_seed({}, -2, "nnUNetTrainerMine")


def draws() -> tuple:
    return random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist(), torch.randint(0, 100, (4,)).tolist()


def test_seed_everything_makes_python_numpy_and_torch_repeat_their_draws():
    seed_everything(11)
    first = draws()
    seed_everything(11)
    assert draws() == first
    seed_everything(12)
    assert draws() != first


def test_derived_seeds_are_repeatable_and_differ_per_stream_rank_and_seed():
    assert derived_seeds(3, 2, 4) == derived_seeds(3, 2, 4)
    assert len(set(derived_seeds(3, 2, 4))) == 4
    assert derived_seeds(3, 2, 1) != derived_seeds(3, 3, 1) != derived_seeds(4, 2, 1)
    assert derived_seeds(3, 2, 1, rank=1) != derived_seeds(3, 2, 1, rank=0)
    assert method_rng(None) is None
    assert method_rng(5).integers(1 << 30, size=5).tolist() == method_rng(5).integers(1 << 30, size=5).tolist()


def test_trainer_seed_reads_the_variable_else_the_class_attribute(monkeypatch):
    from nnunet_prune.nnunet.trainers import nnUNetTrainerBudget, nnUNetTrainerSauron
    from nnunet_prune.nnunet.trainers.budget import trainer_seed

    class nnUNetTrainerBudget_seed3(nnUNetTrainerBudget):
        seed = 3

    monkeypatch.delenv(SEED_VAR, raising=False)
    assert trainer_seed(nnUNetTrainerBudget) is None and trainer_seed(nnUNetTrainerSauron) is None
    assert trainer_seed(nnUNetTrainerBudget_seed3) == 3
    monkeypatch.setenv(SEED_VAR, "9")
    assert trainer_seed(nnUNetTrainerBudget_seed3) == 9 and trainer_seed(nnUNetTrainerSauron) == 9
    monkeypatch.setenv(SEED_VAR, "-4")
    with pytest.raises(NnUNetPruneError, match="NNUNET_PRUNE_SEED='-4'"):
        trainer_seed(nnUNetTrainerSauron)


def test_the_methods_generator_comes_from_the_seed_unless_the_settings_have_their_own():
    from nnunet_prune.nnunet.trainers.base import nnUNetTrainerPruning

    def rng(seed, settings):
        return nnUNetTrainerPruning.method_rng(SimpleNamespace(seed=seed, method_settings=settings, local_rank=0))

    assert rng(None, None) is None
    assert rng(4, None).random() == rng(4, SimpleNamespace(seed=-1)).random()  # STAMP's seed -1: unseeded
    assert rng(4, SimpleNamespace(seed=2)) is None  # STAMP's own seed wins (the method seeds itself)


def test_budget_trainer_records_budget_and_seed_and_appends_a_resume(tmp_path):
    from nnunet_prune.nnunet.trainers.budget import write_plain_config

    trainer = SimpleNamespace(output_folder=str(tmp_path), num_epochs=2, num_iterations_per_epoch=4,
                              num_val_iterations_per_epoch=1, current_epoch=0, seed=7)
    path = write_plain_config(trainer, {"num_epochs": 2})
    config = json.loads(open(path).read())
    assert config["seed"] == 7 and config["method"] == {} and config["method_class"] is None
    assert config["budget"]["num_epochs"] == 2 and config["budget"]["overridden_by_environment"] == {"num_epochs": 2}
    trainer.current_epoch, trainer.seed = 1, 8  # --c from epoch 1, with another seed
    write_plain_config(trainer, {})
    again = json.loads(open(path).read())
    assert again["seed"] == 7 and again["started"] == config["started"]
    assert [(r["epoch"], r["seed"]) for r in again["resumes"]] == [(1, 8)]


class Numbers:
    """batchgenerators' data-loader protocol: each item holds its worker's id and one NumPy and one PyTorch draw."""

    def __init__(self):
        self.thread_id = 0
        self.infinite = True

    def set_thread_id(self, thread_id):
        self.thread_id = thread_id

    def __iter__(self):
        return self

    def __next__(self):
        return {"worker": self.thread_id, "draw": (float(np.random.rand()), float(torch.rand(1)))}


def worker_streams(seed: int | None, n: int = 12) -> dict[int, list]:
    from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter

    aug = NonDetMultiThreadedAugmenter(Numbers(), None, num_processes=2, num_cached=2, seeds=None, wait_time=0.002)
    try:
        next(aug)  # nnU-Net starts its augmenters unseeded
        if seed is not None:
            assert seed_augmenter_workers(aug, seed, 2)
            assert aug.seeds == derived_seeds(seed, 2, 2)
        streams: dict[int, list] = {0: [], 1: []}
        for _ in range(n):
            item = next(aug)
            streams[item["worker"]].append(item["draw"])
        return streams
    finally:
        aug._finish()


def test_augmentation_workers_get_their_own_seeds_and_repeat_their_draws():
    """Each worker's draws repeat (NumPy and PyTorch); which worker delivers next still depends on timing."""
    a, b = worker_streams(5), worker_streams(5)
    for worker in (0, 1):
        k = min(len(a[worker]), len(b[worker]))
        assert a[worker][:k] == b[worker][:k]
    assert a[0][:1] != a[1][:1]  # the workers do not share a stream (forked unseeded, PyTorch's would)
    from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter

    assert seed_augmenter_workers(SingleThreadedAugmenter(Numbers(), None), 5, 2) is False


# ---------------------------------------------------------------------------------------------- stock nnU-Net, slow
def train(nnunet, results, trainer: str, seed: str, env: dict | None = None):
    nnunet.run("nnUNetv2_train", DATASET_2D, "2d", 0, "-tr", trainer, "-device", "cpu",
               env={"nnUNet_results": str(results), "nnUNet_n_proc_DA": "0", SEED_VAR: seed, **(env or {})})
    return f"{nnunet.raw_dataset(DATASET_2D).name}/{trainer}__nnUNetPlans__2d"


def fold_record(results, folder) -> tuple[dict, str, dict, str]:
    fold = results / folder / "fold_0"
    ckpt = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    log = next(fold.glob("training_log_*.txt")).read_text()
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    scores = json.dumps({"foreground_mean": summary["foreground_mean"], "mean": summary["mean"],  # not the paths
                         "per_case": [case["metrics"] for case in summary["metric_per_case"]]})  # NaN == NaN
    return ckpt, scores, json.loads((fold / "pruning_config.json").read_text()), log


@pytest.mark.slow
@pytest.mark.parametrize("trainer, env", [
    ("nnUNetTrainerBudget", {}),
    # prunes while it trains: random channels of the criterion's groups from the method's generator (as Sauron's
    # reference channels), and targeted dropout (PyTorch's generator)
    ("nnUNetTrainerSTAMP_randomInBlock", {"NNUNET_PRUNE_STAMP": "per_step=0.2,start_fraction=0,stop_fraction=1,"
                                                                "max_dice_drop=0"}),
])
def test_two_seeded_trainings_are_identical(nnunet, dataset2d, tmp_path, trainer, env):
    """Stock nnUNetv2_train twice with the same NNUNET_PRUNE_SEED (nnUNet_n_proc_DA=0, CPU, each run its own
    nnUNet_results, Python's hash seed left random): the same weights, losses and validation Dice."""
    runs = []
    for name in ("a", "b"):
        results = tmp_path / name
        folder = train(nnunet, results, trainer, "7", env)
        runs.append(fold_record(results, folder))
    (ckpt_a, summary_a, config_a, log_a), (ckpt_b, summary_b, config_b, _) = runs
    weights_a, weights_b = ckpt_a["network_weights"], ckpt_b["network_weights"]
    assert list(weights_a) == list(weights_b)
    for key in weights_a:
        assert torch.equal(weights_a[key], weights_b[key]), key
    for key in ("train_losses", "val_losses", "mean_fg_dice"):
        assert str(ckpt_a["logging"][key]) == str(ckpt_b["logging"][key]), key  # (nan == nan as text)
    assert summary_a == summary_b
    assert config_a["seed"] == config_b["seed"] == 7
    assert "nnunet-prune: seed 7" in log_a


@pytest.mark.slow
def test_another_seed_gives_another_training(nnunet, dataset2d, tmp_path):
    weights = []
    for seed in ("1", "2"):
        results = tmp_path / seed
        ckpt = fold_record(results, train(nnunet, results, "nnUNetTrainerBudget", seed))[0]
        weights.append(ckpt["network_weights"])
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


@pytest.mark.parametrize("trainer", ["nnUNetTrainerBudget", "nnUNetTrainerSauron"])
def test_a_bad_seed_stops_the_trainer_before_nnunet_starts(monkeypatch, trainer):
    """Constructed as nnUNetv2_train constructs it (plans that nnU-Net's __init__ could not even read): the seed is
    refused first, before nnU-Net's __init__ creates the fold folder."""
    from nnunet_prune.nnunet import trainers

    monkeypatch.setenv(SEED_VAR, "seven")
    with pytest.raises(NnUNetPruneError, match="NNUNET_PRUNE_SEED='seven'"):
        getattr(trainers, trainer)({}, "2d", 0, {}, torch.device("cpu"))
