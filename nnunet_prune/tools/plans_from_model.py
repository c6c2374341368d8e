"""``nnunet-prune plans-from-model``: a plans file whose network has exactly a trained fold's widths, to retrain that
architecture from scratch with the stock trainer (LUnet paper §III-B: the architecture pruning reaches may matter
more than the weights it keeps).

``plans_from_model(MODEL_FOLDER, fold, NAME)`` reads the fold's checkpoint (any fold whose widths differ from its
plans: Sauron, STAMP, structured pruning, an export), and writes ``$nnUNet_preprocessed/<dataset>/NAME.json``:

* the source plans with one configuration, the fold's (inheritance resolved), whose ``data_identifier`` is the
  source's, so the preprocessed data is reused as it is (nothing to preprocess);
* ``network_class_name`` the width-adaptive class and ``arch_kwargs['channel_widths']`` every coupling group's
  width (block counts of stages that lost blocks in their stock keys), so the network nnU-Net builds from these
  plans has every tensor shaped as in the checkpoint -- checked before the file is written;
* ``nnunet_prune_source``: where the widths came from (model folder, fold, checkpoint, trainer, size).

The file is recorded, with its SHA-256, in the dataset folder's manifest (:mod:`nnunet_prune.core.outputs`, the
package's one record of what its tools wrote), by which a later ``--overwrite`` proves it is this tool's and
unchanged.

Then ``nnUNetv2_train D C F -p NAME`` trains it from random weights with ``nnUNetTrainer`` (or any trainer), and
``nnUNetv2_predict ... -p NAME`` predicts with it.
"""

from __future__ import annotations

import copy
import json
import os
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from nnunet_prune import NnUNetPruneError, __version__
from nnunet_prune.core.outputs import is_own_file, record_files

#: the plans entry that says where the widths came from (provenance; ownership is the folder's manifest)
MARKER = "nnunet_prune_source"
#: the tool's name in the preprocessed folder's manifest (:mod:`nnunet_prune.core.outputs`)
TOOL = "plans-from-model"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
#: arch_kwargs key of the encoder's block counts per architecture kind, and of the decoder's
_ENCODER_BLOCK_KEYS = ("n_conv_per_stage", "n_blocks_per_stage")
_DECODER_BLOCK_KEY = "n_conv_per_stage_decoder"


@dataclass
class PlansFromModelResult:
    """What :func:`plans_from_model` wrote: the plans file, its name and configuration, widths (group -> (plans'
    width, fold's width)), parameters and MACs per patch of the plans' network and of the fold's."""

    plans_file: Path
    plans_name: str
    dataset_name: str
    configuration: str
    fold: int | str
    widths: dict[str, tuple[int, int]]
    parameters: tuple[int, int]
    macs: tuple[int, int]

    def summary(self) -> str:
        """Lines for the terminal: the file, the size against the source plans, the command to train it."""
        changed = {k: v for k, v in self.widths.items() if v[0] != v[1]}
        dataset_id = self.dataset_name.split("_")[0].replace("Dataset", "").lstrip("0") or "0"
        lines = [f"Wrote {self.plans_file}",
                 f"  configuration {self.configuration}: widths of fold {self.fold} ({len(changed)} of "
                 f"{len(self.widths)} coupling groups narrower than the source plans)",
                 f"  parameters {self.parameters[0]:,} -> {self.parameters[1]:,}; MACs per patch "
                 f"{self.macs[0] / 1e9:.3f} G -> {self.macs[1] / 1e9:.3f} G",
                 "  preprocessed data: reused (same data_identifier as the source plans)",
                 f"Train it from scratch: nnUNetv2_train {dataset_id} {self.configuration} FOLD -p {self.plans_name}"]
        return "\n".join(lines)


def _block_counts(network) -> dict[tuple[str, int], int]:
    """(encoder|decoder, stage) -> blocks in that stage's stack."""
    from nnunet_prune.surgery.blocks import stacks

    out = {}
    for path, seq in stacks(network).items():
        m = re.match(r"(encoder|decoder)\.stages\.(\d+)\.", path)
        if m:
            out[(m.group(1), int(m.group(2)))] = len(seq)
    return out


def _check_plans_name(plans_name: str) -> None:
    """Raises NnUNetPruneError unless ``plans_name`` is a plans name nnU-Net can use in file and folder names."""
    if (plans_name or "").endswith(".json"):
        raise NnUNetPruneError(f"--plans-name {plans_name!r}: give the plans name without '.json' (nnU-Net adds it; "
                               f"-p takes the name).")
    if not _NAME.match(plans_name or ""):
        raise NnUNetPruneError(f"--plans-name {plans_name!r}: use letters, digits, '_', '-' or '.', starting with a "
                               f"letter or digit (nnU-Net uses it in file and folder names).")


