"""The checks before nnU-Net creates the fold folder, as plain functions: settings, caps, the plans' architecture
against what the method removes, the dense start, the method's objections to the network."""

from __future__ import annotations

import pytest

from nnunet_prune import NnUNetPruneError
from nnunet_prune.methods.base import MethodSettings, PruningMethod
from nnunet_prune.methods.pspseg import PSPSegMethod
from nnunet_prune.methods.sauron import SauronMethod
from nnunet_prune.nnunet.trainers import dense, preflight
from tests.helpers import make_network

UNET = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
PSPSEG = "nnunet_prune.networks.pspseg.PSPSegUNet"


def plans(network: str) -> dict:
    return {"plans_name": "nnUNetPlans", "dataset_name": "Dataset042_Toy",
            "configurations": {"2d": {"architecture": {"network_class_name": network, "arch_kwargs": {},
                                                       "_kw_requires_import": []}}}}


def test_settings_and_caps():
    assert preflight.method_settings(None, {}, {}, environ={}) is None
    settings = preflight.method_settings(SauronMethod, {"nnunet_prune": {"sauron": {"kappa": 4}}}, {"lambda": 0.0},
                                         environ={"NNUNET_PRUNE_SAURON": "rho=3"})
    assert (settings.kappa, settings.rho, settings.lambda_) == (4, 3, 0.0)
    preflight.check_max_ratio("T", None)
    preflight.check_max_ratio("T", 0.5)
    with pytest.raises(NnUNetPruneError, match=r"T\.pruning_max_ratio must be in \[0, 1\], got 1\.5"):
        preflight.check_max_ratio("T", 1.5)


def test_the_methods_generator_follows_the_seed_and_the_rank():
    assert preflight.method_generator(None, None) is None
    assert preflight.method_generator(None, 4).random() == preflight.method_generator(None, 4).random()
    assert preflight.method_generator(None, 4, rank=1).random() != preflight.method_generator(None, 4).random()


def test_the_plans_network_must_have_what_the_method_removes():
    preflight.check_architecture("nnUNetTrainerSauron", SauronMethod, plans(UNET), "2d")
    preflight.check_architecture("nnUNetTrainerPSPSeg", PSPSegMethod, plans(PSPSEG), "2d")
    preflight.check_architecture("nnUNetTrainerPruning", None, plans(PSPSEG), "2d")  # no method: any network
    preflight.check_architecture("T", SauronMethod, {}, "2d")  # unreadable plans: reported when the network is built
    with pytest.raises(NnUNetPruneError, match=r"nnUNetTrainerPSPSeg prunes the parallel branches.*-d 042 "
                                               r"-pl PSPSegPlanner_S.*Nothing was written"):
        preflight.check_architecture("nnUNetTrainerPSPSeg", PSPSegMethod, plans(UNET), "2d")
    with pytest.raises(NnUNetPruneError, match=r"nnUNetTrainerSauron removes channels of nnU-Net's U-Nets, but plans "
                                               r"nnUNetPlans build PSPSegUNet.*-tr nnUNetTrainerPSPSeg"):
        preflight.check_architecture("nnUNetTrainerSauron", SauronMethod, plans(PSPSEG), "2d")


def test_a_missing_dense_fold_is_named_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    environ = {dense.ENV_VAR: str(tmp_path / "dense_model")}
    with pytest.raises(NnUNetPruneError, match=r"starts from a trained dense fold, but .*dense_model/fold_0/"
                                               r"checkpoint_final\.pth does not exist\. Train it first"):
        preflight.dense_start("nnUNetTrainerMagnitude", plans(UNET), "2d", 0, {}, environ, ("nnUNetTrainer",))
    with pytest.raises(NnUNetPruneError, match=r"no fold_0/checkpoint_final\.pth in the folders of nnUNetTrainer, "
                                               r"nnUNetTrainerBudget .*train me first"):
        preflight.dense_start("nnUNetTrainerMagnitude", plans(UNET), "2d", 0, {}, {}, dense.DEFAULT_DENSE_TRAINERS,
                              hint="train me first")
    own = tmp_path / "Dataset042_Toy" / "nnUNetTrainerMagnitude__nnUNetPlans__2d" / "fold_0"
    own.mkdir(parents=True)
    (own / "checkpoint_latest.pth").write_bytes(b"")  # --c: checked when training starts, not now
    start = preflight.dense_start("nnUNetTrainerMagnitude", plans(UNET), "2d", 0, {}, environ, ("nnUNetTrainer",))
    assert start.checkpoint is None and start.path.endswith("dense_model/fold_0/checkpoint_final.pth")
    assert start.searched == ()


def test_the_methods_objections_to_the_network_stop_the_trainer():
    class Picky(PruningMethod):
        def network_problems(self, network, graph, patch_size):
            return [f"{len(graph)} groups at patch {tuple(patch_size)}"]

    class PickySettings(MethodSettings):
        NAME, ENV_VAR = "Picky", "NNUNET_PRUNE_PICKY"

    preflight.check_network("T", "2d", PruningMethod(MethodSettings()), make_network(), (16, 16))
    with pytest.raises(NnUNetPruneError, match=r"T cannot work on this 2d network: 15 groups at patch \(16, 16\)\. "
                                               r"Change NNUNET_PRUNE_PICKY or the plans entry 'nnunet_prune': "
                                               r"\{'picky': \.\.\.\}\. Nothing was written\."):
        preflight.check_network("T", "2d", Picky(PickySettings()), make_network(), (16, 16))
