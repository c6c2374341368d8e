"""Runtimes behind nnU-Net's stock predictor (nnunet_prune.networks.runtime), in process: each runtime gives the PyTorch
logits of pruned 2D and 3D U-Nets; one RuntimeNetwork built as nnU-Net builds it runs folds of different widths one
after the other (an ensemble); bad names, options and missing packages are clear errors; slim 3D convolutions on the
CPU take oneDNN instead of ATen's slow kernel, with the same results."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from nnunet_prune import NnUNetPruneError
from nnunet_prune.networks.runtime import (
    RUNTIME_CLASS,
    RUNTIME_KEY,
    RuntimeNetwork,
    available_runtimes,
    check_options,
    pytorch_architecture,
    require_runtime,
    runtime_architecture,
    runtime_of,
    to_onnx,
)
from nnunet_prune.surgery import build_channel_graph
from tests.helpers import NORMS, make_network, randomize_norms

pytestmark = pytest.mark.usefixtures("single_thread")
ONNX_RUNTIMES = ["onnxruntime", "openvino"]


def pruned(seed: int, dim: int = 2, keep_pattern: int | None = None) -> nn.Module:
    """A randomly initialised width-adaptive U-Net (as exported folds are) with ``keep_pattern + 1`` channels removed
    from every wide group (``seed`` by default: folds of different widths)."""
    from nnunet_prune.networks import AdaptivePlainConvUNet

    torch.manual_seed(seed)
    net = make_network("plain", dim, ds=False, cls=AdaptivePlainConvUNet)
    randomize_norms(net, seed)
    graph = build_channel_graph(net)
    n = seed if keep_pattern is None else keep_pattern
    graph.prune({g.name: list(range(n + 1)) for g in graph if g.size > 4})
    return net.eval()


def fold_weights(net: nn.Module, onnx: bool, patch) -> dict:
    state = dict(net.state_dict())
    if onnx:
        state[RUNTIME_KEY] = torch.frombuffer(bytearray(to_onnx(net, patch)), dtype=torch.uint8)
    return state


def built_like_nnunet(runtime: str, dim: int = 2, options=None) -> RuntimeNetwork:
    """RuntimeNetwork constructed from plans-style keyword arguments, as get_network_from_plans does."""
    conv = nn.Conv2d if dim == 2 else nn.Conv3d
    return RuntimeNetwork(
        input_channels=2, num_classes=3, runtime=runtime, runtime_options=options,
        network_class_name="nnunet_prune.networks.AdaptivePlainConvUNet", n_stages=4,
        features_per_stage=[8, 16, 24, 24], conv_op=conv, kernel_sizes=3, strides=[1, 2, 2, 2],
        n_conv_per_stage=[2, 2, 1, 2], n_conv_per_stage_decoder=[1, 2, 2], conv_bias=True,
        norm_op=NORMS[("instance", dim)], norm_op_kwargs={"eps": 1e-5, "affine": True}, dropout_op=None,
        dropout_op_kwargs=None, nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=False)


@pytest.mark.parametrize("runtime", ONNX_RUNTIMES)
@pytest.mark.parametrize("dim", [2, 3])
def test_onnx_runtimes_give_the_pytorch_logits(runtime, dim):
    pytest.importorskip(runtime)
    net = pruned(1, dim)
    patch = (32,) * dim
    x = torch.randn(2, 2, *patch)
    with torch.no_grad():
        got, want = RuntimeNetwork.around(net, runtime, patch)(x), net(x)
    assert got.shape == want.shape and got.dtype == torch.float32
    assert (got - want).abs().max().item() <= 1e-4


@pytest.mark.parametrize("runtime", ONNX_RUNTIMES)
def test_one_network_runs_folds_of_different_widths_in_turn(runtime):
    """nnU-Net's predictor loads fold after fold into one network, for every case: each load must switch the
    runtime's model (cached sessions keyed by content, not by the last one used or by the widths: folds 0 and 2 have
    the same widths, different weights)."""
    pytest.importorskip(runtime)
    folds = [pruned(0), pruned(2), pruned(7, keep_pattern=0)]
    network = built_like_nnunet(runtime, options={"threads": 1}).eval()
    x = torch.randn(1, 2, 32, 32)
    for net in [*folds, folds[0]]:
        network.load_state_dict(fold_weights(net, True, (32, 32)))
        with torch.no_grad():
            assert (network(x) - net(x)).abs().max().item() <= 1e-4
    assert network.network.decoder is network.decoder  # nnU-Net switches deep supervision here


def test_torch_compile_runtime_follows_the_loaded_fold():
    """One compiled copy per width layout: loading another fold of the same widths copies its weights in."""
    folds = [pruned(0, keep_pattern=1), pruned(5, keep_pattern=1)]
    network = built_like_nnunet("torch-compile").eval()
    x = torch.randn(1, 2, 32, 32)
    for net in [*folds, folds[0]]:
        network.load_state_dict(fold_weights(net, False, None))
        with torch.no_grad():
            assert (network(x) - net(x)).abs().max().item() <= 1e-4


@pytest.mark.parametrize("runtime", ["onnxruntime"])
def test_nnunet_compile_leaves_the_runtime_alone(runtime):
    """nnUNet_compile=1 makes nnU-Net's predictor wrap the network in torch.compile (and load folds through
    _orig_mod): the runtime still runs, fold after fold."""
    pytest.importorskip(runtime)
    folds = [pruned(0), pruned(3)]
    network = built_like_nnunet(runtime).eval()
    network.load_state_dict(fold_weights(folds[0], True, (32, 32)))
    compiled = torch.compile(network)
    x = torch.randn(1, 2, 32, 32)
    for net in [*folds, folds[0]]:
        compiled._orig_mod.load_state_dict(fold_weights(net, True, (32, 32)))
        with torch.inference_mode():
            assert (compiled(x) - net(x)).abs().max().item() <= 1e-4


def test_training_and_deep_supervision_run_pytorch():
    pytest.importorskip("onnxruntime")
    network = built_like_nnunet("onnxruntime")
    network.load_state_dict(fold_weights(pruned(0), True, (32, 32)))
    network.decoder.deep_supervision = True
    with torch.no_grad():
        out = network.eval()(torch.randn(1, 2, 32, 32))
    assert isinstance(out, (list, tuple))  # PyTorch's deep-supervision outputs, not the ONNX model's


def test_fold_without_onnx_model_is_a_clear_error():
    pytest.importorskip("onnxruntime")
    with pytest.raises(NnUNetPruneError, match="export --runtime onnxruntime"):
        built_like_nnunet("onnxruntime").load_state_dict(pruned(0).state_dict())


def test_bad_runtime_names_and_options_are_clear_errors():
    with pytest.raises(NnUNetPruneError, match="known runtimes are pytorch, onnxruntime, openvino, torch-compile"):
        check_options("tensorflow", {})
    with pytest.raises(NnUNetPruneError, match="has no option 'precision'"):
        check_options("onnxruntime", {"precision": "bf16"})
    with pytest.raises(NnUNetPruneError, match="integer >= 0"):
        check_options("openvino", {"threads": -1})
    with pytest.raises(NnUNetPruneError, match="one of fp32, bf16"):
        check_options("openvino", {"precision": "int4"})
    assert check_options("openvino", {"threads": 2, "precision": "bf16"}) == {"threads": 2, "precision": "bf16"}


@pytest.mark.parametrize("runtime", ONNX_RUNTIMES)
def test_missing_runtime_package_says_what_to_install(monkeypatch, runtime):
    monkeypatch.setitem(sys.modules, runtime, None)  # as if it were not installed
    assert runtime not in available_runtimes()
    with pytest.raises(NnUNetPruneError, match=r'pip install "nnunet-prune\[deploy\]"'):
        require_runtime(runtime)
    with pytest.raises(NnUNetPruneError, match=r"nnunet-prune\[deploy\]"):
        built_like_nnunet(runtime)


def test_plans_entry_round_trip():
    arch = {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {"n_stages": 4, "conv_op": "torch.nn.modules.conv.Conv2d"},
            "_kw_requires_import": ["conv_op"]}
    entry = runtime_architecture(arch, "openvino", {"threads": 2}, "nnunet_prune.networks.AdaptivePlainConvUNet")
    assert entry["network_class_name"] == RUNTIME_CLASS and entry["_kw_requires_import"] == ["conv_op"]
    assert runtime_of(entry) == ("openvino", {"threads": 2}) and runtime_of(arch) is None
    back = pytorch_architecture(entry)
    assert back == {**arch, "network_class_name": "nnunet_prune.networks.AdaptivePlainConvUNet"}


def test_slim_3d_convolutions_take_onednn_with_the_same_results():
    """ATen runs a batch-1 3D convolution with few input channels in its slow native kernel; the adaptive U-Nets'
    OneDnnConv3d runs it in oneDNN (numerically the same up to float rounding); with gradients it takes the stock
    path."""
    from nnunet_prune.networks import OneDnnConv3d, use_onednn_conv3d

    torch.manual_seed(0)
    stock = nn.Conv3d(4, 6, 3, padding=1)
    fast = use_onednn_conv3d(nn.Sequential(nn.Conv3d(4, 6, 3, padding=1)))[0]
    fast.load_state_dict(stock.state_dict())
    assert type(fast) is OneDnnConv3d and set(fast.state_dict()) == set(stock.state_dict())
    x = torch.randn(1, 4, 16, 16, 16)

    def kernels(conv):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            out = conv(x)
        return out, {e.name for e in prof.events()}

    with torch.no_grad():
        want, stock_ops = kernels(stock)
        got, fast_ops = kernels(fast)
    assert "aten::slow_conv3d_forward" in stock_ops and "aten::slow_conv3d_forward" not in fast_ops
    assert "aten::mkldnn_convolution" in fast_ops
    assert (got - want).abs().max().item() <= 1e-5
    _, grad_ops = kernels(fast)  # gradients enabled: the stock path
    assert "aten::mkldnn_convolution" not in grad_ops


def test_export_notes_say_what_this_machine_cannot_run():
    from nnunet_prune.networks.runtime import deployment_notes

    assert deployment_notes("openvino", {"threads": 2}) == [] and deployment_notes("onnxruntime", {}) == []
    gpu_note = [n for n in deployment_notes("torch-compile", {}) if "meant for GPUs" in n]
    assert bool(gpu_note) == (not torch.cuda.is_available())
    ov = pytest.importorskip("openvino")
    has_bf16 = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    assert bool(deployment_notes("openvino", {"precision": "bf16"})) == (not has_bf16)
