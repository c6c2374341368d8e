"""Fast runtimes behind nnU-Net's stock predictor: ONNX Runtime, OpenVINO and compiled PyTorch.

nnU-Net's predictor builds ONE network from the plans (``get_network_from_plans``), loads each fold's
``network_weights`` into it with ``load_state_dict`` and calls it on every sliding-window patch (and its mirrored
copies). :class:`RuntimeNetwork` is such a network: it holds the fold's PyTorch network (width-adaptive, so folds
may differ in width) and runs its inference path through a faster runtime. A model folder whose plans name this
class (``nnunet-prune export MODEL -o OUT --runtime NAME`` writes one) therefore predicts through stock
``nnUNetv2_predict`` with preprocessing, sliding window, test-time mirroring, resampling and export unchanged.

Each fold's checkpoint keeps its PyTorch weights (so ``nnunet-prune report``/``export`` read it as a PyTorch
folder) and, for the ONNX-based runtimes, the fold's ONNX model as a uint8 tensor under :data:`RUNTIME_KEY`.
Runtimes (:data:`RUNTIMES`):

* ``onnxruntime``: ONNX Runtime (CPU; the CUDA / TensorRT execution providers when the input is on a GPU and the
  installed ``onnxruntime-gpu`` has them);
* ``openvino``: OpenVINO on the CPU (float32 unless ``precision=bf16``);
* ``torch-compile``: ``torch.compile`` of the PyTorch network; on CUDA with CUDA graphs (``mode="reduce-overhead"``)
  under bf16 autocast (``precision``: bf16, fp16 or fp32).

Executors (sessions, compiled networks) are cached by model content and device: the predictor reloads every fold
for every case, which must not rebuild them. ONNX Runtime and OpenVINO are optional (``pip install
"nnunet-prune[deploy]"``), imported only when used; a missing one is a clear :class:`NnUNetPruneError`.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import importlib.util
import io
import pydoc
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from nnunet_prune import NnUNetPruneError, install_excepthook
from nnunet_prune.core.runtime_specs import (  # noqa: F401 (the table lives there: checked without importing torch)
    INSTALL_HINT,
    RUNTIMES,
    RuntimeSpec,
    available_runtimes,
    check_options,
    is_available,
    require_onnx_exporter,
    runtime_spec,
)
from nnunet_prune.core.stats import inference_outputs, input_channels, unwrap

#: the key of a fold's ONNX model (uint8 tensor) in its ``network_weights``
RUNTIME_KEY = "nnunet_prune_onnx_model"
#: the class name the plans of a runtime folder give (``get_network_from_plans`` locates it)
RUNTIME_CLASS = "nnunet_prune.networks.runtime.RuntimeNetwork"
#: every name of the class that plans may hold: this one and those written by earlier versions
RUNTIME_CLASSES = (RUNTIME_CLASS, "nnunet_prune.runtimes.RuntimeNetwork")
#: ONNX opset of the exported models
OPSET = 17
#: the first bytes of an OpenVINO IR (its XML and weights, packed by :func:`pack_openvino_ir`) stored under
#: :data:`RUNTIME_KEY` instead of an ONNX model: an INT8 fold (``nnunet-prune export --runtime openvino --int8``)
IR_MAGIC = b"nnunet-prune:openvino-ir:1\n"
def require_runtime(name: str):
    """The imported package of runtime ``name``.

    Raises:
        NnUNetPruneError: the name is unknown, or its package is missing or broken (the message says what to
            install).
    """
    spec = runtime_spec(name)
    try:
        return importlib.import_module(spec.package)
    except ImportError as e:
        raise NnUNetPruneError(f"The runtime {name} needs the Python package {spec.package}, which is not installed "
                               f"or does not import ({e}): {spec.install or 'reinstall PyTorch'}.") from None


def deployment_notes(runtime: str, options: Mapping | None) -> list[str]:
    """What a user should know about running ``runtime`` with ``options`` on THIS machine: bf16 that OpenVINO
    cannot run here (it then runs float32), compiled PyTorch without a GPU (measured slower than eager on a CPU)."""
    options = dict(options or {})
    notes = []
    if runtime == "openvino" and options.get("precision") == "bf16":
        ov = require_runtime("openvino")
        capabilities = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        if "BF16" not in capabilities:
            notes.append(f"this CPU has no bf16 support (OpenVINO offers {', '.join(capabilities)}): OpenVINO runs "
                         f"float32 here, and the check above compared float32. A CPU with AVX-512 BF16 or AMX runs "
                         f"bf16.")
    if options.get("precision") == "int8" and runtime == "openvino" and not _int8_dot_products():
        notes.append("this CPU has no INT8 dot-product instructions (AVX-512 VNNI, AVX-VNNI or AMX): the INT8 model "
                     "runs, but gains less over float32 than the figures of docs/deploy.md.")
    if runtime == "torch-compile" and not torch.cuda.is_available():
        notes.append("no CUDA GPU here: torch-compile then compiles for the CPU, which was slower than PyTorch eager "
                     "and than openvino in our measurements (docs/deploy.md). It is meant for GPUs (CUDA graphs "
                     "+ bf16); on a CPU use --runtime openvino.")
    return notes


def _int8_dot_products() -> bool:
    """Whether the CPU has INT8 dot-product instructions (Linux: /proc/cpuinfo; elsewhere assumed)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return True
    return not flags or bool({"avx512_vnni", "avx_vnni", "amx_int8"} & set(flags))