def _preprocessed_folder(preprocessed: str | os.PathLike | None) -> Path:
    """``preprocessed``, else nnU-Net's ``nnUNet_preprocessed`` (:func:`~nnunet_prune.nnunet.settings.nnunet_folders`).

    Raises:
        NnUNetPruneError: neither is given, or it is not a folder.
    """
    from nnunet_prune.nnunet.settings import nnunet_folders

    base = preprocessed or nnunet_folders()["nnUNet_preprocessed"]
    if not base or not Path(base).is_dir():
        raise NnUNetPruneError("nnUNet_preprocessed is not set or not a folder: the plans go into the dataset's "
                               "preprocessed folder, next to the data they reuse.")
    return Path(base)


def _single_configuration(folder, plans_name: str) -> dict:
    """A copy of the folder's configuration (inheritance resolved, no cascade links), checked: the source plans
    name their dataset, ``plans_name`` is new, the configuration is not a cascade stage.

    Raises:
        NnUNetPruneError: naming what is wrong.
    """
    source = folder.plans
    if not source.get("dataset_name"):
        raise NnUNetPruneError(f"{folder.path / 'plans.json'} names no dataset ('dataset_name'); is it nnU-Net's?")
    if plans_name == source.get("plans_name"):
        raise NnUNetPruneError(f"--plans-name {plans_name} is the source plans' own name; choose a new one.")
    config = copy.deepcopy(dict(folder.configuration_manager.configuration))
    config.pop("inherits_from", None)
    config.pop("next_stage", None)  # a 3d_lowres fold: the cascade's next stage is not in the new plans
    if config.get("previous_stage"):
        raise NnUNetPruneError(f"Configuration {folder.configuration_name} is a cascade stage (it needs the "
                               f"predictions of {config['previous_stage']}); plans-from-model supports single-stage "
                               f"configurations.")
    return config


def _check_target(target: Path, source: dict, configuration: str, config: dict, overwrite: bool) -> None:
    """Before anything is written: the source plans' preprocessed data is there to reuse, and ``target`` is new or
    (with ``overwrite``) this tool's own, unchanged file (:func:`nnunet_prune.core.outputs.is_own_file`) that no
    trained model uses.

    Raises:
        NnUNetPruneError: naming what is wrong and what to do.
    """
    from nnunet_prune.nnunet.settings import nnunet_folders

    dataset_name = source["dataset_name"]
    data_dir = target.parent / config["data_identifier"]
    if not data_dir.is_dir():
        raise NnUNetPruneError(
            f"{data_dir} does not exist: the new plans reuse the preprocessed data of plans "
            f"{source.get('plans_name')!r}, configuration {configuration}. Preprocess it first (nnUNetv2_preprocess -d "
            f"{dataset_name} -plans_name {source.get('plans_name')} -c {configuration}) or point nnUNet_preprocessed "
            f"at the folder that has it.")
    results = nnunet_folders()["nnUNet_results"]
    if results and (Path(results) / dataset_name).is_dir():
        users = sorted(p.name for p in (Path(results) / dataset_name).iterdir()
                       if p.is_dir() and f"__{target.stem}__" in p.name)
        if users and target.exists():
            raise NnUNetPruneError(f"{target} exists and trained models use it ({', '.join(users)}): replacing it "
                                   f"would change what they mean. Choose another --plans-name.")
    if target.exists() and not (overwrite and is_own_file(target.parent, target.name, TOOL)):
        raise NnUNetPruneError(
            f"{target} exists. " + ("It was not written by plans-from-model, or was changed since: it is left as it "
                                    "is; choose another --plans-name." if overwrite else
                                    "Choose another --plans-name, or pass --overwrite to replace a file this command "
                                    "wrote (and nobody changed)."))


def _fold_architecture(config: dict, network, plans_network, fold) -> dict[str, int]:
    """Write the fold's architecture into ``config``: block counts of stages that lost blocks in their stock keys,
    the width-adaptive class and every coupling group's width (``channel_widths``); returns the widths.

    Raises:
        NnUNetPruneError: block counts the plans cannot express.
    """
    from nnunet_prune.networks import adaptive_class_name
    from nnunet_prune.surgery import build_channel_graph

    arch = config["architecture"]
    kwargs = arch["arch_kwargs"]
    plans_blocks = _block_counts(plans_network)
    for (part, stage), count in _block_counts(network).items():
        if plans_blocks.get((part, stage)) == count:
            continue
        key = _DECODER_BLOCK_KEY if part == "decoder" else next((k for k in _ENCODER_BLOCK_KEYS if k in kwargs), None)
        if key is None or key not in kwargs:
            raise NnUNetPruneError(f"fold {fold} has {count} blocks in {part} stage {stage}, which the plans of "
                                   f"{arch['network_class_name']} cannot express.")
        n_stages = int(kwargs.get("n_stages") or len(kwargs["features_per_stage"]))
        values = list(kwargs[key]) if isinstance(kwargs[key], (list, tuple)) else \
            [kwargs[key]] * (n_stages if part == "encoder" else n_stages - 1)
        if stage >= len(values):
            raise NnUNetPruneError(f"fold {fold} has a stack in {part} stage {stage} that the plans' {key} does not "
                                   f"describe.")
        values[stage] = count
        kwargs[key] = values
    widths = build_channel_graph(network).widths()
    arch["network_class_name"] = adaptive_class_name(arch["network_class_name"])
    kwargs["channel_widths"] = dict(widths)
    return widths


