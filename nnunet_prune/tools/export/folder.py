"""Export a trained (pruned) nnU-Net model folder as a slim, standard nnU-Net model folder.

The output is what ``nnUNetv2_predict -m``/``nnUNetv2_predict_from_modelfolder``, ``nnUNetv2_find_best_configuration``
and ``nnUNetv2_ensemble`` read: plans.json, dataset.json, dataset_fingerprint.json, fold_k/checkpoint_final.pth
(and every other checkpoint asked for, e.g. checkpoint_best.pth; weights only: no optimizer state, no training log)
and every fold's validation outputs. Channels no consumer reads
are removed physically (exact: predictions do not change), so the file shrinks with the network. With
``magnitude_tau`` the weights |w| <= tau are zeroed first (Yang et al., MIDL 2025), channels left
dead by that are removed, and the remaining sparse tensors are stored compactly (bit mask + non-zeros); the
source's validation outputs are then NOT copied (they belong to the unpruned model): validate a pruned model with
the ``nnUNetTrainerMagnitude_tau*`` trainers.

With ``runtime`` (``onnxruntime``, ``openvino``, ``torch-compile``) the folder's plans name
:class:`nnunet_prune.networks.runtime.RuntimeNetwork`, so stock ``nnUNetv2_predict`` runs each fold through that
runtime;
each checkpoint keeps its PyTorch weights and, for the ONNX runtimes, its ONNX model, and the runtime's logits are
checked against PyTorch's before the folder is written.

The source folder is never written to; an existing output is replaced only with ``overwrite=True``.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from nnunet_prune import NnUNetPruneError
from nnunet_prune.core.compact import encode_state_dict
from nnunet_prune.core.outputs import make_temp_dir, record_files, remove_owned
from nnunet_prune.core.runtime_specs import check_runtime_choice
from nnunet_prune.core.stats import count_parameters
from nnunet_prune.networks import adaptive_class_name
from nnunet_prune.nnunet.modelfolder import CHECKPOINT, ModelFolder
from nnunet_prune.nnunet.prechecks import check_export_output, check_magnitude_tau
from nnunet_prune.tools.export.transforms import magnitude_prune, remove_dead_channels, remove_masked_blocks

SUMMARY_FILE = "export_summary.json"
TOOL = "export"


@dataclass
class FoldExport:
    """What exporting one fold did: parameters and checkpoint size (bytes) before and after, the number of dead
    channels removed, and how far the exported network's logits are from the network(s) it came from.

    ``sparsity`` holds the magnitude-pruning statistics (:meth:`nnunet_prune.surgery.masks.SparsityStats.as_dict`)
    with ``magnitude_tau``, else None.
    """

    fold: int | str
    parameters_before: int
    parameters_after: int
    dead_channels_removed: int
    checkpoint_bytes_before: int
    checkpoint_bytes_after: int
    #: the checkpoint file (``checkpoint_final.pth``, ``checkpoint_best.pth``, ...) this record is of
    checkpoint: str = CHECKPOINT
    #: max |logit difference| on a random patch between the exported fold (loaded back as nnU-Net loads it) and the
    #: network it was written from -- after magnitude zeroing, if any: how exact the export itself is
    max_abs_difference: float | None = None
    sparsity: dict | None = None  # magnitude pruning statistics
    #: with --magnitude-tau: max |logit difference| between the exported fold and the unpruned source (what the
    #: zeroing changed); None without magnitude pruning (then it equals max_abs_difference)
    max_abs_difference_to_source: float | None = None
    #: masked blocks (PSP-Seg branches still masked when training ended) deleted: they computed nothing
    masked_blocks_removed: int = 0
    #: with a runtime: max |logit difference| between the runtime (the written fold, built as nnU-Net's predictor
    #: builds it) and the PyTorch network, and the fraction of voxels whose argmax (segmentation) agrees
    runtime_max_abs_difference: float | None = None
    runtime_argmax_agreement: float | None = None


@dataclass
class ExportResult:
    """One export: source and output folder, its options (``magnitude_tau``, ``fp16``) and one :class:`FoldExport` per
    fold (also written to export_summary.json)."""

    source: str
    output: str
    magnitude_tau: float | None
    fp16: bool
    folds: list[FoldExport] = field(default_factory=list)
    #: what stock nnUNetv2_predict runs the folds with (``pytorch`` or a key of nnunet_prune.networks.runtime.RUNTIMES)
    runtime: str = "pytorch"
    runtime_options: dict = field(default_factory=dict)
    #: what the user should know about the written folder (e.g. a precision this machine cannot run)
    notes: list[str] = field(default_factory=list)
    #: the checkpoint files exported in every fold (``nnUNetv2_predict -chk`` picks one of them)
    checkpoints: list[str] = field(default_factory=lambda: [CHECKPOINT])

    def summary(self) -> str:
        """Human-readable summary, one line per fold: parameters, checkpoint size (MB), dead channels removed, sparsity
        and the max |logit difference|."""
        lines = [f"Exported {self.source}\n      -> {self.output}" + (
            f" (runtime {self.runtime}{' ' + str(self.runtime_options) if self.runtime_options else ''})"
            if self.runtime != "pytorch" else "")]
        several = len(self.checkpoints) > 1
        for f in self.folds:
            which = f" {f.checkpoint}" if several else ""
            line = (f"  fold {f.fold}{which}: {f.parameters_before:,} -> {f.parameters_after:,} parameters, checkpoint "
                    f"{f.checkpoint_bytes_before / 1e6:.1f} MB -> {f.checkpoint_bytes_after / 1e6:.2f} MB")
            if f.dead_channels_removed:
                line += f", {f.dead_channels_removed} dead channels removed"
            if f.masked_blocks_removed:
                line += f", {f.masked_blocks_removed} masked branches deleted"
            if f.sparsity:
                line += f", sparsity {f.sparsity['sparsity_of_nonzero_weights']:.1%}"
            if f.max_abs_difference is not None:
                if f.max_abs_difference_to_source is None:
                    line += f", max |logit diff| to the source {f.max_abs_difference:.2e}"
                else:
                    line += (f", max |logit diff| to the pruned network {f.max_abs_difference:.2e} (the export is "
                             f"exact), to the unpruned source {f.max_abs_difference_to_source:.2e} (what "
                             f"pruning changed)")
            if f.runtime_argmax_agreement is not None:
                line += (f"; {self.runtime} vs PyTorch: max |logit diff| {f.runtime_max_abs_difference:.2e}, "
                         f"{f.runtime_argmax_agreement:.4%} of voxels segmented alike")
            lines.append(line)
        if self.runtime != "pytorch":
            lines.append("  (each checkpoint holds the fold's PyTorch weights" + (
                " and its ONNX model" if self.runtime != "torch-compile" else "") + "; the source's also held the "
                "optimizer state)")
        lines += [f"NOTE: {n}" for n in self.notes]
        return "\n".join(lines)


def _copy_without_checkpoints(src: Path, dst: Path, skip: Sequence[str] = ()) -> None:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.pth", *skip))


def _architecture_entry(plans: dict, configuration: str) -> dict:
    cfg = plans["configurations"][configuration]
    while "architecture" not in cfg and "inherits_from" in cfg:
        cfg = plans["configurations"][cfg["inherits_from"]]
    return cfg["architecture"]


def _storable_state_dict(state: dict, fp16: bool, compact: bool) -> dict:
    """Converted copy of a state dict in which entries that alias one tensor (these networks register modules
    under several names) still share one stored object, so the file holds every tensor once."""
    converted: dict = {}
    out = {}
    for key, value in state.items():
        ident = (value.data_ptr(), tuple(value.shape), tuple(value.stride()), value.dtype) \
            if torch.is_tensor(value) else None
        if ident is not None and ident in converted:
            out[key] = converted[ident]
            continue
        new = value
        if torch.is_tensor(value):
            new = value.detach().clone()
            if fp16 and new.is_floating_point():
                new = new.half()
            if compact:
                new = encode_state_dict({key: new})[key]
            converted[ident] = new
        out[key] = new
    return out


def _random_patch(mf: ModelFolder) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(1, mf.num_input_channels, *mf.patch_size, generator=g)


@dataclass
class _FoldWork:
    """One fold on its way through the export: loaded, transformed, with the logits it must reproduce."""

    fold: int | str
    checkpoint: dict
    network: torch.nn.Module
    parameters_before: int
    checkpoint_name: str = CHECKPOINT
    sparsity: dict | None = None
    dead_channels: int = 0
    masked_blocks: int = 0
    reference: torch.Tensor | None = None  # logits of the transformed network (what the written fold must give)
    source_output: torch.Tensor | None = None  # logits before magnitude zeroing (with magnitude_tau)


def write_nnunet_fold(fold_dir: Path, work: _FoldWork, state: dict, plans: dict, export_info: dict) -> Path:
    """The nnU-Net writer: ``fold_dir/<checkpoint name>`` as nnU-Net's predictor reads it (weights only, the
    trainer name, init args with the export's plans, mirroring axes), plus the export's own record. Returns the file.

    Writers for other formats (e.g. ONNX next to the checkpoint) are siblings of this function taking the same
    fold work item.
    """
    init_args = dict(work.checkpoint["init_args"])
    if isinstance(init_args.get("plans"), dict):
        init_args["plans"] = plans
    slim = {
        "network_weights": state,
        "trainer_name": work.checkpoint["trainer_name"],
        "init_args": init_args,
        "inference_allowed_mirroring_axes": work.checkpoint.get("inference_allowed_mirroring_axes"),
        "current_epoch": work.checkpoint.get("current_epoch"),
        "nnunet_prune_export": export_info,
    }
    target = fold_dir / work.checkpoint_name
    torch.save(slim, target)
    return target


def _load(mf: ModelFolder, fold) -> _FoldWork:
    net = mf.load_network(fold)
    return _FoldWork(fold, mf.load_checkpoint(fold), net, count_parameters(net), mf.checkpoint_name)


def _open_checkpoints(source: str | os.PathLike, folds: Sequence | None,
                      checkpoints: Sequence[str]) -> list[ModelFolder]:
    """The source opened once per checkpoint name (validated): the first name's folds (all that have it, or
    ``folds``) must have every other name too.

    Raises:
        NnUNetPruneError: a name that is not a ``.pth`` file name, or a fold without one of the checkpoints (naming
            the folds and what they have).
    """
    names = list(dict.fromkeys(checkpoints))
    bad = [n for n in names if not n.endswith(".pth") or Path(n).name != n]
    if not names or bad:
        raise NnUNetPruneError(f"-chk takes checkpoint file names of the folds, e.g. checkpoint_final.pth "
                               f"checkpoint_best.pth (got {', '.join(bad) or 'none'}).")
    first = ModelFolder.open(source, folds, checkpoint_name=names[0])
    return [first] + [ModelFolder.open(first.path, first.folds, checkpoint_name=n) for n in names[1:]]


def _unexported_checkpoints(mf: ModelFolder, exported: Sequence[str]) -> list[str]:
    """A note naming the checkpoints the source's exported folds hold that were not exported (empty: none)."""
    other = sorted({p.name for fold in mf.folds for p in mf.fold_path(fold).glob("*.pth")} - set(exported))
    if not other:
        return []
    return [f"the source folds also hold {', '.join(other)} (not exported; add them with -chk "
            f"{' '.join([*exported, *other])} to predict with -chk {other[0]} from the export)"]


