"""nnU-Net's local logger, extended with per-epoch pruning records and a second progress plot.

nnU-Net's logger holds one entry per epoch and key, is saved in every checkpoint and restored on ``--c``; keeping
the pruning records and the method state there makes them consistent with the checkpoint they were saved in. The
keys are :mod:`nnunet_prune.nnunet.trainers.records`'s (the fold's ``pruning_history.json`` is derived from them);
the plots live in :mod:`nnunet_prune.nnunet.trainers.plots` (re-exported here).
"""

from __future__ import annotations

from nnunetv2.training.logging.nnunet_logger import LocalLogger

from nnunet_prune.nnunet.trainers.plots import (  # noqa: F401 (plot_widths, plot_branch_map, BRANCH_COLORS re-exported)
    BRANCH_COLORS,
    plot_branch_map,
    plot_pruning_progress,
    plot_widths,
)
from nnunet_prune.nnunet.trainers.records import RECORD_KEY, SCALAR_KEYS, STATE_KEY


class PruningLocalLogger(LocalLogger):
    """nnU-Net's logger plus pruning keys (per-epoch records, method state and scalars), saved in every checkpoint."""
    def __init__(self, verbose: bool = False, extra_keys=()):
        super().__init__(verbose)
        self.extra_keys = list(dict.fromkeys([*SCALAR_KEYS, *extra_keys]))
        self._ensure_keys()

    def add_key(self, key: str) -> None:
        """Start logging ``key`` (existing values are kept)."""
        if key not in self.extra_keys:
            self.extra_keys.append(key)
        self._ensure_keys()

    def _ensure_keys(self) -> None:
        n = len(self.my_fantastic_logging.get("epoch_end_timestamps", []))
        for key in (*self.extra_keys, RECORD_KEY, STATE_KEY):
            values = self.my_fantastic_logging.setdefault(key, [])
            if len(values) < n:  # e.g. resuming from a checkpoint of a stock trainer
                values += [None] * (n - len(values))

    def load_checkpoint(self, checkpoint: dict):
        """Restore nnU-Net's keys and the pruning keys from a checkpoint's logger entry."""
        super().load_checkpoint(checkpoint)
        self._ensure_keys()

    def last(self, key: str):
        """The most recent non-None entry of ``key`` (or None)."""
        for value in reversed(self.my_fantastic_logging.get(key, [])):
            if value is not None:
                return value
        return None

    def plot_progress_png(self, output_folder):
        """nnU-Net's ``progress.png``, then ``progress_pruning.png`` (parameters, MACs, method scalars)."""
        super().plot_progress_png(output_folder)
        try:
            plot_pruning_progress(self.my_fantastic_logging, self.extra_keys, output_folder)
        except Exception as e:  # a plot must never stop a training
            print(f"nnunet-prune: could not plot pruning progress ({type(e).__name__}: {e})")
