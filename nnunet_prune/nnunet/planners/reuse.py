"""Skip preprocessing for LUnet configurations whose data another plans file already holds.

LUnet plans differ from the default plans only in network widths, so their 2d / 3d_fullres configurations point
at the default plans' data folders (``nnUNetPlans_2d`` ...). nnU-Net's preprocessor would delete and rewrite such a
folder; instead, when a configuration of this package's plans shares its data identifier with a configuration of
another plans file, the preprocessing settings are identical and the folder holds every training case, the work
is skipped. Set ``NNUNET_PRUNE_NO_REUSE=1`` to preprocess anyway.
"""

from __future__ import annotations

import functools
import os
from os.path import isdir, isfile, join

from nnunet_prune.nnunet import names
from nnunet_prune.nnunet.settings import flag

#: configuration keys that determine the preprocessed data (everything else is about the network or training)
PREPROCESSING_KEYS = (
    "data_identifier", "preprocessor_name", "spacing", "normalization_schemes", "use_mask_for_norm",
    "resampling_fn_data", "resampling_fn_seg", "resampling_fn_data_kwargs", "resampling_fn_seg_kwargs",
)
#: plans-level keys that determine the preprocessed data
PLANS_KEYS = ("transpose_forward", "foreground_intensity_properties_per_channel", "image_reader_writer")
NON_PLANS_FILES = {"dataset.json", "dataset_fingerprint.json", "splits_final.json"}


def preprocessing_signature(plans: dict, configuration: str) -> dict:
    """What decides the content of a configuration's preprocessed data folder."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    cfg = PlansManager(plans).get_configuration(configuration).configuration
    sig = {k: cfg.get(k) for k in PREPROCESSING_KEYS}
    sig.update({k: plans.get(k) for k in PLANS_KEYS})
    return sig


def reusable_configurations(preprocessed_dataset_folder: str, plans_identifier: str,
                            configurations) -> dict[str, str]:
    """Configurations of ``plans_identifier`` whose data is already there, mapped to the plans that made it.

    Only this package's plans are considered; stock plans always preprocess as nnU-Net does.
    """
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    plans_file = join(preprocessed_dataset_folder, plans_identifier + ".json")
    if not isfile(plans_file):
        return {}
    plans = load_json(plans_file)
    if plans.get("experiment_planner_used") not in names.PLANNERS:
        return {}
    others = {}
    for f in sorted(os.listdir(preprocessed_dataset_folder)):
        if f.endswith(".json") and f not in NON_PLANS_FILES and f != plans_identifier + ".json":
            try:
                other = load_json(join(preprocessed_dataset_folder, f))
            except Exception:
                continue
            if isinstance(other, dict) and "configurations" in other:
                others[f[:-5]] = other
    dataset_json = load_json(join(preprocessed_dataset_folder, "dataset.json"))
    n_cases = dataset_json.get("numTraining")

    out = {}
    for c in configurations:
        if c not in plans["configurations"]:
            continue
        mine = preprocessing_signature(plans, c)
        folder = join(preprocessed_dataset_folder, mine["data_identifier"])
        if not isdir(folder):
            continue
        for other_name, other in others.items():
            matches = [oc for oc in other["configurations"]
                       if _safe_signature(other, oc) == mine]
            if not matches:
                continue
            try:
                identifiers = [i for i in infer_dataset_class(folder).get_identifiers(folder)
                               if isfile(join(folder, i + ".pkl"))]
            except Exception:
                break
            if n_cases is not None and len(identifiers) == n_cases:
                out[c] = other_name
            break
    return out


def _safe_signature(plans: dict, configuration: str):
    try:
        return preprocessing_signature(plans, configuration)
    except Exception:
        return None


def wrap_preprocess_dataset(original):
    """Wrap nnU-Net's ``preprocess_dataset`` so that reusable LUnet configurations are skipped."""

    @functools.wraps(original)
    def preprocess_dataset(dataset_id, plans_identifier="nnUNetPlans",
                           configurations=("2d", "3d_fullres", "3d_lowres"), num_processes=(8, 4, 8),
                           verbose=False, show_progress_bar=True):
        configurations = list(configurations)
        nproc = list(num_processes) if isinstance(num_processes, (list, tuple)) else [num_processes]
        if len(nproc) == 1:
            nproc = nproc * len(configurations)
        if not flag("NNUNET_PRUNE_NO_REUSE") \
                and len(nproc) == len(configurations):
            try:
                from nnunetv2.paths import nnUNet_preprocessed
                from nnunetv2.utilities.dataset_name_id_conversion import convert_id_to_dataset_name

                folder = join(nnUNet_preprocessed, convert_id_to_dataset_name(dataset_id))
                reuse = reusable_configurations(folder, plans_identifier, configurations)
            except Exception as e:
                print(f"nnunet-prune: not checking for reusable preprocessed data ({type(e).__name__}: {e})")
                reuse = {}
            for c, source in reuse.items():
                print(f"Configuration {c}: the preprocessed data of plans '{source}' is identical and complete; "
                      f"reusing it instead of preprocessing again (set NNUNET_PRUNE_NO_REUSE=1 to force).")
            keep = [i for i, c in enumerate(configurations) if c not in reuse]
            configurations = [configurations[i] for i in keep]
            nproc = [nproc[i] for i in keep]
        return original(dataset_id, plans_identifier, configurations, nproc, verbose, show_progress_bar)

    preprocess_dataset._nnunet_prune_original = original
    return preprocess_dataset
