"""The deployment runtimes' table and the checks of a runtime choice that need no import of torch or the runtime
(standard library only): ``nnunet-prune export`` and ``report`` check ``--runtime`` / ``--runtimes`` and their
options with these before their heavy imports. :mod:`nnunet_prune.networks.runtime` (which runs them) re-exports every
name.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from nnunet_prune import NnUNetPruneError

INSTALL_HINT = 'pip install "nnunet-prune[deploy]"'
#: what INT8 export (NNCF) needs installed
INT8_INSTALL_HINT = 'pip install "nnunet-prune[int8]"'


@dataclass(frozen=True)
class RuntimeSpec:
    """One runtime: its name, the Python package it needs, whether it runs the fold's ONNX model, the options it
    takes (name -> allowed values; ``threads`` is any int >= 0, 0 = the runtime's default) and what it is."""

    name: str
    package: str
    onnx: bool
    options: Mapping[str, tuple | None]
    description: str
    install: str = INSTALL_HINT


RUNTIMES: dict[str, RuntimeSpec] = {
    "onnxruntime": RuntimeSpec("onnxruntime", "onnxruntime", True, {"threads": None},
                               "ONNX Runtime (CPU; CUDA/TensorRT providers with onnxruntime-gpu)"),
    "openvino": RuntimeSpec("openvino", "openvino", True, {"threads": None, "precision": ("fp32", "bf16", "int8")},
                            "OpenVINO, CPU"),
    "torch-compile": RuntimeSpec("torch-compile", "torch", False, {"precision": ("bf16", "fp16", "fp32")},
                                 "torch.compile (CUDA: CUDA graphs under bf16 autocast)", install=""),
}


def runtime_spec(name: str) -> RuntimeSpec:
    """The :class:`RuntimeSpec` of ``name``.

    Raises:
        NnUNetPruneError: an unknown name (the message lists the known ones).
    """
    if name not in RUNTIMES:
        raise NnUNetPruneError(f"Unknown runtime {name!r}: known runtimes are pytorch, {', '.join(RUNTIMES)}.")
    return RUNTIMES[name]


def is_available(name: str) -> bool:
    """Whether the package ``name`` needs is installed (nothing is imported)."""
    try:
        return importlib.util.find_spec(runtime_spec(name).package) is not None
    except (ImportError, ValueError):
        return False


def available_runtimes() -> list[str]:
    """The runtimes of :data:`RUNTIMES` whose package is installed, in the table's order."""
    return [name for name in RUNTIMES if is_available(name)]


def check_options(name: str, options: Mapping | None) -> dict:
    """``options`` of runtime ``name`` validated (unknown keys, bad values): a plain dict.

    Raises:
        NnUNetPruneError: naming the option, the allowed values and the runtime.
    """
    spec = runtime_spec(name)
    out = {}
    for key, value in (options or {}).items():
        if key not in spec.options:
            allowed = ", ".join(spec.options) or "none"
            raise NnUNetPruneError(f"The runtime {name} has no option {key!r} (its options: {allowed}).")
        choices = spec.options[key]
        if choices is None:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise NnUNetPruneError(f"{name} option {key} must be an integer >= 0 (0: the runtime's default); "
                                       f"got {value!r}.")
        elif value not in choices:
            raise NnUNetPruneError(f"{name} option {key} must be one of {', '.join(choices)}; got {value!r}.")
        out[key] = value
    return out


def require_onnx_exporter() -> None:
    """Check that PyTorch's ONNX exporter can run (it needs the ``onnx`` package).

    Raises:
        NnUNetPruneError: ``onnx`` is missing (the message says what to install).
    """
    if importlib.util.find_spec("onnx") is None:
        raise NnUNetPruneError(f"Writing ONNX models needs the Python package onnx, which is not installed: "
                               f"{INSTALL_HINT}.")


def require_nncf() -> None:
    """Check that NNCF (INT8 post-training quantization) is installed, without importing it.

    Raises:
        NnUNetPruneError: it is not (one line: what to install).
    """
    if importlib.util.find_spec("nncf") is None:
        raise NnUNetPruneError(f"INT8 export needs NNCF, which is not installed: {INT8_INSTALL_HINT}")


def check_runtime_choice(runtime: str, options: Mapping | None) -> dict:
    """``runtime`` (``pytorch`` or a key of :data:`RUNTIMES`) and its ``options`` checked without importing anything:
    known, options it takes with valid values (:func:`check_options`), its package and, for the ONNX-based runtimes,
    ``onnx`` installed. Returns the options as a plain dict.

    Raises:
        NnUNetPruneError: options without a runtime, an unknown runtime or option, a bad value, a package that is
            not installed (the message says what to install).
    """
    if runtime == "pytorch":
        if options:
            raise NnUNetPruneError("Runtime options need a --runtime (onnxruntime, openvino or torch-compile).")
        return {}
    out = check_options(runtime, options)
    spec = runtime_spec(runtime)
    if not is_available(runtime):
        raise NnUNetPruneError(f"The runtime {runtime} needs the Python package {spec.package}, which is not "
                               f"installed: {spec.install or 'reinstall PyTorch'}.")
    if spec.onnx:
        require_onnx_exporter()
    if out.get("precision") == "int8":
        require_nncf()
    return out


def check_timed_runtimes(names: Sequence[str] | None) -> list[str]:
    """The deployment runtimes ``nnunet-prune report`` times next to PyTorch: ``names`` checked without importing
    them (known, installed, not ``torch-compile``, which is the compiled column; ``onnx`` installed to convert with),
    or every installed ONNX-based one for None (none without ``onnx``).

    Raises:
        NnUNetPruneError: ``none`` with other names, an unknown runtime, ``torch-compile``, or a package that is not
            installed (says what to install).
    """
    if names is None:
        found = [n for n in available_runtimes() if RUNTIMES[n].onnx]
        return found if importlib.util.find_spec("onnx") is not None else []  # (nothing to convert with)
    out = []
    timed = [n for n, spec in RUNTIMES.items() if spec.onnx]
    for name in dict.fromkeys(names):
        if name == "none":
            raise NnUNetPruneError("--runtimes none means no runtime: give it alone, not with other names.")
        if name not in RUNTIMES:
            raise NnUNetPruneError(f"--runtimes {name}: unknown; choose among {', '.join(timed)} (or none).")
        if name == "torch-compile":
            raise NnUNetPruneError("torch-compile is timed as the 'compiled' column (leave it out of --runtimes; "
                                   "--no-compile skips it).")
        check_runtime_choice(name, None)
        out.append(name)
    return out