def _transform(work: _FoldWork, x: torch.Tensor | None, magnitude_tau: float | None, prune_bias: bool,
               per_layer_normalised: bool) -> None:
    """Magnitude zeroing (if asked), then removal of dead channels (exact); the logits before and after zeroing are
    kept for the verification."""
    with torch.no_grad():
        if magnitude_tau is not None:
            if x is not None:
                work.source_output = work.network(x)
            work.sparsity = magnitude_prune(work.network, magnitude_tau, prune_bias, per_layer_normalised).as_dict()
        if x is not None:
            work.reference = work.network(x)
    work.dead_channels = remove_dead_channels(work.network)
    work.masked_blocks = remove_masked_blocks(work.network)


def _verify(folder: Path, work: _FoldWork, x: torch.Tensor | None, record: FoldExport) -> None:
    """Load the written fold as nnU-Net would (from the written folder) and compare its logits."""
    net = ModelFolder.open(folder, [work.fold], checkpoint_name=work.checkpoint_name).load_network(work.fold)
    record.parameters_after = count_parameters(net)
    if x is not None:
        with torch.no_grad():
            exported_output = net(x)
        record.max_abs_difference = float((exported_output - work.reference).abs().max())
        if work.source_output is not None:
            record.max_abs_difference_to_source = float((exported_output - work.source_output).abs().max())


