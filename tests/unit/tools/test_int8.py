"""INT8 export's parts: nnU-Net's sliding-window tiles, the sensitive nodes, NNCF quantization into a packed
OpenVINO IR that the runtime runs, and every refusal before work."""

from __future__ import annotations

import argparse

import pytest
import torch
from torch import nn

from nnunet_prune import NnUNetPruneError
from nnunet_prune.core import runtime_specs
from nnunet_prune.nnunet.calibration import tile_slicers
from nnunet_prune.tools.export.folder import ExportOptions
from nnunet_prune.tools.export.int8 import Int8Options, check_int8_request

pytest.importorskip("openvino")
pytest.importorskip("nncf")
pytestmark = pytest.mark.usefixtures("single_thread")


def _predictor_slicers(shape, patch, step=0.5):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

    predictor = nnUNetPredictor(tile_step_size=step, device=torch.device("cpu"))
    predictor.configuration_manager = ConfigurationManager({"patch_size": list(patch), "architecture": {}})
    return predictor._internal_get_sliding_window_slicers(tuple(shape))


@pytest.mark.parametrize("shape,patch,step", [((5, 70, 90), (64, 64), 0.5), ((80, 64, 100), (64, 48, 64), 0.5),
                                              ((3, 200, 130), (128, 96), 0.75)])
def test_tiles_are_nnunet_predictors_tiles(shape, patch, step):
    assert tile_slicers(shape, patch, step) == _predictor_slicers(shape, patch, step)


