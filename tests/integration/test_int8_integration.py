"""INT8 export behind stock prediction (stock console scripts in subprocesses): the folder predicts through
``nnUNetv2_predict_from_modelfolder`` with the Dice its check recorded, within ``--max-dice-drop`` of the float
model; a drop above the bound is refused and leaves nothing behind; a model whose dataset is not there is refused
before any work."""

from __future__ import annotations

import sys

import pytest
import torch

from tests.conftest import read_json

pytest.importorskip("openvino")
pytest.importorskip("nncf")
pytestmark = pytest.mark.slow

CLI = (sys.executable, "-m", "nnunet_prune.cli.main")
#: the export with its calibration patches scaled by 1e6 and only the scope "all": the input quantizer's step is
#: then 1e6 x max|patch| / 127, every real input rounds to 0, and the INT8 network gives the same class to every
#: voxel (background, for this network). Fold 0's 2 validation cases x 3 classes give 6 (case, class) Dice values; the
#: float model (a fixed, seeded training) scores 0.208 on them, and background everywhere scores 1 only where a class
#: is absent from the reference (1 of the 6) and 0 elsewhere: 1/6 = 0.167, a drop of 0.042, four times the bound.
BROKEN_CALIBRATION = """
import sys
import nnunet_prune.tools.export.int8 as int8
real, options = int8.calibration_patches, int8.Int8Options
int8.calibration_patches = lambda *a, **k: [p * 1e6 for p in real(*a, **k)]
int8.Int8Options = lambda *a, **k: options(*a, **k, scopes=("all",))
from nnunet_prune.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def _leftovers(out):
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def test_int8_folder_predicts_through_stock_predict_with_its_recorded_dice(nnunet, dataset2d, dense_model):
    out = nnunet.base / "int8_dense"
    proc = nnunet.run(*CLI, "export", dense_model, "-o", out, "--runtime", "openvino", "--int8", "-f", 0,
                      "--calibration-patches", 16)
    assert "INT8 check" in proc.stdout and "(kept)" in proc.stdout
    int8 = read_json(out / "export_summary.json")["int8"]
    assert int8["max_dice_drop"] == 0.01 and int8["accepted_scope"] in ("all", "ends-in-float")
    kept = {c["fold"]: c for c in int8["checks"] if c["scope"] == int8["accepted_scope"]}
    assert set(kept) == {0} and all(c["drop"] <= 0.01 and c["cases"] for c in kept.values())
    arch = read_json(out / "plans.json")["configurations"]["2d"]["architecture"]
    assert arch["arch_kwargs"]["runtime"] == "openvino"
    assert arch["arch_kwargs"]["runtime_options"]["precision"] == "int8"
    ckpt = torch.load(out / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    quantization = ckpt["nnunet_prune_export"]["quantization"]
    assert quantization["scope"] == int8["accepted_scope"] and quantization["tool"].startswith("nncf")
    assert quantization["calibration_patches"] == {"0": 8}  # fewer than asked: 8 training cases, one 32x32 tile each
    assert _leftovers(out) == []
    # an INT8 (runtime) folder is no float reference: refused before any work
    again = nnunet.run(*CLI, "export", out, "-o", nnunet.base / "int8_of_int8", "--runtime", "openvino", "--int8",
                       check=False)
    assert again.returncode == 2 and "runtime folder" in again.stderr and not (nnunet.base / "int8_of_int8").exists()
    # stock prediction of fold 0's validation cases through the INT8 folder, scored by nnU-Net's evaluation:
    # the Dice the check recorded
    images = nnunet.base / "int8_val_images"
    images.mkdir()
    for case in kept[0]["cases"]:
        for f in (dataset2d / "imagesTr").glob(f"{case}_*"):
            (images / f.name).symlink_to(f)
    pred = nnunet.base / "int8_val_pred"
    nnunet.run("nnUNetv2_predict_from_modelfolder", "-i", images, "-o", pred, "-m", out, "-f", 0, "-device", "cpu",
               "--disable_progress_bar")
    gt = nnunet.preprocessed_dataset(601) / "gt_segmentations"
    nnunet.run("nnUNetv2_evaluate_folder", gt, pred, "-djfile", out / "dataset.json", "-pfile", out / "plans.json",
               "-np", 1, "--chill")
    assert read_json(pred / "summary.json")["foreground_mean"]["Dice"] == pytest.approx(kept[0]["int8_dice"], abs=1e-9)
    # the fold's validation folder is the INT8 model's (what find_best_configuration and report read), not the source's
    validation = read_json(out / "fold_0" / "validation" / "summary.json")
    assert validation["foreground_mean"]["Dice"] == pytest.approx(kept[0]["int8_dice"], abs=1e-9)
    assert sorted(p.name for p in (out / "fold_0" / "validation").glob("*.nii.gz")) == \
        sorted(f"{c}.nii.gz" for c in kept[0]["cases"])


def test_a_drop_above_the_bound_is_refused_and_leaves_nothing(nnunet, dataset2d, dense_model):
    out = nnunet.base / "int8_refused"
    proc = nnunet.run(sys.executable, "-c", BROKEN_CALIBRATION, "export", dense_model, "-o", out, "--runtime",
                      "openvino", "--int8", "-f", 0, "--calibration-patches", 4, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith("ERROR: INT8 refused") and "(all: largest drop 0." in error
    assert float(error.split("largest drop ")[1].split(")")[0]) > 0.01  # (0.042 here, see above)
    assert "Nothing was written" in error
    assert not out.exists() and _leftovers(out) == []


def test_a_model_without_its_dataset_is_refused_before_any_work(nnunet, dataset2d, dense_model, tmp_path):
    out = tmp_path / "int8_nodata"
    proc = nnunet.run(*CLI, "export", dense_model, "-o", out, "--runtime", "openvino", "--int8",
                      env={"nnUNet_preprocessed": str(tmp_path)}, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("ERROR: ") and "is missing" in proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists() and _leftovers(out) == []
    wrong = nnunet.run(*CLI, "export", dense_model, "-o", out, "--runtime", "onnxruntime", "--int8", check=False)
    assert wrong.returncode == 2 and "--int8 runs through OpenVINO" in wrong.stderr and not out.exists()