#: least fraction of voxels whose segmentation a runtime must reproduce at float32 (and at reduced precision)
MIN_AGREEMENT = {"fp32": 0.999, "reduced": 0.98}
#: largest max |logit difference| to PyTorch, relative to the largest |logit|, at float32 (and reduced precision):
#: nnU-Net averages logits over mirrors and folds, so the logits must match, not only their argmax
MAX_RELATIVE_DIFFERENCE = {"fp32": 2e-3, "reduced": 5e-2}


def _verify_runtime(folder: Path, work: _FoldWork, x: torch.Tensor, record: FoldExport, reduced: bool) -> None:
    """Build the written fold as nnU-Net's predictor does (plans -> RuntimeNetwork, the checkpoint's weights as
    they are stored) and compare the runtime's logits and segmentation with the PyTorch network's.

    Raises:
        NnUNetPruneError: the runtime segments fewer than :data:`MIN_AGREEMENT` of the voxels alike, or its logits
            differ by more than :data:`MAX_RELATIVE_DIFFERENCE` of the largest logit.
    """
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_prune.nnunet.modelfolder import build_network_like_predictor

    plans = json.loads((folder / "plans.json").read_text())
    dataset_json = json.loads((folder / "dataset.json").read_text())
    pm = PlansManager(plans)
    cm = pm.get_configuration(work.checkpoint["init_args"]["configuration"])
    net = build_network_like_predictor(pm, cm, dataset_json, "nnUNetTrainer")
    ckpt = torch.load(folder / f"fold_{work.fold}" / work.checkpoint_name, map_location="cpu", weights_only=False)
    net.load_state_dict(ckpt["network_weights"])
    with torch.no_grad():
        out = net.eval()(x)
    record.runtime_max_abs_difference = float((out - work.reference).abs().max())
    record.runtime_argmax_agreement = float((out.argmax(1) == work.reference.argmax(1)).float().mean())
    level = "reduced" if reduced else "fp32"
    largest = max(float(work.reference.abs().max()), 1.0)
    if (record.runtime_argmax_agreement < MIN_AGREEMENT[level]
            or record.runtime_max_abs_difference > MAX_RELATIVE_DIFFERENCE[level] * largest):
        raise NnUNetPruneError(
            f"fold {work.fold} ({work.checkpoint_name}): the {net.runtime} model does not reproduce PyTorch on a test "
            f"patch: "
            f"{record.runtime_argmax_agreement:.3%} of the voxels segmented alike (needed: "
            f"{MIN_AGREEMENT[level]:.1%}), max |logit diff| {record.runtime_max_abs_difference:.3g} (allowed: "
            f"{MAX_RELATIVE_DIFFERENCE[level] * largest:.3g}); nothing was written. Use another --runtime (or float32 "
            f"precision).")


