"""Export a trained (pruned) nnU-Net model folder as a slim, standard nnU-Net model folder.

The output is what ``nnUNetv2_predict -m``/``nnUNetv2_predict_from_modelfolder``, ``nnUNetv2_find_best_configuration``
and ``nnUNetv2_ensemble`` read: plans.json, dataset.json, dataset_fingerprint.json, fold_k/checkpoint_final.pth
(weights only: no optimizer state, no training log) and every fold's validation outputs. Channels no consumer reads
are removed physically (exact: predictions do not change), so the file shrinks with the network. With
``magnitude_tau`` the weights |w| <= tau are zeroed first (Yang et al., MIDL 2025), channels left
dead by that are removed, and the remaining sparse tensors are stored compactly (bit mask + non-zeros); the
source's validation outputs are then NOT copied (they belong to the unpruned model): validate a pruned model with
the ``nnUNetTrainerMagnitude_tau*`` trainers.

The source folder is never written to; an existing output is replaced only with ``overwrite=True``.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from nnunet_prune import NnUNetPruneError
from nnunet_prune.compact import encode_state_dict
from nnunet_prune.modelfolder import ModelFolder
from nnunet_prune.networks import adaptive_class_name
from nnunet_prune.outputs import check_replaceable, make_temp_dir, read_manifest, record_files, remove_owned
from nnunet_prune.stats import count_parameters
from nnunet_prune.transforms import magnitude_prune, remove_dead_channels

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
    #: max |logit difference| on a random patch between the exported fold (loaded back as nnU-Net loads it) and the
    #: network it was written from -- after magnitude zeroing, if any: how exact the export itself is
    max_abs_difference: float | None = None
    sparsity: dict | None = None  # magnitude pruning statistics
    #: with --magnitude-tau: max |logit difference| between the exported fold and the unpruned source (what the
    #: zeroing changed); None without magnitude pruning (then it equals max_abs_difference)
    max_abs_difference_to_source: float | None = None


@dataclass
class ExportResult:
    """One export: source and output folder, its options (``magnitude_tau``, ``fp16``) and one :class:`FoldExport` per
    fold (also written to export_summary.json)."""

    source: str
    output: str
    magnitude_tau: float | None
    fp16: bool
    folds: list[FoldExport] = field(default_factory=list)

    def summary(self) -> str:
        """Human-readable summary, one line per fold: parameters, checkpoint size (MB), dead channels removed, sparsity
        and the max |logit difference|."""
        lines = [f"Exported {self.source}\n      -> {self.output}"]
        for f in self.folds:
            line = (f"  fold {f.fold}: {f.parameters_before:,} -> {f.parameters_after:,} parameters, checkpoint "
                    f"{f.checkpoint_bytes_before / 1e6:.1f} MB -> {f.checkpoint_bytes_after / 1e6:.2f} MB")
            if f.dead_channels_removed:
                line += f", {f.dead_channels_removed} dead channels removed"
            if f.sparsity:
                line += f", sparsity {f.sparsity['sparsity_of_nonzero_weights']:.1%}"
            if f.max_abs_difference is not None:
                if f.max_abs_difference_to_source is None:
                    line += f", max |logit diff| to the source {f.max_abs_difference:.2e}"
                else:
                    line += (f", max |logit diff| to the pruned network {f.max_abs_difference:.2e} (the export is "
                             f"exact), to the unpruned source {f.max_abs_difference_to_source:.2e} (what "
                             f"pruning changed)")
            lines.append(line)
        return "\n".join(lines)


def _check_output(source: Path, output: Path, overwrite: bool) -> None:
    """Before any work: the output is new, empty, or (with ``overwrite``) an earlier export holding only files the
    export wrote (:mod:`nnunet_prune.outputs`)."""
    if output == source or source in output.parents or output in source.parents:
        raise NnUNetPruneError(f"The output {output} must not be the source model folder, inside it, or contain "
                               f"it: the trained model must stay untouched. Choose another -o.")
    if output.exists() and not output.is_dir():
        raise NnUNetPruneError(f"-o {output} exists and is not a folder; nothing was written. Choose another -o.")
    if output.exists() and any(output.iterdir()):
        if not overwrite:
            raise NnUNetPruneError(f"{output} exists and is not empty; nothing was written. Choose another -o or "
                                   f"pass --overwrite to replace an earlier export.")
        if (output / "plans.json").is_file() and read_manifest(output) is None:
            raise NnUNetPruneError(f"{output} looks like a trained model folder that was not made by "
                                   f"`nnunet-prune export`; refusing to overwrite it even with --overwrite.")
        check_replaceable(output, TOOL, "--overwrite")


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


def export_model_folder(source: str | os.PathLike, output: str | os.PathLike, folds: Sequence | None = None,
                        fp16: bool = False, magnitude_tau: float | None = None, prune_bias: bool = False,
                        per_layer_normalised: bool = False, overwrite: bool = False,
                        verify: bool = True, compact: bool | None = None) -> ExportResult:
    """Write the slim model folder; see the module docstring. Returns per-fold statistics.

    ``compact`` (default: on when ``magnitude_tau`` is given) stores sparse tensors as bit mask + non-zeros.
    """
    output = Path(output).expanduser().resolve()
    _check_output(Path(source).expanduser().resolve(), output, overwrite)
    if magnitude_tau is not None and not (math.isfinite(magnitude_tau) and magnitude_tau >= 0):
        raise NnUNetPruneError(f"--magnitude-tau must be a finite number >= 0 (got {magnitude_tau}).")
    mf = ModelFolder.open(source, folds)
    compact = (magnitude_tau is not None) if compact is None else compact
    tmp = make_temp_dir(output.parent, prefix=f".{output.name}.")
    result = ExportResult(str(mf.path), str(output), magnitude_tau, fp16)
    try:
        plans = copy.deepcopy(mf.plans)
        for item in mf.path.iterdir():
            if item.name.startswith("fold_"):
                continue
            if item.is_dir():
                _copy_without_checkpoints(item, tmp / item.name)
            elif item.suffix != ".pth":
                shutil.copy2(item, tmp / item.name)
        needs_adaptive = compact
        x = _random_patch(mf) if verify else None
        slim_states = {}
        for fold in mf.folds:
            ckpt = mf.load_checkpoint(fold)
            net = mf.load_network(fold)
            params_before = count_parameters(net)
            sparsity = None
            source_output = None
            if magnitude_tau is not None:
                if verify:
                    with torch.no_grad():
                        source_output = net(x)
                sparsity = magnitude_prune(net, magnitude_tau, prune_bias, per_layer_normalised).as_dict()
            reference = None
            if verify:
                with torch.no_grad():
                    reference = net(x)
            n_dead = remove_dead_channels(net)
            widths_changed = any(net.state_dict()[k].shape != v.shape
                                 for k, v in mf.build_network().state_dict().items())
            needs_adaptive = needs_adaptive or widths_changed
            state = _storable_state_dict(net.state_dict(), fp16, compact)
            slim_states[fold] = (ckpt, state, params_before, sparsity, n_dead,
                                 reference, source_output)
        if needs_adaptive:
            arch = _architecture_entry(plans, mf.configuration_name)
            arch["network_class_name"] = adaptive_class_name(arch["network_class_name"])
        (tmp / "plans.json").write_text(json.dumps(plans, indent=4))

        for fold, (ckpt, state, params_before, sparsity, n_dead, reference, source_output) in slim_states.items():
            fold_dir = tmp / f"fold_{fold}"
            # After magnitude zeroing the source's validation results no longer describe the model; copied, they
            # would let find_best_configuration rank the pruned model by the dense model's Dice.
            _copy_without_checkpoints(mf.fold_path(fold), fold_dir,
                                      skip=("validation",) if magnitude_tau is not None else ())
            init_args = dict(ckpt["init_args"])
            if isinstance(init_args.get("plans"), dict):
                init_args["plans"] = plans
            slim = {
                "network_weights": state,
                "trainer_name": ckpt["trainer_name"],
                "init_args": init_args,
                "inference_allowed_mirroring_axes": ckpt.get("inference_allowed_mirroring_axes"),
                "current_epoch": ckpt.get("current_epoch"),
                "nnunet_prune_export": {"source": str(mf.fold_path(fold)), "magnitude_tau": magnitude_tau,
                                        "fp16": fp16, "compact": compact},
            }
            target = fold_dir / "checkpoint_final.pth"
            torch.save(slim, target)
            record = FoldExport(fold, params_before, 0, n_dead, mf.checkpoint_bytes(fold), target.stat().st_size,
                                sparsity=sparsity)
            net = ModelFolder.open(tmp, [fold]).load_network(fold)
            record.parameters_after = count_parameters(net)
            if verify:
                with torch.no_grad():
                    exported_output = net(x)
                record.max_abs_difference = float((exported_output - reference).abs().max())
                if source_output is not None:
                    record.max_abs_difference_to_source = float((exported_output - source_output).abs().max())
            result.folds.append(record)
        (tmp / SUMMARY_FILE).write_text(json.dumps(asdict(result), indent=2, default=str))
        record_files(tmp, TOOL)  # everything in tmp is the export's own: what --overwrite may replace later
        remove_owned(output, TOOL)  # checked again: only the earlier export's own files go (an empty folder too)
        tmp.rename(output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result
