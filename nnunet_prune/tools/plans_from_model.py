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
* ``nnunet_prune_source``: where the widths came from, and a hash of the rest, by which a later ``--overwrite``
  proves the file is this tool's and unchanged.

Then ``nnUNetv2_train D C F -p NAME`` trains it from random weights with ``nnUNetTrainer`` (or any trainer), and
``nnUNetv2_predict ... -p NAME`` predicts with it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from nnunet_prune import NnUNetPruneError, __version__

MARKER = "nnunet_prune_source"
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


def _content_hash(plans: dict) -> str:
    body = {k: v for k, v in plans.items() if k != MARKER}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _written_by_us_unchanged(file: Path) -> bool:
    try:
        plans = json.loads(file.read_text())
    except (OSError, ValueError):
        return False
    marker = plans.get(MARKER) if isinstance(plans, dict) else None
    return isinstance(marker, dict) and marker.get("sha256") == _content_hash(plans)


def _block_counts(network) -> dict[tuple[str, int], int]:
    """(encoder|decoder, stage) -> blocks in that stage's stack."""
    from nnunet_prune.surgery.blocks import stacks

    out = {}
    for path, seq in stacks(network).items():
        m = re.match(r"(encoder|decoder)\.stages\.(\d+)\.", path)
        if m:
            out[(m.group(1), int(m.group(2)))] = len(seq)
    return out


def plans_from_model(model_folder: str | os.PathLike, fold, plans_name: str,
                     checkpoint_name: str = "checkpoint_final.pth", overwrite: bool = False,
                     preprocessed: str | os.PathLike | None = None) -> PlansFromModelResult:
    """Write ``<preprocessed>/<dataset>/<plans_name>.json`` with fold ``fold``'s architecture (module docstring).

    ``preprocessed`` defaults to ``$nnUNet_preprocessed``. Everything is checked before the file is written; nothing
    else is written or changed.

    Raises:
        NnUNetPruneError: not a trained model folder or no such fold; an invalid or taken plans name (the source's
            own; a file this tool did not write, or that was changed since; one that trained models already use); no
            preprocessed data of the source plans; a cascade configuration; widths the plans cannot express.
    """
    from nnunet_prune.nnunet.prechecks import model_folder_folds, parse_fold

    if (plans_name or "").endswith(".json"):
        raise NnUNetPruneError(f"--plans-name {plans_name!r}: give the plans name without '.json' (nnU-Net adds it; "
                               f"-p takes the name).")
    if not _NAME.match(plans_name or ""):
        raise NnUNetPruneError(f"--plans-name {plans_name!r}: use letters, digits, '_', '-' or '.', starting with a "
                               f"letter or digit (nnU-Net uses it in file and folder names).")
    fold = parse_fold(fold)
    model_folder_folds(model_folder, [fold], checkpoint_name)  # the file-system checks, before torch and nnU-Net
    base = Path(preprocessed or os.environ.get("nnUNet_preprocessed") or "")
    if not str(base) or not base.is_dir():
        raise NnUNetPruneError("nnUNet_preprocessed is not set or not a folder: the plans go into the dataset's "
                               "preprocessed folder, next to the data they reuse.")
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_prune.core.stats import count_macs, count_parameters
    from nnunet_prune.networks import adaptive_class_name
    from nnunet_prune.nnunet.modelfolder import ModelFolder, build_adaptive_network
    from nnunet_prune.surgery import build_channel_graph

    folder = ModelFolder.open(model_folder, folds=[fold], checkpoint_name=checkpoint_name)
    source = folder.plans
    configuration = folder.configuration_name
    dataset_name = source.get("dataset_name")
    if not dataset_name:
        raise NnUNetPruneError(f"{folder.path / 'plans.json'} names no dataset ('dataset_name'); is it nnU-Net's?")
    if plans_name == source.get("plans_name"):
        raise NnUNetPruneError(f"--plans-name {plans_name} is the source plans' own name; choose a new one.")
    dataset_dir = base / dataset_name
    cm = folder.configuration_manager
    config = copy.deepcopy(dict(cm.configuration))
    config.pop("inherits_from", None)
    config.pop("next_stage", None)  # a 3d_lowres fold: the cascade's next stage is not in the new plans
    if config.get("previous_stage"):
        raise NnUNetPruneError(f"Configuration {configuration} is a cascade stage (it needs the predictions of "
                               f"{config['previous_stage']}); plans-from-model supports single-stage configurations.")
    data_dir = dataset_dir / config["data_identifier"]
    if not data_dir.is_dir():
        raise NnUNetPruneError(
            f"{data_dir} does not exist: the new plans reuse the preprocessed data of plans "
            f"{source.get('plans_name')!r}, configuration {configuration}. Preprocess it first (nnUNetv2_preprocess -d "
            f"{dataset_name} -plans_name {source.get('plans_name')} -c {configuration}) or point nnUNet_preprocessed "
            f"at the folder that has it.")
    target = dataset_dir / f"{plans_name}.json"
    results = Path(os.environ.get("nnUNet_results") or "") / dataset_name
    if os.environ.get("nnUNet_results") and results.is_dir():
        users = sorted(p.name for p in results.iterdir() if p.is_dir() and f"__{plans_name}__" in p.name)
        if users and target.exists():
            raise NnUNetPruneError(f"{target} exists and trained models use it ({', '.join(users)}): replacing it "
                                   f"would change what they mean. Choose another --plans-name.")
    if target.exists() and not (overwrite and _written_by_us_unchanged(target)):
        raise NnUNetPruneError(
            f"{target} exists. " + ("It was not written by plans-from-model, or was changed since: it is left as it "
                                    "is; choose another --plans-name." if overwrite else
                                    "Choose another --plans-name, or pass --overwrite to replace a file this command "
                                    "wrote (and nobody changed)."))

    # the fold's architecture
    network = folder.load_network(fold)
    graph = build_channel_graph(network)
    widths = graph.widths()
    plans_network = folder.build_network()
    plans_widths = build_channel_graph(plans_network).widths()
    arch = config["architecture"]
    kwargs = arch["arch_kwargs"]
    blocks, plans_blocks = _block_counts(network), _block_counts(plans_network)
    for (part, stage), count in blocks.items():
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
    arch["network_class_name"] = adaptive_class_name(arch["network_class_name"])
    kwargs["channel_widths"] = dict(widths)

    plans = copy.deepcopy(source)
    plans["plans_name"] = plans_name
    plans["configurations"] = {configuration: config}
    plans.pop(MARKER, None)

    # the network nnU-Net will build from these plans must have every tensor of the checkpoint's shape
    pm = PlansManager(plans)
    built = build_adaptive_network(pm, pm.get_configuration(configuration), folder.dataset_json)
    expected = {k: tuple(v.shape) for k, v in network.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in built.state_dict().items()}
    if expected != got:
        diff = sorted(k for k in expected.keys() | got.keys() if expected.get(k) != got.get(k))
        raise NnUNetPruneError(f"The plans cannot reproduce fold {fold}'s architecture ({len(diff)} tensors differ, "
                               f"e.g. {', '.join(diff[:3])}); nothing was written.")
    patch = cm.patch_size
    result = PlansFromModelResult(
        target, plans_name, dataset_name, configuration, fold,
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
    plans[MARKER]["sha256"] = _content_hash(plans)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(json.dumps(plans, indent=4))
    os.replace(tmp, target)
    return result