def export_model_folder(source: str | os.PathLike, output: str | os.PathLike, folds: Sequence | None = None,
                        fp16: bool = False, magnitude_tau: float | None = None, prune_bias: bool = False,
                        per_layer_normalised: bool = False, overwrite: bool = False,
                        verify: bool = True, compact: bool | None = None, runtime: str = "pytorch",
                        runtime_options: dict | None = None,
                        checkpoints: Sequence[str] = (CHECKPOINT,)) -> ExportResult:
    """Write the slim model folder (see the module docstring): load -> transform -> write -> verify, per fold, into
    a temporary folder renamed into place at the end. Returns per-fold statistics.

    ``compact`` (default: on when ``magnitude_tau`` is given) stores sparse tensors as bit mask + non-zeros.
    ``runtime`` (``pytorch`` or a key of :data:`nnunet_prune.networks.runtime.RUNTIMES`) with ``runtime_options``
    (:func:`nnunet_prune.networks.runtime.check_options`): what stock ``nnUNetv2_predict`` runs the folds with.
    ``checkpoints``: the checkpoint files exported in every fold (nnU-Net's ``-chk`` names; each is transformed,
    written and verified on its own; the summary notes those the source holds that were not asked for).

    Raises:
        NnUNetPruneError: a bad source or output folder, an invalid ``magnitude_tau``, an unknown or missing runtime,
            bad runtime options, a checkpoint a fold lacks (all before any work); a runtime that does not reproduce
            PyTorch's segmentation.
    """
    from nnunet_prune.networks import runtime as runtimes

    output = Path(output).expanduser().resolve()
    check_export_output(source, output, overwrite)
    check_magnitude_tau(magnitude_tau)
    runtime_options = check_runtime_choice(runtime, runtime_options)
    if runtime != "pytorch":
        runtimes.require_runtime(runtime)  # a missing or broken optional runtime stops here, before any work
    sources = _open_checkpoints(source, folds, checkpoints)
    mf = sources[0]
    compact = (magnitude_tau is not None) if compact is None else compact
    tmp = make_temp_dir(output.parent, prefix=f".{output.name}.")
    result = ExportResult(str(mf.path), str(output), magnitude_tau, fp16, runtime=runtime,
                          runtime_options=dict(runtime_options or {}),
                          checkpoints=[m.checkpoint_name for m in sources])
    onnx = runtime != "pytorch" and runtimes.RUNTIMES[runtime].onnx
    try:
        plans = copy.deepcopy(mf.plans)
        for item in mf.path.iterdir():
            if item.name.startswith("fold_"):
                continue
            if item.is_dir():
                _copy_without_checkpoints(item, tmp / item.name)
            elif item.suffix != ".pth":
                shutil.copy2(item, tmp / item.name)
        x = _random_patch(mf) if verify else None
        dense_shapes = {k: v.shape for k, v in mf.build_network().state_dict().items()}
        work = []
        for folder in sources:  # load and transform every fold first: the plans must say whether widths changed
            for fold in folder.folds:
                w = _load(folder, fold)
                _transform(w, x, magnitude_tau, prune_bias, per_layer_normalised)
                work.append(w)
        if compact or any(w.network.state_dict().keys() != dense_shapes.keys() or
                          any(v.shape != dense_shapes[k] for k, v in w.network.state_dict().items()) for w in work):
            arch = _architecture_entry(plans, mf.configuration_name)
            arch["network_class_name"] = adaptive_class_name(arch["network_class_name"])
        if runtime != "pytorch":  # the runtime runs the width-adaptive network (folds may differ)
            arch = _architecture_entry(plans, mf.configuration_name)
            new = runtimes.runtime_architecture(arch, runtime, runtime_options,
                                                adaptive_class_name(arch["network_class_name"]))
            arch.clear()
            arch.update(new)
        (tmp / "plans.json").write_text(json.dumps(plans, indent=4))

        for w in work:
            fold_dir = tmp / f"fold_{w.fold}"
            # After magnitude zeroing the source's validation results no longer describe the model; copied, they
            # would let find_best_configuration rank the pruned model by the dense model's Dice.
            if not fold_dir.exists():
                _copy_without_checkpoints(mf.fold_path(w.fold), fold_dir,
                                          skip=("validation",) if magnitude_tau is not None else ())
            state = _storable_state_dict(w.network.state_dict(), fp16, compact)
            info = {"source": str(mf.fold_path(w.fold) / w.checkpoint_name), "magnitude_tau": magnitude_tau,
                    "fp16": fp16, "compact": compact, "checkpoint": w.checkpoint_name}
            if runtime != "pytorch":
                if onnx:
                    state.update(runtimes.onnx_entries(runtimes.to_onnx(w.network, mf.patch_size)))
                # nnU-Net's own trainer builds the plans' RuntimeNetwork (a pruning trainer would build a U-Net)
                w.checkpoint = {**w.checkpoint, "trainer_name": "nnUNetTrainer"}
                info.update(runtime=runtime, runtime_options=runtime_options, source_trainer=mf.trainer_name)
            target = write_nnunet_fold(fold_dir, w, state, plans, info)
            record = FoldExport(w.fold, w.parameters_before, 0, w.dead_channels,
                                (mf.fold_path(w.fold) / w.checkpoint_name).stat().st_size, target.stat().st_size,
                                checkpoint=w.checkpoint_name, sparsity=w.sparsity,
                                masked_blocks_removed=w.masked_blocks)
            _verify(tmp, w, x, record)
            if runtime != "pytorch" and x is not None:
                # (torch-compile lowers precision on CUDA only; the check runs on the CPU)
                reduced = runtime != "torch-compile" and runtime_options.get("precision", "fp32") != "fp32"
                _verify_runtime(tmp, w, x, record, reduced)
            result.folds.append(record)
        result.notes += runtimes.deployment_notes(runtime, runtime_options) + \
            _unexported_checkpoints(mf, result.checkpoints)
        (tmp / SUMMARY_FILE).write_text(json.dumps(asdict(result), indent=2, default=str))
        record_files(tmp, TOOL)  # everything in tmp is the export's own: what --overwrite may replace later
        remove_owned(output, TOOL)  # checked again: only the earlier export's own files go (an empty folder too)
        tmp.rename(output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result
