"""Model folders written by nnunet-prune 0.1 (before the layered layout) keep working: their plans and checkpoints
name this package's classes by the dotted paths of that version (``nnunet_prune.networks.AdaptivePlainConvUNet``,
``nnunet_prune.runtimes.RuntimeNetwork``, ``nnunet_prune.pspseg_network.PSPSegUNet``) and its trainers by name.
Stock ``nnUNetv2_predict_from_modelfolder`` segments the same images identically to what it gave then (the folders
and those segmentations were written by that version: tests/fixtures/make_legacy_folders.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.helpers import REPO, segmentations

LEGACY = REPO / "tests" / "fixtures" / "legacy"
FOLDERS = ["sauron_fold", "sauron_export", "sauron_openvino", "pspseg_fold"]


def network_class(folder: str) -> str:
    plans = json.loads((LEGACY / folder / "plans.json").read_text())
    return plans["configurations"]["2d"]["architecture"]["network_class_name"]


def test_the_fixtures_hold_the_old_dotted_paths():
    assert network_class("sauron_export") == "nnunet_prune.networks.AdaptivePlainConvUNet"
    assert network_class("sauron_openvino") == "nnunet_prune.runtimes.RuntimeNetwork"
    assert network_class("pspseg_fold") == "nnunet_prune.pspseg_network.PSPSegUNet"


@pytest.mark.slow
@pytest.mark.parametrize("folder", FOLDERS)
def test_a_legacy_folder_predicts_as_it_did(nnunet, tmp_path, folder):
    if folder.endswith("openvino"):
        pytest.importorskip("openvino")
    out = tmp_path / "pred"
    nnunet.run("nnUNetv2_predict_from_modelfolder", "-i", LEGACY / "images", "-o", out, "-m", LEGACY / folder,
               "-f", 0, "-device", "cpu", "-npp", 1, "-nps", 1, "--disable_progress_bar")
    expected, got = segmentations(LEGACY / "expected" / folder), segmentations(out)
    assert expected.keys() == got.keys() and len(expected) == 2
    assert all(np.array_equal(expected[k], got[k]) for k in expected)