def to_onnx(network: nn.Module, patch_size: Sequence[int], opset: int = OPSET) -> bytes:
    """The inference path of ``network`` (deep supervision off, eval mode, float32) as an ONNX model:
    input ``x`` (1, C, *patch_size) -> ``logits`` (1, classes, *patch_size). The network's modes are restored.

    Raises:
        NnUNetPruneError: PyTorch's ONNX exporter needs packages that are missing.
    """
    net = unwrap(network)
    modes = {m: m.training for m in net.modules()}
    net.eval()
    x = torch.zeros((1, input_channels(net), *patch_size), device=next(net.parameters()).device)
    buffer = io.BytesIO()
    require_onnx_exporter()
    try:
        with inference_outputs(net), torch.no_grad(), warnings.catch_warnings():
            # (the tracer's warnings, e.g. that InstanceNorm uses instance statistics in eval mode: as in PyTorch)
            warnings.simplefilter("ignore")
            torch.onnx.export(net, (x,), buffer, dynamo=False, input_names=["x"], output_names=["logits"],
                              opset_version=opset)
    finally:
        for m, mode in modes.items():
            m.training = mode
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------------------ executors
Executor = Callable[[torch.Tensor], torch.Tensor]
#: executors (sessions, compiled networks) by model content, device and options, least recently used first
_EXECUTORS: OrderedDict[tuple, object] = OrderedDict()
#: how many executors stay cached (an ensemble of 5 folds x a few runtimes; the oldest goes first)
MAX_EXECUTORS = 16
#: the key of a fold's ONNX model's SHA-1 (uint8 hex digits) in its ``network_weights``, written by the export so
#: that loading a fold for every case does not hash the model again
DIGEST_KEY = RUNTIME_KEY + "_sha1"


def clear_executors() -> None:
    """Drop every cached session and compiled network (e.g. after timing a fold)."""
    _EXECUTORS.clear()


def _cached(key: tuple, make: Callable[[], object]) -> object:
    if key in _EXECUTORS:
        _EXECUTORS.move_to_end(key)
    else:
        _EXECUTORS[key] = make()
        while len(_EXECUTORS) > MAX_EXECUTORS:
            _EXECUTORS.popitem(last=False)
    return _EXECUTORS[key]


def onnx_entries(blob: bytes) -> dict[str, torch.Tensor]:
    """The ``network_weights`` entries that carry an ONNX model: the model (uint8) and its digest."""
    return {RUNTIME_KEY: torch.frombuffer(bytearray(blob), dtype=torch.uint8), DIGEST_KEY: onnx_digest(blob)}


def onnx_digest(blob: bytes) -> torch.Tensor:
    """The SHA-1 of an ONNX model as a uint8 tensor of its hex digits (stored next to the model by the export)."""
    return torch.tensor(list(hashlib.sha1(blob).hexdigest().encode()), dtype=torch.uint8)


