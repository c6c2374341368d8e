"""INT8 post-training quantization of a fold with NNCF, for OpenVINO.

:func:`quantize_openvino` reads the float32 ONNX model of a fold (``nnunet_prune.networks.runtime.to_onnx``) into
OpenVINO and quantizes it with NNCF's OpenVINO backend (default ``performance`` preset: symmetric 8-bit weights per
output channel, 8-bit activations, fast bias correction; FakeQuantize operations that OpenVINO runs as INT8 kernels,
VNNI / AMX where the CPU has them), calibrated on sliding-window patches (:mod:`nnunet_prune.nnunet.calibration`).
The scope ``ends-in-float`` leaves :func:`sensitive_nodes` in float (NNCF's ignored scope): the first convolution (it
reads the raw intensities) and the segmentation head (it writes the logits nnU-Net averages over mirrors and folds).

Why not NNCF's ONNX backend (QDQ ONNX, which ONNX Runtime could run too): on a LiTS 2D U-Net its QDQ model run by
OpenVINO segmented 95.7 % of the validation voxels like float32, the OpenVINO backend's 99.2 % (docs/deploy.md).

NNCF is optional (``pip install "nnunet-prune[int8]"``); a missing one is a one-line :class:`NnUNetPruneError`.
Source: NNCF ``nncf.quantize`` (post-training quantization, OpenVINO backend).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from nnunet_prune import NnUNetPruneError
from nnunet_prune.core.runtime_specs import require_nncf

#: the names of the ways a fold can be quantized, in the order the INT8 export tries them
SCOPES = ("all", "ends-in-float")


def _nncf():
    require_nncf()
    import nncf

    logging.getLogger("nncf").setLevel(logging.ERROR)  # (its progress bars and notes are not the user's business)
    return nncf


def nncf_version() -> str:
    """The installed NNCF's version.

    Raises:
        NnUNetPruneError: NNCF is not installed (with :data:`INT8_INSTALL_HINT`).
    """
    return _nncf().__version__


def sensitive_nodes(model) -> list[str]:
    """The convolutions of an ``openvino.Model`` usually kept in float: those that read the model's input and those
    whose output reaches the model's output through no other convolution (the segmentation head). Operation names,
    in graph order."""
    conv = ("Convolution", "GroupConvolution")
    ops = list(model.get_ordered_ops())
    heads, stack, seen = set(), [r.input_value(0).get_node() for r in model.get_results()], set()
    while stack:
        node = stack.pop()
        if node.get_friendly_name() in seen:
            continue
        seen.add(node.get_friendly_name())
        if node.get_type_name() in conv:
            heads.add(node.get_friendly_name())
        else:
            stack += [v.get_node() for v in node.input_values()]
    first = {op.get_friendly_name() for op in ops if op.get_type_name() in conv and
             _reads_input(op.input_value(0).get_node())}
    return [op.get_friendly_name() for op in ops if op.get_friendly_name() in heads | first]


def _reads_input(node, depth: int = 3) -> bool:
    """Whether ``node`` is the model's input (Parameter), possibly behind a few conversions."""
    if node.get_type_name() == "Parameter":
        return True
    return depth > 0 and node.get_type_name() in ("Convert", "Reshape") and \
        any(_reads_input(v.get_node(), depth - 1) for v in node.input_values())


def quantize_openvino(blob: bytes, patches: Sequence[np.ndarray], scope: str = "all") -> bytes:
    """The INT8 version of the fold's float ONNX model ``blob`` as a packed OpenVINO IR
    (:func:`nnunet_prune.networks.runtime.pack_openvino_ir`), calibrated on ``patches`` (each float32
    ``(1, C, *patch)``, all of them used); ``scope`` ``ends-in-float`` keeps :func:`sensitive_nodes` in float.

    Raises:
        NnUNetPruneError: NNCF is missing (one line with the install command), no patch, an unknown scope, or NNCF
            failed (its message).
    """
    nncf = _nncf()
    from nnunet_prune.networks.runtime import pack_openvino_ir, read_openvino

    if not patches:
        raise NnUNetPruneError("INT8 quantization needs at least one calibration patch.")
    if scope not in SCOPES:
        raise NnUNetPruneError(f"Unknown INT8 scope {scope!r}: one of {', '.join(SCOPES)}.")
    model = read_openvino(blob)
    keep = sensitive_nodes(model) if scope == "ends-in-float" else []
    dataset = nncf.Dataset(list(patches), lambda x: np.asarray(x, dtype=np.float32))
    try:
        quantized = nncf.quantize(model, dataset, subset_size=len(patches),
                                  ignored_scope=nncf.IgnoredScope(names=keep) if keep else None)
    except Exception as e:  # NNCF's own errors carry no common base class
        raise NnUNetPruneError(f"NNCF could not quantize the fold's model ({type(e).__name__}: {e}).") from None
    return pack_openvino_ir(quantized)