def _check_reproduces(plans: dict, configuration: str, dataset_json: dict, network, fold) -> None:
    """The network stock ``nnUNetv2_train -p`` builds from ``plans`` (:func:`nnunet_prune.nnunet.modelfolder.
    build_network` with ``nnUNetTrainer``) has every tensor of ``network``'s shape.

    Raises:
        NnUNetPruneError: naming the tensors that differ; nothing is written.
    """
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_prune.nnunet.modelfolder import build_network

    pm = PlansManager(plans)
    built = build_network(pm, pm.get_configuration(configuration), dataset_json, "nnUNetTrainer")
    expected = {k: tuple(v.shape) for k, v in network.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in built.state_dict().items()}
    if expected != got:
        diff = sorted(k for k in expected.keys() | got.keys() if expected.get(k) != got.get(k))
        raise NnUNetPruneError(f"The plans cannot reproduce fold {fold}'s architecture ({len(diff)} tensors differ, "
                               f"e.g. {', '.join(diff[:3])}); nothing was written.")


def _write_plans(target: Path, plans: dict) -> None:
    """Write ``plans`` to ``target`` (atomically) and record it, with its SHA-256, in the folder's manifest: what a
    later ``--overwrite`` checks (:mod:`nnunet_prune.core.outputs`)."""
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(json.dumps(plans, indent=4))
    os.replace(tmp, target)
    record_files(target.parent, TOOL, [target.name], digest=True)


def plans_from_model(model_folder: str | os.PathLike, fold, plans_name: str,
                     checkpoint_name: str = "checkpoint_final.pth", overwrite: bool = False,
                     preprocessed: str | os.PathLike | None = None) -> PlansFromModelResult:
    """Write ``<preprocessed>/<dataset>/<plans_name>.json`` with fold ``fold``'s architecture (module docstring).

    ``preprocessed`` defaults to nnU-Net's ``nnUNet_preprocessed``. Everything is checked before the file is
    written; nothing else is written or changed but the folder's manifest, which records the file as this tool's.

    Raises:
        NnUNetPruneError: not a trained model folder or no such fold; an invalid or taken plans name (the source's
            own; a file this tool did not write, or that was changed since; one that trained models already use); no
            preprocessed data of the source plans; a cascade configuration; widths the plans cannot express.
    """
    from nnunet_prune.nnunet.prechecks import model_folder_folds, parse_fold

    _check_plans_name(plans_name)
    fold = parse_fold(fold)
    model_folder_folds(model_folder, [fold], checkpoint_name)  # the file-system checks, before torch and nnU-Net
    base = _preprocessed_folder(preprocessed)
    from nnunet_prune.core.stats import count_macs, count_parameters
    from nnunet_prune.nnunet.modelfolder import ModelFolder
    from nnunet_prune.surgery import build_channel_graph

    folder = ModelFolder.open(model_folder, folds=[fold], checkpoint_name=checkpoint_name)
    source, configuration = folder.plans, folder.configuration_name
    config = _single_configuration(folder, plans_name)
    target = base / source["dataset_name"] / f"{plans_name}.json"
    _check_target(target, source, configuration, config, overwrite)

    network, plans_network = folder.load_network(fold), folder.build_network()
    widths = _fold_architecture(config, network, plans_network, fold)
    plans = {**copy.deepcopy(source), "plans_name": plans_name, "configurations": {configuration: config}}
    plans.pop(MARKER, None)
    _check_reproduces(plans, configuration, folder.dataset_json, network, fold)
    plans_widths = build_channel_graph(plans_network).widths()
    patch = folder.configuration_manager.patch_size
    result = PlansFromModelResult(
        target, plans_name, source["dataset_name"], configuration, fold,
        {k: (plans_widths.get(k, v), v) for k, v in widths.items()},
        (count_parameters(plans_network), count_parameters(network)),
        (count_macs(plans_network, patch), count_macs(network, patch)))
    plans[MARKER] = {
        "tool": f"nnunet-prune {__version__} plans-from-model",
        "model_folder": str(folder.path), "fold": fold, "checkpoint": checkpoint_name,
        "trainer": folder.trainer_name, "source_plans": source.get("plans_name"),
        "parameters": result.parameters[1], "macs_per_patch": result.macs[1],
        "created": datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    _write_plans(target, plans)
    return result