def _onnxruntime(blob: bytes, device: torch.device, options: dict) -> Executor:
    if is_openvino_ir(blob):
        raise NnUNetPruneError("This fold holds an OpenVINO INT8 model, which ONNX Runtime cannot run: its plans must "
                               "name the runtime openvino (export again with --runtime openvino --int8).")
    ort = require_runtime("onnxruntime")
    so = ort.SessionOptions()
    if options.get("threads"):
        so.intra_op_num_threads = options["threads"]
    providers: list = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        # (TensorRT builds an engine per fold and process, minutes: not by default)
        providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
    session = ort.InferenceSession(blob, so, providers=providers)

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {"x": x.detach().float().cpu().numpy()})[0])

    run.providers = session.get_providers()
    return run


def pack_openvino_ir(model) -> bytes:
    """An ``openvino.Model`` as one blob for :data:`RUNTIME_KEY`: :data:`IR_MAGIC`, the XML's length (8 bytes,
    little-endian), the XML, the weights. :func:`read_openvino` reads it back."""
    import tempfile

    ov = require_runtime("openvino")
    with tempfile.TemporaryDirectory(prefix="nnunet_prune_ir_") as tmp:
        ov.save_model(model, f"{tmp}/model.xml", compress_to_fp16=False)
        xml = Path(tmp, "model.xml").read_bytes()
        weights = Path(tmp, "model.bin").read_bytes()
    return IR_MAGIC + len(xml).to_bytes(8, "little") + xml + weights


def is_openvino_ir(blob: bytes) -> bool:
    """Whether a stored model blob is a packed OpenVINO IR (else an ONNX model)."""
    return bytes(blob[:len(IR_MAGIC)]) == IR_MAGIC


def read_openvino(blob: bytes):
    """The ``openvino.Model`` of a stored blob: a packed IR (:func:`pack_openvino_ir`) or an ONNX model."""
    ov = require_runtime("openvino")
    core = ov.Core()
    if not is_openvino_ir(blob):
        return core.read_model(io.BytesIO(blob))
    start = len(IR_MAGIC) + 8
    end = start + int.from_bytes(blob[len(IR_MAGIC):start], "little")
    weights = np.frombuffer(blob[end:], dtype=np.uint8).copy()
    return core.read_model(blob[start:end].decode(), ov.Tensor(weights))


def _openvino(blob: bytes, device: torch.device, options: dict) -> Executor:
    ov = require_runtime("openvino")
    core = ov.Core()
    config = {"PERFORMANCE_HINT": "LATENCY",
              "INFERENCE_PRECISION_HINT": "bf16" if options.get("precision") == "bf16" else "f32"}
    if options.get("threads"):
        config["INFERENCE_NUM_THREADS"] = options["threads"]
    compiled = core.compile_model(read_openvino(blob), "CPU", config)
    request = compiled.create_infer_request()

    def run(x: torch.Tensor) -> torch.Tensor:
        request.infer({0: x.detach().float().cpu().numpy()})
        return torch.from_numpy(np.array(request.get_output_tensor(0).data, copy=True))

    return run


def _compiled(network: nn.Module, device: torch.device, options: dict) -> Executor:
    precision = options.get("precision", "bf16")
    cuda = device.type == "cuda"
    compiled = torch.compile(network, mode="reduce-overhead" if cuda else None)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    def run(x: torch.Tensor) -> torch.Tensor:
        if cuda and dtype is not None:
            with torch.autocast("cuda", dtype=dtype):
                return compiled(x).float().clone()  # CUDA graphs reuse their output memory: copy it out
        with torch.autocast(device.type, enabled=False):
            return compiled(x.float()).clone()

    return run


def _bytes(blob) -> bytes:
    return blob.cpu().numpy().tobytes() if torch.is_tensor(blob) else bytes(blob)


def _shapes(network: nn.Module) -> tuple:
    return tuple((k, tuple(v.shape)) for k, v in network.state_dict().items())