class _Tiny(nn.Module):
    """conv -> norm -> relu -> conv -> relu -> head: input 'x' (1, 1, 16, 16) -> (1, 3, 16, 16)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.head = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 3, 1)
        self.norm = nn.InstanceNorm2d(8, affine=True)

    def forward(self, x):
        return self.head(torch.relu(self.b(torch.relu(self.norm(self.a(x))))))


def _blob(net):
    import io

    buffer = io.BytesIO()
    torch.onnx.export(net.eval(), (torch.zeros(1, 1, 16, 16),), buffer, dynamo=False, input_names=["x"],
                      output_names=["logits"], opset_version=17)
    return buffer.getvalue()


def test_sensitive_nodes_are_the_first_convolution_and_the_head():
    from nnunet_prune.networks.runtime import read_openvino
    from nnunet_prune.tools.export.quantize import sensitive_nodes

    model = read_openvino(_blob(_Tiny()))
    convs = [op.get_friendly_name() for op in model.get_ordered_ops() if op.get_type_name() == "Convolution"]
    assert len(convs) == 3
    assert sensitive_nodes(model) == [convs[0], convs[2]]


def test_quantized_ir_round_trips_and_runs_close_to_float():
    from nnunet_prune.networks.runtime import (
        RuntimeNetwork,
        clear_executors,
        is_openvino_ir,
        onnx_entries,
        read_openvino,
    )
    from nnunet_prune.tools.export.quantize import quantize_openvino

    net = _Tiny().eval()
    g = torch.Generator().manual_seed(1)
    patches = [torch.randn(1, 1, 16, 16, generator=g).numpy() for _ in range(8)]
    for scope in ("all", "ends-in-float"):
        blob = quantize_openvino(_blob(net), patches, scope)
        assert is_openvino_ir(blob) and not is_openvino_ir(_blob(net))
        ops = [op.get_type_name() for op in read_openvino(blob).get_ordered_ops()]
        assert "FakeQuantize" in ops
        model = RuntimeNetwork.around(net, "openvino", [16, 16])
        model.options = {"precision": "int8"}
        model.load_state_dict({**net.state_dict(), **onnx_entries(blob)})
        with torch.no_grad():
            x = torch.from_numpy(patches[0])
            out, ref = model.eval()(x), net(x)
        # 8-bit weights and activations: within a few quantization steps of the float logits
        assert float((out - ref).abs().max()) < 0.1 * float(ref.abs().max())
        clear_executors()
    with pytest.raises(NnUNetPruneError, match="at least one calibration patch"):
        quantize_openvino(_blob(net), [])
    with pytest.raises(NnUNetPruneError, match="Unknown INT8 scope"):
        quantize_openvino(_blob(net), patches, "half")


def test_an_int8_fold_refuses_other_runtimes_and_the_runtime_wrapper():
    from nnunet_prune.networks.runtime import RuntimeNetwork, onnx_entries, pack_openvino_ir, read_openvino

    net = _Tiny()
    with pytest.raises(NnUNetPruneError, match="export --runtime openvino --int8"):
        RuntimeNetwork.around(net, "openvino", [16, 16], {"precision": "int8"})
    model = RuntimeNetwork.around(net, "onnxruntime", [16, 16])
    model.load_state_dict({**net.state_dict(), **onnx_entries(pack_openvino_ir(read_openvino(_blob(net))))})
    with pytest.raises(NnUNetPruneError, match="ONNX Runtime cannot run"), torch.no_grad():
        model.eval()(torch.zeros(1, 1, 16, 16))


def test_missing_nncf_is_a_one_line_install_hint(monkeypatch):
    real = runtime_specs.importlib.util.find_spec
    monkeypatch.setattr(runtime_specs.importlib.util, "find_spec", lambda n, *a: None if n == "nncf" else real(n, *a))
    with pytest.raises(NnUNetPruneError) as e:
        runtime_specs.check_runtime_choice("openvino", {"precision": "int8"})
    assert str(e.value) == 'INT8 export needs NNCF, which is not installed: pip install "nnunet-prune[int8]"'
    with pytest.raises(NnUNetPruneError, match=r"nnunet-prune\[int8\]"):
        check_int8_request("src", "out", ExportOptions(runtime="openvino"), Int8Options())


@pytest.mark.parametrize("options,int8,words", [
    (ExportOptions(runtime="pytorch"), Int8Options(), "add --runtime openvino"),
    (ExportOptions(runtime="onnxruntime"), Int8Options(), "add --runtime openvino"),
    (ExportOptions(runtime="openvino"), Int8Options(max_dice_drop=1.5), "max-dice-drop must be in"),
    (ExportOptions(runtime="openvino"), Int8Options(max_dice_drop=-0.1), "max-dice-drop must be in"),
    (ExportOptions(runtime="openvino"), Int8Options(calibration_patches=0), "calibration-patches must be >= 1"),
    (ExportOptions(runtime="openvino", fp16=True), Int8Options(), "--int8 and --fp16"),
    (ExportOptions(runtime="openvino", magnitude_tau=0.01), Int8Options(), "--int8 and --magnitude-tau"),
    (ExportOptions(runtime="openvino", checkpoints=("checkpoint_final.pth", "checkpoint_best.pth")), Int8Options(),
     "one checkpoint"),
])
def test_bad_int8_requests_are_refused_before_work(tmp_path, options, int8, words):
    with pytest.raises(NnUNetPruneError, match=words):
        check_int8_request(tmp_path / "src", tmp_path / "out", options, int8)
    assert not (tmp_path / "out").exists()


def test_an_output_without_its_parent_folder_is_refused(tmp_path):
    with pytest.raises(NnUNetPruneError, match="parent folder does not exist"):
        check_int8_request(tmp_path / "src", tmp_path / "no" / "out", ExportOptions(runtime="openvino"), Int8Options())
    assert not (tmp_path / "no").exists()


def test_dice_of_a_class_absent_from_reference_and_prediction_counts_as_segmented():
    from nnunet_prune.tools.export.int8 import case_mean_dice

    nan = float("nan")
    summary = {"metric_per_case": [{"metrics": {"1": {"Dice": 0.8}, "2": {"Dice": nan}}},
                                   {"metrics": {"1": {"Dice": 0.6}, "2": {"Dice": 0.5}}}]}
    # class 1: (0.8 + 0.6) / 2; class 2: (1.0 + 0.5) / 2 -- nnU-Net's foreground_mean would be NaN here
    assert case_mean_dice(summary) == pytest.approx((0.7 + 0.75) / 2)
    # a fold whose validation cases lack a class entirely: finite, so the bound can be checked
    empty = {"metric_per_case": [{"metrics": {"1": {"Dice": 0.9}, "2": {"Dice": nan}}}]}
    assert case_mean_dice(empty) == pytest.approx(0.95)


def test_the_command_line_refuses_int8_with_precision(tmp_path):
    from nnunet_prune.cli import export

    args = argparse.Namespace(precision="bf16", int8=True, threads=None, runtime="openvino")
    with pytest.raises(NnUNetPruneError, match="leave out --precision"):
        export.run(args)
    args = argparse.Namespace(precision=None, int8=True, threads=None, runtime="pytorch")
    with pytest.raises(NnUNetPruneError, match="add --runtime openvino"):
        export.run(args)
    args = argparse.Namespace(precision=None, int8=False, threads=None, runtime="openvino", max_dice_drop=0.02)
    with pytest.raises(NnUNetPruneError, match="--max-dice-drop belong to --int8"):
        export.run(args)


def test_calibration_patch_count_must_be_positive():
    from nnunet_prune.nnunet.calibration import calibration_patches

    with pytest.raises(NnUNetPruneError, match=">= 1"):
        calibration_patches(None, None, None, 0)
