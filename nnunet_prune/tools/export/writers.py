"""One writer per runtime: how an exported fold is written for what stock ``nnUNetv2_predict`` runs it with.

The export (:mod:`nnunet_prune.tools.export.folder`) is load -> transform -> write -> verify, the same for every
runtime but for what a writer says:

* :meth:`FoldWriter.check_options` -- the runtime's options, checked before any work (standard library only);
* :meth:`FoldWriter.require` -- what the runtime needs imported, before any work;
* :meth:`FoldWriter.architecture` -- the plans' ``architecture`` entry of the written folder;
* :meth:`FoldWriter.record` -- what the checkpoint's ``nnunet_prune_export`` record adds;
* :meth:`FoldWriter.write` -- the fold's checkpoint file, as nnU-Net's predictor reads it;
* :meth:`FoldWriter.verify` -- the runtime's own check of the written fold (after the PyTorch check);
* :meth:`FoldWriter.notes` and :attr:`FoldWriter.holds` -- what the summary tells the user.

Every writer takes the same arguments; :data:`WRITERS` maps each runtime name to its writer class, and
``nnunet-prune export --runtime`` offers every name in it. **A new runtime is one new entry**: a subclass of
:class:`FoldWriter` (PyTorch folds; override what differs) or of :class:`RuntimeNetworkWriter` (folds run by
:class:`nnunet_prune.networks.runtime.RuntimeNetwork`), added to :data:`WRITERS` (or :func:`register_writer` from
other code); its name is then a choice of ``--runtime``::

    class ToyWriter(FoldWriter):
        runtime = "toy"
        holds = "the fold's PyTorch weights and a toy note"

        def write(self, fold_dir, fold, state, plans, info):
            target = super().write(fold_dir, fold, state, plans, info)
            (fold_dir / "toy.txt").write_text(f"{len(state)} tensors")
            return target

    register_writer(ToyWriter)

This module imports neither torch nor a runtime when it is imported (the command line reads :data:`WRITERS` to
build its options); the methods import what they use.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from nnunet_prune import NnUNetPruneError
from nnunet_prune.core.runtime_specs import check_runtime_choice

if TYPE_CHECKING:
    import torch

#: the checkpoint file nnU-Net writes at the end of training (``-chk`` default)
CHECKPOINT = "checkpoint_final.pth"
#: least fraction of voxels whose segmentation a runtime must reproduce at float32 (and at reduced precision)
MIN_AGREEMENT = {"fp32": 0.999, "reduced": 0.98}
#: largest max |logit difference| to PyTorch, relative to the largest |logit|, at float32 (and reduced precision):
#: nnU-Net averages logits over mirrors and folds, so the logits must match, not only their argmax
MAX_RELATIVE_DIFFERENCE = {"fp32": 2e-3, "reduced": 5e-2}


@dataclass
class FoldWork:
    """One fold on its way through the export: its checkpoint (as read, weights as a plain state dict), the network
    loaded and then transformed, and the logits the written fold must reproduce.

    ``reference``: logits (1, classes, *patch) of the transformed network on the export's test patch;
    ``source_output``: the logits before magnitude zeroing (with ``magnitude_tau``); both None without verification.
    """

    fold: int | str
    checkpoint: dict
    network: torch.nn.Module
    parameters_before: int
    checkpoint_name: str = CHECKPOINT
    #: the configuration's patch size in voxels, one entry per spatial axis (what an ONNX model is traced with)
    patch_size: Sequence[int] = ()
    sparsity: dict | None = None
    dead_channels: int = 0
    masked_blocks: int = 0
    reference: torch.Tensor | None = None
    source_output: torch.Tensor | None = None
    #: INT8 export: the fold's calibration patches, each float32 (1, C, *patch) (None otherwise)
    calibration: list | None = None


@dataclass(frozen=True)
class Int8Setup:
    """How an INT8 export quantizes (``nnunet-prune export --int8``): each fold's calibration patches (fold ->
    list of float32 ``(1, C, *patch)`` arrays) and the scope, a name of
    :data:`nnunet_prune.tools.export.quantize.SCOPES` (``all``, or ``ends-in-float``: the first convolution and the
    segmentation head kept in float)."""

    patches: dict
    scope: str = "all"


def nnunet_checkpoint(fold: FoldWork, state: dict, plans: dict, info: dict, trainer_name: str | None = None) -> dict:
    """The slim checkpoint of ``fold`` as nnU-Net's predictor reads it: ``state`` as its weights (no optimizer
    state), the trainer name (``trainer_name`` replaces the source's), init args with the export's ``plans``,
    mirroring axes and epoch, plus the export's own record ``info`` (``nnunet_prune_export``)."""
    init_args = dict(fold.checkpoint["init_args"])
    if isinstance(init_args.get("plans"), dict):
        init_args["plans"] = plans
    return {
        "network_weights": state,
        "trainer_name": trainer_name or fold.checkpoint["trainer_name"],
        "init_args": init_args,
        "inference_allowed_mirroring_axes": fold.checkpoint.get("inference_allowed_mirroring_axes"),
        "current_epoch": fold.checkpoint.get("current_epoch"),
        "nnunet_prune_export": info,
    }


class FoldWriter:
    """The base of every writer, and what the PyTorch writer does: ``fold_dir/<checkpoint name>`` holds the fold's
    weights for the plans' PyTorch network (:func:`nnunet_checkpoint`). ``options``: the runtime's options, checked
    (:meth:`check_options`).

    Raises:
        NnUNetPruneError: options the runtime does not take.
    """

    #: the runtime's name (``--runtime``; the key in :data:`WRITERS`)
    runtime: ClassVar[str] = ""
    #: what each written checkpoint holds, for the summary (None: the plain nnU-Net checkpoint, nothing to say)
    holds: ClassVar[str | None] = None

    #: INT8 export: how the folds are quantized (set by the export before any fold is written; None: float)
    int8: Int8Setup | None = None

    def __init__(self, options: Mapping | None = None):
        self.options = self.check_options(options)

    @classmethod
    def check_options(cls, options: Mapping | None) -> dict:
        """``options`` validated without importing anything (a plain dict). A runtime without options refuses any.

        Raises:
            NnUNetPruneError: an option the runtime does not take, or a bad value.
        """
        if options:
            raise NnUNetPruneError(f"The runtime {cls.runtime} takes no options (got {', '.join(options)}).")
        return {}

    def require(self) -> None:
        """Import what the runtime needs, before any work (nothing for PyTorch).

        Raises:
            NnUNetPruneError: a missing or broken package (the message says what to install).
        """

    def architecture(self, architecture: dict) -> dict:
        """The plans' ``architecture`` entry of the written folder, given the PyTorch network's (that one itself)."""
        return architecture

    def record(self, source_trainer: str) -> dict:
        """Entries the checkpoint's ``nnunet_prune_export`` record gets from the writer (``source_trainer``: the
        trainer that made the source folder)."""
        return {}

    def trainer_name(self, fold: FoldWork) -> str:
        """The trainer name the written checkpoint gives (nnU-Net's predictor builds the network with its
        ``build_network_architecture``): the source's."""
        return fold.checkpoint["trainer_name"]

    def weights(self, fold: FoldWork, state: dict) -> dict:
        """The checkpoint's ``network_weights``: ``state`` (the storable state dict of the transformed network)."""
        return state

    def write(self, fold_dir: Path, fold: FoldWork, state: dict, plans: dict, info: dict) -> Path:
        """Write ``fold_dir/<checkpoint name>`` (:func:`nnunet_checkpoint` of :meth:`weights`, with
        :meth:`trainer_name`); returns the file."""
        import torch

        target = fold_dir / fold.checkpoint_name
        torch.save(nnunet_checkpoint(fold, self.weights(fold, state), plans, info, self.trainer_name(fold)), target)
        return target

    def verify(self, folder: Path, fold: FoldWork, x: torch.Tensor) -> dict:
        """The runtime's own check of the written fold (``folder``: the written model folder; ``x``: the test patch,
        (1, C, *patch)); returns :class:`~nnunet_prune.tools.export.folder.FoldExport` fields to set. PyTorch: none
        (the export's own check loaded it back as PyTorch).

        Raises:
            NnUNetPruneError: the written fold does not reproduce the PyTorch network.
        """
        return {}

    def notes(self) -> list[str]:
        """What the user should know about the written folder on this machine (none for PyTorch)."""
        return []


class PyTorchWriter(FoldWriter):
    """PyTorch (``--runtime pytorch``, the default): the plain nnU-Net model folder."""

    runtime: ClassVar[str] = "pytorch"

    @classmethod
    def check_options(cls, options: Mapping | None) -> dict:
        """No options: they belong to a runtime.

        Raises:
            NnUNetPruneError: any option (it needs a ``--runtime``).
        """
        return check_runtime_choice(cls.runtime, options)


class RuntimeNetworkWriter(FoldWriter):
    """A writer for a runtime of :data:`nnunet_prune.core.runtime_specs.RUNTIMES`: the plans name
    :class:`~nnunet_prune.networks.runtime.RuntimeNetwork` running that runtime on the width-adaptive network (folds
    may differ in width), each checkpoint names nnU-Net's own trainer (a pruning trainer would build a U-Net) and its
    runtime's logits are checked against PyTorch's before the folder is written.
    """

    holds: ClassVar[str | None] = "the fold's PyTorch weights"

    @classmethod
    def check_options(cls, options: Mapping | None) -> dict:
        """:func:`~nnunet_prune.core.runtime_specs.check_runtime_choice`: known options with valid values, the
        runtime's package (and ``onnx`` for the ONNX-based ones) installed.

        Raises:
            NnUNetPruneError: as there.
        """
        return check_runtime_choice(cls.runtime, options)

    def require(self) -> None:
        """Import the runtime's package (a missing or broken one stops the export here, before any work).

        Raises:
            NnUNetPruneError: the package is missing or does not import.
        """
        from nnunet_prune.networks.runtime import require_runtime

        require_runtime(self.runtime)

    def architecture(self, architecture: dict) -> dict:
        """:func:`~nnunet_prune.networks.runtime.runtime_architecture` around the width-adaptive class."""
        from nnunet_prune.networks import adaptive_class_name
        from nnunet_prune.networks.runtime import runtime_architecture

        return runtime_architecture(architecture, self.runtime, self.options,
                                    adaptive_class_name(architecture["network_class_name"]))

    def record(self, source_trainer: str) -> dict:
        """The runtime, its options and the source's trainer; for INT8 how it was quantized."""
        out = {"runtime": self.runtime, "runtime_options": self.options, "source_trainer": source_trainer}
        if self.is_int8():
            from nnunet_prune.tools.export.quantize import nncf_version

            out["quantization"] = {
                "tool": f"nncf {nncf_version()}",
                "method": "post-training (OpenVINO backend), preset performance (symmetric int8 weights per channel, "
                          "int8 activations), fast bias correction",
                "scope": self.int8.scope,
                "calibration_patches": {str(f): len(p) for f, p in self.int8.patches.items()},
                "calibration": "sliding-window patches of the fold's preprocessed training cases"}
        return out

    def is_int8(self) -> bool:
        """Whether the folds are written as INT8 models."""
        return self.options.get("precision") == "int8"

    def trainer_name(self, fold: FoldWork) -> str:
        """``nnUNetTrainer``: nnU-Net's own trainer builds the plans' RuntimeNetwork."""
        return "nnUNetTrainer"

    def reduced_precision(self) -> bool:
        """Whether the runtime computes at reduced precision (the looser limits of :data:`MIN_AGREEMENT`)."""
        return self.options.get("precision", "fp32") != "fp32"

    def verify(self, folder: Path, fold: FoldWork, x: torch.Tensor) -> dict:
        """Build the written fold as nnU-Net's predictor does (plans -> RuntimeNetwork, the checkpoint's weights as
        they are stored) and compare the runtime's logits and segmentation with the PyTorch network's
        (``fold.reference``). Returns ``runtime_max_abs_difference`` and ``runtime_argmax_agreement``.

        Raises:
            NnUNetPruneError: the runtime segments fewer than :data:`MIN_AGREEMENT` of the voxels alike, or its
                logits differ by more than :data:`MAX_RELATIVE_DIFFERENCE` of the largest logit.
        """
        import torch
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        from nnunet_prune.nnunet.modelfolder import build_network

        pm = PlansManager(json.loads((folder / "plans.json").read_text()))
        cm = pm.get_configuration(fold.checkpoint["init_args"]["configuration"])
        net = build_network(pm, cm, json.loads((folder / "dataset.json").read_text()), "nnUNetTrainer")
        ckpt = torch.load(folder / f"fold_{fold.fold}" / fold.checkpoint_name, map_location="cpu", weights_only=False)
        net.load_state_dict(ckpt["network_weights"])
        reference = fold.reference
        if self.is_int8():  # a real calibration patch: a random one lies outside the calibrated ranges
            x = torch.from_numpy(fold.calibration[0])
            with torch.no_grad():
                reference = fold.network.eval()(x)
        with torch.no_grad():
            out = net.eval()(x)
        difference = float((out - reference).abs().max())
        agreement = float((out.argmax(1) == reference.argmax(1)).float().mean())
        if self.is_int8():  # recorded, not judged: the export's Dice check on the validation cases decides
            return {"runtime_max_abs_difference": difference, "runtime_argmax_agreement": agreement}
        level = "reduced" if self.reduced_precision() else "fp32"
        largest = max(float(reference.abs().max()), 1.0)
        if agreement < MIN_AGREEMENT[level] or difference > MAX_RELATIVE_DIFFERENCE[level] * largest:
            raise NnUNetPruneError(
                f"fold {fold.fold} ({fold.checkpoint_name}): the {net.runtime} model does not reproduce PyTorch on a "
                f"test patch: {agreement:.3%} of the voxels segmented alike (needed: {MIN_AGREEMENT[level]:.1%}), max "
                f"|logit diff| {difference:.3g} (allowed: {MAX_RELATIVE_DIFFERENCE[level] * largest:.3g}); nothing "
                f"was written. Use another --runtime (or float32 precision).")
        return {"runtime_max_abs_difference": difference, "runtime_argmax_agreement": agreement}

    def notes(self) -> list[str]:
        """:func:`~nnunet_prune.networks.runtime.deployment_notes` of the runtime and its options."""
        from nnunet_prune.networks.runtime import deployment_notes

        return deployment_notes(self.runtime, self.options)


class OnnxWriter(RuntimeNetworkWriter):
    """A runtime that runs the fold's ONNX model: each checkpoint holds it next to the PyTorch weights
    (:func:`~nnunet_prune.networks.runtime.onnx_entries`)."""

    holds: ClassVar[str | None] = "the fold's PyTorch weights and its ONNX model"

    def weights(self, fold: FoldWork, state: dict) -> dict:
        """``state`` plus the fold's ONNX model, traced with the configuration's patch size; INT8: quantized on the
        fold's calibration patches, stored as a packed OpenVINO IR
        (:func:`nnunet_prune.tools.export.quantize.quantize_openvino`).

        Raises:
            NnUNetPruneError: INT8 without calibration patches (only ``export --int8`` provides them), or NNCF
                failed.
        """
        from nnunet_prune.networks.runtime import onnx_entries, to_onnx

        blob = to_onnx(fold.network, fold.patch_size)
        if self.is_int8():
            from nnunet_prune.tools.export.quantize import quantize_openvino

            if not fold.calibration or self.int8 is None:
                raise NnUNetPruneError("precision int8 needs calibration patches: use nnunet-prune export --int8 "
                                       "(nnunet_prune.tools.export.int8.export_int8).")
            blob = quantize_openvino(blob, fold.calibration, self.int8.scope)
        return {**state, **onnx_entries(blob)}


class OnnxRuntimeWriter(OnnxWriter):
    """ONNX Runtime (``--runtime onnxruntime``)."""

    runtime: ClassVar[str] = "onnxruntime"


class OpenVinoWriter(OnnxWriter):
    """OpenVINO on the CPU (``--runtime openvino``; ``precision`` fp32 or bf16)."""

    runtime: ClassVar[str] = "openvino"


class TorchCompileWriter(RuntimeNetworkWriter):
    """Compiled PyTorch (``--runtime torch-compile``): the PyTorch weights only. Its check runs on the CPU, where
    torch.compile keeps float32 whatever ``precision`` says (it lowers precision on CUDA only)."""

    runtime: ClassVar[str] = "torch-compile"

    def reduced_precision(self) -> bool:
        """False: the check runs on the CPU, in float32."""
        return False


#: runtime name -> its writer class, in the order ``--runtime`` lists them
WRITERS: dict[str, type[FoldWriter]] = {w.runtime: w for w in (PyTorchWriter, OnnxRuntimeWriter, OpenVinoWriter,
                                                              TorchCompileWriter)}


def register_writer(writer: type[FoldWriter]) -> type[FoldWriter]:
    """Add ``writer`` to :data:`WRITERS` under its ``runtime`` name (a new runtime, or a replacement); returns it,
    so it also serves as a class decorator."""
    WRITERS[writer.runtime] = writer
    return writer


def writer_class(runtime: str) -> type[FoldWriter]:
    """The writer class of ``runtime``.

    Raises:
        NnUNetPruneError: an unknown runtime (the message lists the known ones).
    """
    if runtime not in WRITERS:
        raise NnUNetPruneError(f"Unknown runtime {runtime!r}: known runtimes are {', '.join(WRITERS)}.")
    return WRITERS[runtime]

