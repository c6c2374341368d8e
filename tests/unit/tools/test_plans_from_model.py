"""``plans-from-model`` in-process on a tiny model folder: the plans reproduce the fold's architecture, the file is
recorded in the folder's manifest (the package's one "is this file ours?" record, with its SHA-256), and
``--overwrite`` replaces only that file unchanged. nnU-Net's folders are read as nnU-Net reads them."""

from __future__ import annotations

import json

import pytest

from nnunet_prune import NnUNetPruneError
from nnunet_prune.core.outputs import MANIFEST, is_own_file, read_manifest, record_files
from nnunet_prune.nnunet.settings import nnunet_folders
from nnunet_prune.tools.plans_from_model import MARKER, TOOL, plans_from_model
from tests.unit.tools.test_report import make_model_folder


@pytest.fixture
def pruned(tmp_path, monkeypatch):
    """(model folder with a pruned fold 1, the dataset's preprocessed folder with the source plans' data)."""
    folder, _ = make_model_folder(tmp_path / "results" / "Dataset999_Tiny", folds=(0, 1), pruned_folds=(1,))
    dataset = tmp_path / "preprocessed" / "Dataset999_Tiny"
    (dataset / "nnUNetPlans_2d").mkdir(parents=True)
    for var, sub in (("nnUNet_preprocessed", "preprocessed"), ("nnUNet_results", "results")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    return folder, dataset


def test_nnunet_folders_are_nnunets_own(tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    monkeypatch.setenv("nnUNet_raw", "")
    monkeypatch.delenv("nnUNet_preprocessed", raising=False)
    from nnunetv2 import paths

    assert nnunet_folders() == {"nnUNet_raw": None, "nnUNet_preprocessed": None, "nnUNet_results": str(tmp_path)}
    assert str(paths.nnUNet_results) == nnunet_folders()["nnUNet_results"]


def test_plans_reproduce_the_fold_and_are_recorded_as_ours(pruned, monkeypatch):
    folder, dataset = pruned
    result = plans_from_model(folder, 1, "nnUNetPrunedPlans")  # nnUNet_preprocessed from nnU-Net's paths
    target = dataset / "nnUNetPrunedPlans.json"
    assert result.plans_file == target and result.parameters[1] < result.parameters[0]
    plans = json.loads(target.read_text())
    assert plans["plans_name"] == "nnUNetPrunedPlans" and list(plans["configurations"]) == ["2d"]
    assert "sha256" not in plans[MARKER] and plans[MARKER]["fold"] == 1
    manifest = read_manifest(dataset)
    assert manifest["tool"] == TOOL and manifest["files"] == {target.name: target.stat().st_size}
    assert set(manifest["sha256"]) == {target.name} and is_own_file(dataset, target.name, TOOL)

    with pytest.raises(NnUNetPruneError, match="pass --overwrite"):
        plans_from_model(folder, 1, "nnUNetPrunedPlans")
    plans_from_model(folder, 0, "nnUNetPrunedPlans", overwrite=True)  # its own, unchanged: replaced
    text = target.read_text()
    edited = text.replace('"batch_size": 2', '"batch_size": 3')  # an edit that keeps the size
    assert edited != text and len(edited) == len(text)
    target.write_text(edited)
    assert not is_own_file(dataset, target.name, TOOL)
    with pytest.raises(NnUNetPruneError, match="changed since"):
        plans_from_model(folder, 1, "nnUNetPrunedPlans", overwrite=True)
    assert target.read_text() == edited

    # a model trained with the plans: even --overwrite leaves them
    target.write_text(text)
    (folder.parent / "nnUNetTrainer__nnUNetPrunedPlans__2d").mkdir()
    with pytest.raises(NnUNetPruneError, match="trained models use it"):
        plans_from_model(folder, 1, "nnUNetPrunedPlans", overwrite=True)


def test_a_file_the_tool_did_not_record_is_never_replaced(pruned):
    folder, dataset = pruned
    users = dataset / "MyPlans.json"
    users.write_text("{}")
    with pytest.raises(NnUNetPruneError, match="not written by plans-from-model"):
        plans_from_model(folder, 1, "MyPlans", overwrite=True)
    record_files(dataset, "report", [users.name])  # another tool's record proves nothing either
    with pytest.raises(NnUNetPruneError, match="not written by plans-from-model"):
        plans_from_model(folder, 1, "MyPlans", overwrite=True)
    assert users.read_text() == "{}" and (dataset / MANIFEST).is_file()


def test_without_nnunet_preprocessed_nothing_is_written(tmp_path, monkeypatch):
    folder, _ = make_model_folder(tmp_path, folds=(0,))
    monkeypatch.delenv("nnUNet_preprocessed", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(NnUNetPruneError, match="nnUNet_preprocessed is not set"):
        plans_from_model(folder, 0, "P")
