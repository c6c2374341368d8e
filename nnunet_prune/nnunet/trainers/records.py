"""``FoldRecords``: the one owner of a fold's JSON records (writer and reader), nnU-Net glue.

A fold folder of this package's trainers holds, beside nnU-Net's files:

* ``pruning_config.json`` -- what the fold was started with (trainer, method class and settings, start, budget,
  seed, caps, initial widths / parameters / MACs per patch, patch size, start time); each ``--c`` appends an entry
  under ``"resumes"``. ``nnUNetTrainerBudget`` writes one too (method none). Written atomically (a ``.tmp`` file,
  then renamed), indented by 2.
* ``pruning_history.json`` -- ``{"trainer": ..., "epochs": [one record per finished epoch]}``, derived from nnU-Net's
  logger (so it matches a ``--c``), indented by 1.
* ``magnitude_pruning.json`` -- the sparsity record of a magnitude start
  (:meth:`~nnunet_prune.surgery.masks.SparsityStats.as_dict`), indented by 4.

Every reader and writer of these files goes through :class:`FoldRecords`; nothing else spells their names.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from nnunet_prune import NnUNetPruneError

CONFIG_FILE = "pruning_config.json"
HISTORY_FILE = "pruning_history.json"
MAGNITUDE_FILE = "magnitude_pruning.json"

#: scalar keys every pruning trainer logs each epoch in nnU-Net's logger
SCALAR_KEYS = ("num_parameters", "macs")
#: per-epoch dict entries of nnU-Net's logger: a record (widths, removals, ...; the epochs of
#: ``pruning_history.json``) and the method state after the epoch
RECORD_KEY = "nnunet_prune_record"
STATE_KEY = "nnunet_prune_state"


class FoldRecords:
    """The JSON records of one fold folder (``fold_k`` of a model folder; see the module docstring).

    Readers never raise for a missing or damaged file: they return an empty record (``{}`` / ``[]``) or None.
    """

    def __init__(self, folder: str | os.PathLike):
        self._name = os.fspath(folder)  # as given: messages name the file as the caller spelt its folder
        self.folder = Path(folder)

    @property
    def config_path(self) -> Path:
        """``<fold>/pruning_config.json``."""
        return self.folder / CONFIG_FILE

    @property
    def history_path(self) -> Path:
        """``<fold>/pruning_history.json``."""
        return self.folder / HISTORY_FILE

    @property
    def magnitude_path(self) -> Path:
        """``<fold>/magnitude_pruning.json``."""
        return self.folder / MAGNITUDE_FILE

    # ------------------------------------------------------------------ pruning_config.json
    def stored_config(self) -> dict | None:
        """The fold's ``pruning_config.json`` as written, or None when it does not exist, cannot be read, or does not
        hold a JSON object."""
        config = _read_json(self.config_path)
        return config if isinstance(config, dict) else None

    def read_config(self) -> dict:
        """The fold's ``pruning_config.json`` ({} if it does not exist yet or cannot be read)."""
        return self.stored_config() or {}

    def write_config(self, config: Mapping[str, Any]) -> str:
        """Write ``pruning_config.json`` atomically (``.tmp``, then renamed); returns its path."""
        path = os.path.join(self._name, CONFIG_FILE)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(config, f, indent=2)
        os.replace(tmp, path)
        return path

    def start_or_resume(self, start: Mapping[str, Any], resume: Mapping[str, Any] | None,
                        resumes_if: str | None = "method") -> str:
        """Record a start: ``start`` as the new ``pruning_config.json``; or, when ``resume`` is given and the stored
        config is an object (that holds the key ``resumes_if``, when that is given), ``resume`` appended under its
        ``"resumes"`` (what the fold was started with is kept). Returns the file's path."""
        previous = self.stored_config() if resume is not None else None
        if previous is not None and (resumes_if is None or resumes_if in previous):
            previous.setdefault("resumes", []).append(dict(resume))
            return self.write_config(previous)
        return self.write_config(start)

    def initial_widths(self) -> dict[str, int] | None:
        """The unpruned group widths recorded at the start (``"initial_widths"``; None if absent or malformed)."""
        widths = self.read_config().get("initial_widths")
        try:
            if isinstance(widths, dict):
                return {str(k): int(v) for k, v in widths.items()}
        except (ValueError, TypeError):
            pass
        return None

    def check_same_method(self, method: Mapping[str, Any], trainer: str, fold, env_var: str = "") -> None:
        """On ``--c``: refuse method settings that differ from those the fold was started with (a Sauron run with
        another tau_max, a magnitude fold with another tau would be neither). ``method``: the current settings by
        public name; nothing to check when the fold recorded none.

        Raises:
            NnUNetPruneError: naming each setting, its recorded and its current value, and what to do.
        """
        previous = self.read_config().get("method")
        if not isinstance(previous, dict):
            return
        changed = [f"{k}: {previous[k]!r} at the start, {method[k]!r} now" for k in sorted(set(method) & set(previous))
                   if method[k] != previous[k]]
        if changed:
            raise NnUNetPruneError(
                f"{trainer} fold {fold} was started with other method settings "
                f"({'; '.join(changed)}; recorded in {os.path.join(self._name, CONFIG_FILE)}). Continue "
                f"(--c) with the settings it was started with" + (f" ({env_var}, plans entry)" if env_var else "") +
                ", or train a new fold without --c. Nothing was changed.")

    # ------------------------------------------------------------------ pruning_history.json
    def write_history(self, trainer: str, epochs: Sequence[Mapping[str, Any]]) -> str:
        """Write ``pruning_history.json`` (``{"trainer": trainer, "epochs": epochs}``); returns its path."""
        path = os.path.join(self._name, HISTORY_FILE)
        with open(path, "w") as f:
            json.dump({"trainer": trainer, "epochs": list(epochs)}, f, indent=1)
        return path

    def read_history(self) -> list[dict]:
        """The per-epoch records of ``pruning_history.json`` ([] if it does not exist or cannot be read)."""
        history = _read_json(self.history_path)
        epochs = history.get("epochs") if isinstance(history, dict) else None
        return [r for r in epochs if isinstance(r, dict)] if isinstance(epochs, list) else []

    # ------------------------------------------------------------------ magnitude_pruning.json
    def write_magnitude(self, sparsity: Mapping[str, Any]) -> str:
        """Write ``magnitude_pruning.json`` (a magnitude start's sparsity record); returns its path."""
        path = os.path.join(self._name, MAGNITUDE_FILE)
        with open(path, "w") as f:
            json.dump(dict(sparsity), f, indent=4)
        return path

    def read_magnitude(self) -> dict:
        """``magnitude_pruning.json`` ({} if it does not exist or cannot be read)."""
        record = _read_json(self.magnitude_path)
        return record if isinstance(record, dict) else {}


def history_epochs(log: Mapping[str, Sequence], record_key: str = RECORD_KEY) -> list[dict]:
    """The ``pruning_history.json`` epochs from nnU-Net's logger (its ``my_fantastic_logging``): each non-None record
    under ``record_key``, with the epoch's duration (s), losses and pseudo Dice where nnU-Net logged them."""
    records = []
    for i, r in enumerate(log.get(record_key, [])):
        if r is None:
            continue
        r = dict(r)
        if i < len(log["epoch_end_timestamps"]):
            r["epoch_seconds"] = round(log["epoch_end_timestamps"][i] - log["epoch_start_timestamps"][i], 3)
            r["val_loss"] = float(log["val_losses"][i])
            r["train_loss"] = float(log["train_losses"][i])
            r["pseudo_dice"] = float(log["mean_fg_dice"][i])
        records.append(r)
    return records


def _read_json(path: Path) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
