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

The pipeline (:func:`export_model_folder`, options in :class:`ExportOptions`): **load** every fold (the network as
``nnUNetv2_predict`` builds it) -> **transform** (:mod:`nnunet_prune.tools.export.transforms`) -> **write** (the
runtime's writer, :mod:`nnunet_prune.tools.export.writers`: one per runtime, a new runtime is one new entry there)
-> **verify** (loaded back from the written folder as nnU-Net loads it; then the writer's own check).

The source folder is never written to; an existing output is replaced only with ``overwrite=True``.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from nnunet_prune import NnUNetPruneError
from nnunet_prune.core.compact import encode_state_dict
from nnunet_prune.core.outputs import make_temp_dir, record_files, remove_owned
from nnunet_prune.core.stats import count_parameters
from nnunet_prune.networks import adaptive_class_name
from nnunet_prune.nnunet.modelfolder import CHECKPOINT, ModelFolder
from nnunet_prune.nnunet.prechecks import check_export_output, check_magnitude_tau
from nnunet_prune.tools.export.transforms import magnitude_prune, remove_dead_channels, remove_masked_blocks
from nnunet_prune.tools.export.writers import (  # noqa: F401 (re-exported: the checks' limits)
    MAX_RELATIVE_DIFFERENCE,
    MIN_AGREEMENT,
    WRITERS,
    FoldWork,
    FoldWriter,
    Int8Setup,
    writer_class,
)

SUMMARY_FILE = "export_summary.json"
TOOL = "export"


@dataclass
class ExportOptions:
    """What :func:`export_model_folder` does (``nnunet-prune export``'s options).

    ``folds``: the folds to export (None: every fold that has the first checkpoint); ``fp16``: weights stored in
    float16; ``magnitude_tau``: zero the weights with |w| <= tau first (``prune_bias``: small biases too;
    ``per_layer_normalised``: threshold tau x RMS per tensor); ``overwrite``: replace an earlier export;
    ``verify``: compare the written folds' logits with the networks they were written from; ``compact``: store
    sparse tensors as bit mask + non-zeros (None: on with ``magnitude_tau``); ``runtime``: what stock
    ``nnUNetv2_predict`` runs the folds with (a key of :data:`nnunet_prune.tools.export.writers.WRITERS`) with
    ``runtime_options``; ``checkpoints``: the checkpoint files exported in every fold (nnU-Net's ``-chk`` names).
    """

    folds: Sequence | None = None
    fp16: bool = False
    magnitude_tau: float | None = None
    prune_bias: bool = False
    per_layer_normalised: bool = False
    overwrite: bool = False
    verify: bool = True
    compact: bool | None = None
    runtime: str = "pytorch"
    runtime_options: dict | None = None
    checkpoints: Sequence[str] = (CHECKPOINT,)
    #: INT8 (``runtime_options`` precision int8): the calibration patches and scope; set by
    #: :func:`nnunet_prune.tools.export.int8.export_int8`, which also checks the Dice
    int8: Int8Setup | None = None

    @property
    def compact_storage(self) -> bool:
        """Whether sparse tensors are stored compactly: ``compact``, by default on with ``magnitude_tau``."""
        return (self.magnitude_tau is not None) if self.compact is None else self.compact


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
    #: INT8 export: the Dice check (accepted scope, bound, per fold and scope the float and INT8 Dice); else None
    int8: dict | None = None

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
        holds = getattr(WRITERS.get(self.runtime), "holds", None)
        if self.int8:
            holds = "the fold's PyTorch weights and its OpenVINO INT8 model"
        if holds:
            lines.append(f"  (each checkpoint holds {holds}; the source's also held the optimizer state)")
        lines += self._int8_lines()
        lines += [f"NOTE: {n}" for n in self.notes]
        return "\n".join(lines)

    def _int8_lines(self) -> list[str]:
        if not self.int8:
            return []
        lines = [f"INT8 check (nnU-Net's evaluation of each fold's validation cases, mean foreground Dice; bound: "
                 f"drop <= {self.int8['max_dice_drop']}):"]
        for c in self.int8["checks"]:
            kept = " (kept)" if c["scope"] == self.int8["accepted_scope"] else ""
            lines.append(f"  fold {c['fold']}, scope {c['scope']}{kept}: float {c['float_dice']:.4f}, INT8 "
                         f"{c['int8_dice']:.4f}, drop {c['drop']:+.4f} ({len(c['cases'])} cases)")
        return lines


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


# ---------------------------------------------------------------------------------------------------- the steps
def _load(mf: ModelFolder, fold, options: ExportOptions) -> FoldWork:
    """Load: the fold's checkpoint and its network as ``nnUNetv2_predict`` builds it (and its calibration patches
    for INT8)."""
    net = mf.load_network(fold)
    calibration = options.int8.patches.get(fold) if options.int8 is not None else None
    return FoldWork(fold, mf.load_checkpoint(fold), net, count_parameters(net), mf.checkpoint_name, mf.patch_size,
                    calibration=calibration)


def _transform(work: FoldWork, x: torch.Tensor | None, options: ExportOptions) -> FoldWork:
    """Transform: magnitude zeroing (if asked), then removal of dead channels and masked blocks (exact); the logits
    before and after zeroing are kept for the verification. Returns ``work``."""
    with torch.no_grad():
        if options.magnitude_tau is not None:
            if x is not None:
                work.source_output = work.network(x)
            work.sparsity = magnitude_prune(work.network, options.magnitude_tau, options.prune_bias,
                                            options.per_layer_normalised).as_dict()
        if x is not None:
            work.reference = work.network(x)
    work.dead_channels = remove_dead_channels(work.network)
    work.masked_blocks = remove_masked_blocks(work.network)
    return work


def _export_plans(mf: ModelFolder, work: Sequence[FoldWork], options: ExportOptions, writer: FoldWriter) -> dict:
    """The written folder's plans: the source's, whose network is named by its width-adaptive class when a fold's
    widths changed (or with compact storage), then as the writer's runtime runs it (every fold must be transformed
    first: the plans hold one architecture for all)."""
    plans = copy.deepcopy(mf.plans)
    dense = {k: v.shape for k, v in mf.build_network().state_dict().items()}
    arch = _architecture_entry(plans, mf.configuration_name)
    if options.compact_storage or any(w.network.state_dict().keys() != dense.keys() or
                                      any(v.shape != dense[k] for k, v in w.network.state_dict().items())
                                      for w in work):
        arch["network_class_name"] = adaptive_class_name(arch["network_class_name"])
    runtime_arch = writer.architecture(arch)
    if runtime_arch is not arch:
        arch.clear()
        arch.update(runtime_arch)
    return plans


def _verify(folder: Path, work: FoldWork, x: torch.Tensor | None, record: FoldExport) -> None:
    """Verify: load the written fold as nnU-Net would (from the written folder) and compare its logits."""
    net = ModelFolder.open(folder, [work.fold], checkpoint_name=work.checkpoint_name).load_network(work.fold)
    record.parameters_after = count_parameters(net)
    if x is not None:
        with torch.no_grad():
            exported_output = net(x)
        record.max_abs_difference = float((exported_output - work.reference).abs().max())
        if work.source_output is not None:
            record.max_abs_difference_to_source = float((exported_output - work.source_output).abs().max())


def _write_fold(tmp: Path, mf: ModelFolder, work: FoldWork, plans: dict, x: torch.Tensor | None,
                options: ExportOptions, writer: FoldWriter) -> FoldExport:
    """Write one fold into the folder ``tmp`` with ``writer`` (its folder's other files copied first), then verify
    it (as PyTorch, then the writer's own check); returns its record."""
    fold_dir = tmp / f"fold_{work.fold}"
    # After magnitude zeroing the source's validation results no longer describe the model; copied, they would let
    # find_best_configuration rank the pruned model by the dense model's Dice. (INT8: the export's Dice check writes
    # the INT8 model's own validation folder.)
    if not fold_dir.exists():
        _copy_without_checkpoints(mf.fold_path(work.fold), fold_dir,
                                  skip=("validation",) if options.magnitude_tau is not None or options.int8 else ())
    source = mf.fold_path(work.fold) / work.checkpoint_name
    state = _storable_state_dict(work.network.state_dict(), options.fp16, options.compact_storage)
    info = {"source": str(source), "magnitude_tau": options.magnitude_tau, "fp16": options.fp16,
            "compact": options.compact_storage, "checkpoint": work.checkpoint_name, **writer.record(mf.trainer_name)}
    target = writer.write(fold_dir, work, state, plans, info)
    record = FoldExport(work.fold, work.parameters_before, 0, work.dead_channels, source.stat().st_size,
                        target.stat().st_size, checkpoint=work.checkpoint_name, sparsity=work.sparsity,
                        masked_blocks_removed=work.masked_blocks)
    _verify(tmp, work, x, record)
    if x is not None:
        for name, value in writer.verify(tmp, work, x).items():
            setattr(record, name, value)
    return record


def _copy_folder_files(mf: ModelFolder, tmp: Path) -> None:
    """The source's files and folders outside the folds (dataset.json, the fingerprint, ...), without checkpoints."""
    for item in mf.path.iterdir():
        if item.name.startswith("fold_"):
            continue
        if item.is_dir():
            _copy_without_checkpoints(item, tmp / item.name)
        elif item.suffix != ".pth":
            shutil.copy2(item, tmp / item.name)


def put_in_place(tmp: Path, output: Path, result: ExportResult) -> None:
    """The summary written, every file recorded as the export's own (what ``--overwrite`` may replace later), an
    earlier export at ``output`` removed (only its own files) and ``tmp`` renamed into its place."""
    (tmp / SUMMARY_FILE).write_text(json.dumps(asdict(result), indent=2, default=str))
    record_files(tmp, TOOL)
    remove_owned(output, TOOL)  # checked again: only the earlier export's own files go (an empty folder too)
    tmp.rename(output)


def export_model_folder(source: str | os.PathLike, output: str | os.PathLike, options: ExportOptions | None = None,
                        **changes: Any) -> ExportResult:
    """Write the slim model folder (see the module docstring): load -> transform -> write -> verify, per fold, into
    a temporary folder renamed into place at the end. Returns per-fold statistics.

    ``options`` (:class:`ExportOptions`; default: its defaults) with ``changes`` applied, e.g.
    ``export_model_folder(src, out, magnitude_tau=0.01, runtime="openvino")``. Every checkpoint of
    ``options.checkpoints`` is transformed, written and verified on its own; the summary notes those the source holds
    that were not asked for.

    Raises:
        NnUNetPruneError: a bad source or output folder, an invalid ``magnitude_tau``, an unknown or missing runtime,
            bad runtime options, a checkpoint a fold lacks (all before any work); a runtime that does not reproduce
            PyTorch's segmentation.
        TypeError: a keyword that is not a field of :class:`ExportOptions`.
    """
    options = replace(options or ExportOptions(), **changes)
    output = Path(output).expanduser().resolve()
    check_export_output(source, output, options.overwrite)
    check_magnitude_tau(options.magnitude_tau)
    writer = writer_class(options.runtime)(options.runtime_options)
    writer.int8 = options.int8
    writer.require()  # a missing or broken optional runtime stops here, before any work
    sources = _open_checkpoints(source, options.folds, options.checkpoints)
    mf = sources[0]
    tmp = make_temp_dir(output.parent, prefix=f".{output.name}.")
    result = ExportResult(str(mf.path), str(output), options.magnitude_tau, options.fp16, runtime=options.runtime,
                          runtime_options=dict(writer.options), checkpoints=[m.checkpoint_name for m in sources])
    try:
        _copy_folder_files(mf, tmp)
        x = _random_patch(mf) if options.verify else None
        # load and transform every fold first: the plans must say whether widths changed
        work = [_transform(_load(folder, fold, options), x, options) for folder in sources for fold in folder.folds]
        plans = _export_plans(mf, work, options, writer)
        (tmp / "plans.json").write_text(json.dumps(plans, indent=4))
        result.folds = [_write_fold(tmp, mf, w, plans, x, options, writer) for w in work]
        result.notes += writer.notes() + _unexported_checkpoints(mf, result.checkpoints)
        put_in_place(tmp, output, result)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result
