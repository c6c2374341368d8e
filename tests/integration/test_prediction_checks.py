"""Stock prediction stops with one line before any work: a checkpoint (-chk) a fold lacks names the checkpoints the
folds have (an export says how to export more), -device cuda without a GPU names -device cpu (a runtime folder:
where its runtime runs). The checks run inside nnU-Net's own predictor (the start-up hook wraps it)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from nnunet_prune import NnUNetPruneError
from nnunet_prune.nnunet.integration.prediction import check_checkpoints, check_device
from tests.conftest import read_json
from tests.helpers import segmentations

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")


def model_folder(tmp_path, runtime: str | None = None, exported: bool = False):
    """A model folder's files as the checks read them: plans.json (a runtime folder's architecture entry if asked),
    fold_0 with checkpoint_final.pth only."""
    arch = {"network_class_name": "nnunet_prune.networks.runtime.RuntimeNetwork", "arch_kwargs": {"runtime": runtime}} \
        if runtime else {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet"}
    (tmp_path / "plans.json").write_text(json.dumps({"configurations": {"2d": {"architecture": arch}}}))
    (tmp_path / "fold_0").mkdir()
    (tmp_path / "fold_0" / "checkpoint_final.pth").write_bytes(b"")
    if exported:
        (tmp_path / "export_summary.json").write_text("{}")
    return tmp_path


def test_a_checkpoint_a_fold_lacks_names_what_the_folds_have(tmp_path):
    folder = model_folder(tmp_path)
    check_checkpoints(folder, (0,), "checkpoint_final.pth")
    check_checkpoints(folder, None, "checkpoint_final.pth")
    with pytest.raises(NnUNetPruneError, match=r"no checkpoint_best.pth in fold_0 \(what they have: fold_0: "
                                               r"checkpoint_final.pth\)") as e:
        check_checkpoints(folder, (0,), "checkpoint_best.pth")
    assert "nnunet-prune export" not in str(e.value)
    with pytest.raises(NnUNetPruneError, match="fold_1: missing"):
        check_checkpoints(folder, ("0", "1"), "checkpoint_final.pth")
    with pytest.raises(NnUNetPruneError, match="no checkpoint_best.pth in fold_0"):  # nnU-Net would find no fold
        check_checkpoints(folder, None, "checkpoint_best.pth")


def test_an_export_says_how_to_export_the_checkpoint(tmp_path):
    folder = model_folder(tmp_path, exported=True)
    with pytest.raises(NnUNetPruneError, match="-chk checkpoint_final.pth checkpoint_best.pth"):
        check_checkpoints(folder, (0,), "checkpoint_best.pth")


@no_gpu
@pytest.mark.parametrize(("runtime", "needle"), [
    (None, "-device cuda asks for a GPU"),
    ("openvino", "runs through OpenVINO, which runs on the CPU: use -device cpu"),
    ("onnxruntime", "ONNX Runtime, whose CUDA provider needs a GPU"),
])
def test_cuda_without_a_gpu_names_device_cpu(tmp_path, runtime, needle):
    folder = model_folder(tmp_path, runtime)
    check_device(folder, torch.device("cpu"))
    with pytest.raises(NnUNetPruneError, match=needle) as e:
        check_device(folder, torch.device("cuda"))
    assert "-device cpu" in str(e.value)


def test_nnunets_predictor_runs_the_checks(tmp_path):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    assert hasattr(nnUNetPredictor.initialize_from_trained_model_folder, "_nnunet_prune_original")
    folder = model_folder(tmp_path)
    with pytest.raises(NnUNetPruneError, match="no checkpoint_best.pth in fold_0"):
        nnUNetPredictor(device=torch.device("cpu")).initialize_from_trained_model_folder(
            str(folder), (0,), checkpoint_name="checkpoint_best.pth")


@pytest.mark.slow
def test_export_of_several_checkpoints_predicts_with_each(nnunet, dataset2d, dense_model):
    """Export final and best; stock prediction with -chk checkpoint_best.pth from the export equals the source's."""
    out = nnunet.base / "exported_best"
    nnunet.run(sys.executable, "-m", "nnunet_prune.cli.main", "export", dense_model, "-o", out, "-f", 0,
               "-chk", "checkpoint_final.pth", "checkpoint_best.pth")
    assert {p.name for p in (out / "fold_0").glob("*.pth")} == {"checkpoint_final.pth", "checkpoint_best.pth"}
    summary = read_json(out / "export_summary.json")
    assert summary["checkpoints"] == ["checkpoint_final.pth", "checkpoint_best.pth"]
    assert [f["checkpoint"] for f in summary["folds"]] == ["checkpoint_final.pth", "checkpoint_best.pth"]
    assert all(f["max_abs_difference"] == 0.0 for f in summary["folds"])
    best = torch.load(out / "fold_0" / "checkpoint_best.pth", map_location="cpu", weights_only=False)
    assert best["nnunet_prune_export"]["checkpoint"] == "checkpoint_best.pth"
    preds = {}
    for name, folder in (("source", dense_model), ("export", out)):
        preds[name] = nnunet.base / f"pred_best_{name}"
        nnunet.run("nnUNetv2_predict_from_modelfolder", "-i", dataset2d / "imagesTs", "-o", preds[name], "-m",
                   folder, "-f", 0, "-chk", "checkpoint_best.pth", "-device", "cpu", "-npp", 1, "-nps", 1,
                   "--disable_progress_bar")
    a, b = segmentations(preds["source"]), segmentations(preds["export"])
    assert a.keys() == b.keys() and len(a) == 3 and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_stock_prediction_of_an_export_stops_with_one_line(nnunet, dataset2d, dense_model):
    """An export without checkpoint_best.pth asked for it, and an OpenVINO folder asked for -device cuda: one ERROR
    line, no traceback, nothing written into the output folder."""
    pytest.importorskip("openvino")
    out = nnunet.base / "exported_openvino_final"
    made = nnunet.run(sys.executable, "-m", "nnunet_prune.cli.main", "export", dense_model, "-o", out, "-f", 0,
                      "--runtime", "openvino")
    assert "also hold checkpoint_best.pth (not exported" in made.stdout
    cases = [("-chk", "checkpoint_best.pth", "-device", "cpu")]
    if not torch.cuda.is_available():
        cases.append(("-device", "cuda"))
    for i, extra in enumerate(cases):
        pred = nnunet.base / f"pred_refused_{i}"
        proc = nnunet.run("nnUNetv2_predict_from_modelfolder", "-i", dataset2d / "imagesTs", "-o", pred, "-m", out,
                          "-f", 0, *extra, "-npp", 1, "-nps", 1, "--disable_progress_bar", check=False)
        assert proc.returncode != 0
        errors = [line for line in proc.stderr.splitlines() if line.startswith("ERROR:")]
        assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        assert ("what they have: fold_0: checkpoint_final.pth" in errors[0]) if i == 0 else \
            ("OpenVINO, which runs on the CPU: use -device cpu" in errors[0])
        assert not pred.exists() or not any(pred.iterdir())