class RuntimeNetwork(nn.Module):
    """A network for nnU-Net's predictor that runs the fold's inference path through a runtime (module docstring).

    Constructed as ``get_network_from_plans`` constructs any architecture: ``network_class_name`` and the remaining
    keyword arguments build the PyTorch network (:attr:`network`); ``runtime`` names a key of :data:`RUNTIMES`,
    ``runtime_options`` its options (:func:`check_options`). Input (B, C, *spatial) float tensor; output float32
    logits (B, classes, *spatial) on the input's device. In training mode, with gradients, or with deep supervision
    on, the PyTorch network runs instead (nnU-Net's ``--val`` switches deep supervision off).

    Raises:
        NnUNetPruneError: unknown runtime or options, a missing runtime package (before nnU-Net reads any image),
            or a fold without its ONNX model.
    """

    def __init__(self, input_channels: int, num_classes: int, runtime: str, network_class_name: str,
                 runtime_options: dict | None = None, **network_kwargs):
        super().__init__()
        self._setup(runtime, runtime_options)
        cls = pydoc.locate(network_class_name)
        if cls is None:
            raise NnUNetPruneError(f"{network_class_name} (the network the runtime runs) cannot be imported.")
        self.network = cls(input_channels=input_channels, num_classes=num_classes, **network_kwargs)
        print(f"nnunet-prune: this model folder runs through {runtime}"
              + (f" {self.options}" if self.options else "") + f" ({RUNTIME_CLASS})", flush=True)

    @classmethod
    def around(cls, network: nn.Module, runtime: str, patch_size: Sequence[int],
               options: Mapping | None = None) -> RuntimeNetwork:
        """``network`` (a trained fold, any width; deep-copied, the original is not changed) run by ``runtime`` in
        this process, as a runtime folder would load it: what ``nnunet-prune report`` times. Eval mode.

        Raises:
            NnUNetPruneError: unknown runtime, options, or a missing runtime package.
        """
        if dict(options or {}).get("precision") == "int8":
            raise NnUNetPruneError("An INT8 runtime needs calibration patches and a Dice check: nnunet-prune export "
                                   "--runtime openvino --int8 writes one.")
        return cls._wrapping(network, runtime, options, lambda net: to_onnx(net, patch_size))

    @classmethod
    def from_stored(cls, network: nn.Module, runtime: str, options: Mapping | None, blob) -> RuntimeNetwork:
        """``network`` (a fold's PyTorch network; deep-copied) with the runtime model its runtime folder stores
        (``blob``: the ``runtime_model`` of :func:`nnunet_prune.nnunet.modelfolder.read_checkpoint`, an ONNX model
        or a packed OpenVINO IR), run by ``runtime`` with ``options`` exactly as stock prediction runs the folder
        (an INT8 fold included). Eval mode.

        Raises:
            NnUNetPruneError: unknown runtime or options, or a missing runtime package.
        """
        return cls._wrapping(network, runtime, options, lambda _: _bytes(blob))

    @classmethod
    def _wrapping(cls, network: nn.Module, runtime: str, options: Mapping | None,
                  model_of: Callable[[nn.Module], bytes]) -> RuntimeNetwork:
        """A copy of ``network`` (CPU, eval) run by ``runtime``; for the ONNX-based runtimes with the stored model
        ``model_of(copy)`` returns, as a fold's checkpoint would hold it."""
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self._setup(runtime, options)
        self.network = copy.deepcopy(unwrap(network)).cpu().eval()
        state = dict(self.network.state_dict())
        if self.spec.onnx:
            state.update(onnx_entries(model_of(self.network)))
        self.load_state_dict(state)
        return self.eval()

    def _setup(self, runtime: str, options: Mapping | None) -> None:
        try:
            self.spec = runtime_spec(runtime)
            self.options = check_options(runtime, options)
            require_runtime(runtime)
        except NnUNetPruneError:
            install_excepthook()  # nnU-Net's predictor does not catch it: print the message, not a traceback
            raise
        self._onnx: bytes | None = None
        self._key = ""
        self._token = object()  # which loaded weights a shared compiled copy must hold

    @property
    def runtime(self) -> str:
        """The runtime's name."""
        return self.spec.name

    @property
    def decoder(self) -> nn.Module:
        """The PyTorch network's decoder (where nnU-Net switches deep supervision)."""
        return self.network.decoder

    @property
    def encoder(self) -> nn.Module:
        """The PyTorch network's encoder."""
        return self.network.encoder

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Load a fold: its PyTorch weights into :attr:`network` (resized to them), its ONNX model (``RUNTIME_KEY``)
        kept for the runtime.

        Raises:
            NnUNetPruneError: an ONNX runtime and no ONNX model in ``state_dict``.
        """
        state = dict(state_dict)
        blob = state.pop(RUNTIME_KEY, None)
        digest = state.pop(DIGEST_KEY, None)
        if self.spec.onnx and blob is None:
            raise NnUNetPruneError(f"This fold holds no ONNX model ({RUNTIME_KEY!r} missing from network_weights): "
                                   f"export the model folder again with nnunet-prune export --runtime {self.runtime}.")
        result = self.network.load_state_dict(state, strict=strict, assign=assign)
        if blob is not None:
            self._onnx = blob  # turned into bytes only when a session is built
            if digest is None:
                digest = onnx_digest(_bytes(blob))
            self._key = bytes(digest.tolist()).decode()
        else:  # the network itself (class, strides, operators: its repr) and its widths
            self._key = f"{type(self.network).__qualname__}|{self.network!r}|{_shapes(self.network)!r}"
        self._token = object()
        return result

    def _executor(self, device: torch.device) -> Executor:
        key = (self.runtime, self._key, str(device), tuple(sorted(self.options.items())))
        if self.spec.onnx:
            if self._onnx is None:
                raise NnUNetPruneError("RuntimeNetwork: load a fold's network_weights first.")
            make = _onnxruntime if self.runtime == "onnxruntime" else _openvino
            return _cached(key, lambda: make(_bytes(self._onnx), device, self.options))
        # torch-compile: one compiled copy per network and device; the loaded fold's weights are copied into it
        entry = _cached(key, lambda: self._compiled_copy(device))
        if entry[2] is not self._token:
            with torch.no_grad():
                theirs = self.network.state_dict()
                for name, mine in entry[0].state_dict().items():
                    mine.copy_(theirs[name])  # in place: compiled graphs and CUDA graphs keep their addresses
            entry[2] = self._token
        return entry[1]

    def _compiled_copy(self, device: torch.device) -> list:
        net = copy.deepcopy(self.network).to(device).eval()
        try:
            return [net, _compiled(net, device, self.options), self._token]
        except Exception as e:
            raise NnUNetPruneError(f"torch.compile failed on {device} ({type(e).__name__}: {e}); the torch-compile "
                                   f"runtime needs a working inductor (a C++ compiler on the CPU, Triton on a GPU). "
                                   f"Use another --runtime.") from None

    @torch.compiler.disable  # nnUNet_compile=1 makes the predictor compile the network: the runtime is the compiler
    def forward(self, x: torch.Tensor):
        """(B, C, *spatial) -> (B, classes, *spatial) logits through the runtime, one sample at a time."""
        decoder = getattr(self.network, "decoder", None)
        if self.training or getattr(decoder, "deep_supervision", False) or (torch.is_grad_enabled() and
                                                                              x.requires_grad):
            return self.network(x)
        run = self._executor(x.device)
        out = [run(x[i:i + 1]) for i in range(x.shape[0])]
        return torch.cat(out).to(x.device)


def runtime_architecture(architecture: dict, runtime: str, options: Mapping | None = None,
                         network_class_name: str | None = None) -> dict:
    """A plans ``architecture`` entry that names :class:`RuntimeNetwork` running ``runtime`` on the network the entry
    described (``network_class_name`` replaces that class, e.g. by its width-adaptive one).

    Raises:
        NnUNetPruneError: unknown runtime or options.
    """
    options = check_options(runtime, options)
    inner = pytorch_architecture(architecture)
    kwargs = dict(inner["arch_kwargs"])
    kwargs.update(runtime=runtime, runtime_options=options,
                  network_class_name=network_class_name or inner["network_class_name"])
    return {**inner, "network_class_name": RUNTIME_CLASS, "arch_kwargs": kwargs}


def pytorch_architecture(architecture: dict) -> dict:
    """The PyTorch network's plans ``architecture`` entry behind a runtime entry (the entry itself otherwise)."""
    if architecture.get("network_class_name") not in RUNTIME_CLASSES:
        return architecture
    kwargs = dict(architecture["arch_kwargs"])
    name = kwargs.pop("network_class_name")
    kwargs.pop("runtime", None)
    kwargs.pop("runtime_options", None)
    return {**architecture, "network_class_name": name, "arch_kwargs": kwargs}


def runtime_of(architecture: dict) -> tuple[str, dict] | None:
    """(runtime name, options) of a plans ``architecture`` entry that names :class:`RuntimeNetwork`, else None."""
    if architecture.get("network_class_name") not in RUNTIME_CLASSES:
        return None
    kwargs = architecture.get("arch_kwargs", {})
    return kwargs.get("runtime"), dict(kwargs.get("runtime_options") or {})
