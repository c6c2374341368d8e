"""The teacher: its outputs are the predictor's network outputs (folds averaged), it fits the student or is refused
with the mismatch named, and its settings resolve nnU-Net's way."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from nnunet_prune import NnUNetPruneError
from nnunet_prune.nnunet.modelfolder import ModelFolder
from nnunet_prune.nnunet.teacher import DistillSettings, Teacher, fit_problems, open_teacher, teacher_folder
from tests.helpers import REPO

LEGACY = REPO / "tests" / "fixtures" / "legacy"


def _predictor_logits(folder, folds, x):
    """What nnUNetv2_predict's network gives on ``x`` for each fold (no mirroring), averaged."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                device=torch.device("cpu"), verbose=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(folder), use_folds=tuple(folds),
                                                   checkpoint_name="checkpoint_final.pth")
    outs = []
    for params in predictor.list_of_parameters:
        predictor.network.load_state_dict(params)
        predictor.network.eval()
        with torch.no_grad():
            outs.append(predictor.network(x))
    return sum(outs) / len(outs)


@pytest.mark.parametrize("name", ["sauron_fold", "pspseg_fold"])
def test_teacher_outputs_are_the_predictors_network_outputs(name, tmp_path):
    # two folds (a copy of the fold under another name): logits averaged as the predictor's network gives them
    folder = tmp_path / name
    shutil.copytree(LEGACY / name, folder)
    shutil.copytree(folder / "fold_0", folder / "fold_1")
    ckpt = torch.load(folder / "fold_1" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    ckpt["network_weights"] = {k: v * 1.5 if v.is_floating_point() else v for k, v in ckpt["network_weights"].items()}
    torch.save(ckpt, folder / "fold_1" / "checkpoint_final.pth")
    model = ModelFolder.open(folder)
    teacher = Teacher(model, torch.device("cpu"))
    x = torch.randn(2, model.num_input_channels, *model.patch_size, generator=torch.Generator().manual_seed(0))
    got = teacher(x)
    expected = _predictor_logits(folder, [0, 1], x)
    assert got.shape == expected.shape and got.dtype == torch.float32
    assert (got - expected).abs().max() <= 1e-5
    assert teacher.folds == [0, 1] and teacher.take_seconds()[1] == 1
    assert all(not p.requires_grad for net in teacher.networks for p in net.parameters())
    assert all(not net.training for net in teacher.networks)


def test_a_teacher_that_does_not_fit_is_refused_with_the_mismatch(tmp_path):
    teacher = ModelFolder.open(LEGACY / "sauron_fold")
    plans, dataset = teacher.plans, teacher.dataset_json
    assert fit_problems(teacher, plans, teacher.configuration_name, dataset) == []
    other_labels = {**dataset, "labels": {**dataset["labels"], "extra": 9}}
    assert any("labels" in p for p in fit_problems(teacher, plans, teacher.configuration_name, other_labels))
    two_channels = {**dataset, "channel_names": {"0": "a", "1": "b"}}
    assert any("input channels" in p for p in fit_problems(teacher, plans, teacher.configuration_name,
                                                           two_channels))
    cfg = teacher.configuration_name
    # the same labels in another order fit (output channels follow the label values); other channel names do not
    reordered = {**dataset, "labels": dict(reversed(list(dataset["labels"].items())))}
    assert fit_problems(teacher, plans, cfg, reordered) == []
    renamed = {**dataset, "channel_names": {"0": "T2"}}
    assert any("input channels ['ct'] (teacher) vs ['t2'] (student)" in p
               for p in fit_problems(teacher, plans, cfg, renamed))
    # a larger patch the teacher runs on fits; one that is not a multiple of its strides does not
    other = json.loads(json.dumps(plans))
    other["configurations"][cfg]["patch_size"] = [2 * s for s in other["configurations"][cfg]["patch_size"]]
    assert fit_problems(teacher, other, cfg, dataset) == []
    other["configurations"][cfg]["patch_size"] = [s + 1 for s in other["configurations"][cfg]["patch_size"]]
    other["configurations"][cfg]["spacing"] = [2 * s for s in other["configurations"][cfg]["spacing"]]
    problems = fit_problems(teacher, other, cfg, dataset)
    assert any("not a multiple of the teacher's total strides" in p for p in problems)
    assert any("spacing" in p for p in problems)
    with pytest.raises(NnUNetPruneError, match="does not fit the student: .*strides.*Nothing was written"):
        open_teacher("nnUNetTrainerDistill", other, cfg, dataset, DistillSettings(enabled=True),
                     {"NNUNET_PRUNE_TEACHER": str(LEGACY / "sauron_fold")})


def test_teacher_folder_variables_and_search(tmp_path, monkeypatch):
    plans = {"dataset_name": "Dataset001_X", "plans_name": "nnUNetLUnetPlans_16"}
    assert teacher_folder(plans, "2d", {"NNUNET_PRUNE_TEACHER": str(tmp_path / "t"),
                                        "NNUNET_PRUNE_DENSE_MODEL": str(tmp_path / "d")}) == tmp_path / "t"
    assert teacher_folder(plans, "2d", {"NNUNET_PRUNE_DENSE_MODEL": str(tmp_path / "d")}) == tmp_path / "d"
    import nnunetv2.paths

    monkeypatch.setattr(nnunetv2.paths, "nnUNet_results", str(tmp_path))
    with pytest.raises(NnUNetPruneError, match="needs a trained teacher.*nnUNetTrainer__nnUNetLUnetPlans_16__2d"):
        teacher_folder(plans, "2d", {})
    baseline = tmp_path / "Dataset001_X" / "nnUNetTrainer__nnUNetLUnetPlans_16__2d"  # the small LUnet baseline
    stock = tmp_path / "Dataset001_X" / "nnUNetTrainerBudget__nnUNetPlans__2d"
    for folder in (baseline, stock):
        (folder / "fold_0").mkdir(parents=True)
        (folder / "fold_0" / "checkpoint_final.pth").write_bytes(b"")
    assert teacher_folder(plans, "2d", {}) == stock  # the dense model of the stock plans, not the LUnet baseline
    assert teacher_folder(plans, "2d", {}, student_folder=stock) == baseline  # the student's own folder is skipped
    with pytest.raises(NnUNetPruneError, match="student's own model folder"):
        teacher_folder(plans, "2d", {"NNUNET_PRUNE_TEACHER": str(stock)}, student_folder=stock)


def test_settings_switch_on_with_the_variable_or_the_plans_entry_and_a_variant_fixes_them():
    assert not DistillSettings.resolve({}, {}).enabled
    assert DistillSettings.resolve({}, {"NNUNET_PRUNE_DISTILL": "1"}).enabled
    assert not DistillSettings.resolve({}, {"NNUNET_PRUNE_DISTILL": "off"}).enabled
    s = DistillSettings.resolve({}, {"NNUNET_PRUNE_DISTILL": "weight=0.5,folds=0+2"})
    assert s.enabled and s.weight == 0.5 and s.temperature == 3.0 and s.fold_list() == [0, 2]
    s = DistillSettings.resolve({"nnunet_prune": {"distill": {"temperature": 2}}}, {})
    assert s.enabled and s.temperature == 2.0
    assert DistillSettings.resolve({}, {}).as_dict() == {"enabled": False, "weight": 0.3, "temperature": 3.0,
                                                         "folds": ""}
    for text, match in (("maybe", "expected 1 / 0"), ("weight=-1", "weight must be >= 0"),
                        ("temperature=0", "temperature must be > 0"), ("folds=0+x", "folds"),
                        ("alpha=1", "unknown distill setting")):
        with pytest.raises(NnUNetPruneError, match=match):
            DistillSettings.resolve({}, {"NNUNET_PRUNE_DISTILL": text})
    with pytest.raises(NnUNetPruneError, match="contradicts enabled"):
        DistillSettings.resolve({}, {"NNUNET_PRUNE_DISTILL": "0"}, fixed={"enabled": True})


def test_default_folds_are_the_numbered_ones_and_a_plans_entry_may_list_them(tmp_path):
    folder = tmp_path / "teacher"
    shutil.copytree(LEGACY / "sauron_fold", folder)
    shutil.copytree(folder / "fold_0", folder / "fold_all")
    model = ModelFolder.open(folder)
    env = {"NNUNET_PRUNE_TEACHER": str(folder)}
    args = ("nnUNetTrainerDistill", model.plans, model.configuration_name, model.dataset_json)
    assert open_teacher(*args, DistillSettings(enabled=True), env).folds == [0]  # as nnUNetv2_predict: not fold_all
    assert open_teacher(*args, DistillSettings(enabled=True, folds="all"), env).folds == ["all"]
    assert open_teacher(*args, DistillSettings(enabled=True), env, folds=["all"]).folds == ["all"]  # --c: recorded
    listed = DistillSettings.resolve({"nnunet_prune": {"distill": {"folds": [0, "all"]}}}, {})
    assert listed.enabled and listed.fold_list() == [0, "all"]
