"""nnU-Net's local logger, extended with per-epoch pruning records and a second progress plot.

nnU-Net's logger holds one entry per epoch and key, is saved in every checkpoint and restored on ``--c``; keeping
the pruning records and the method state there makes them consistent with the checkpoint they were saved in.
"""

from __future__ import annotations

import math

from nnunetv2.training.logging.nnunet_logger import LocalLogger

#: scalar keys every pruning trainer logs each epoch
SCALAR_KEYS = ("num_parameters", "macs")
#: per-epoch dict entries: a record (widths, removals, ...) and the method state after the epoch
RECORD_KEY = "nnunet_prune_record"
STATE_KEY = "nnunet_prune_state"


class PruningLocalLogger(LocalLogger):
    def __init__(self, verbose: bool = False, extra_keys=()):
        super().__init__(verbose)
        self.extra_keys = list(dict.fromkeys([*SCALAR_KEYS, *extra_keys]))
        self._ensure_keys()

    def add_key(self, key: str) -> None:
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
        super().load_checkpoint(checkpoint)
        self._ensure_keys()

    def last(self, key: str):
        """The most recent non-None entry of ``key`` (or None)."""
        for value in reversed(self.my_fantastic_logging.get(key, [])):
            if value is not None:
                return value
        return None

    def plot_progress_png(self, output_folder):
        super().plot_progress_png(output_folder)
        try:
            plot_pruning_progress(self.my_fantastic_logging, self.extra_keys, output_folder)
        except Exception as e:  # a plot must never stop a training
            print(f"nnunet-prune: could not plot pruning progress ({type(e).__name__}: {e})")


def plot_pruning_progress(log: dict, scalar_keys, output_folder: str) -> None:
    """``progress_pruning.png``: parameters and MACs (relative to the start), per-group widths, method scalars."""
    import matplotlib

    matplotlib.use("agg")
    import matplotlib.pyplot as plt

    n = min(len(log[k]) for k in ("epoch_end_timestamps", "num_parameters", "macs"))
    if n == 0:
        return
    epochs = list(range(n))
    method_keys = [k for k in scalar_keys if k not in SCALAR_KEYS]
    fig, axes = plt.subplots(3 + len(method_keys), 1, figsize=(12, 4 * (3 + len(method_keys))), squeeze=False)
    axes = axes[:, 0]

    def rel(values):
        first = next((v for v in values if v), None)
        return [v / first * 100 if v and first else math.nan for v in values]

    ax = axes[0]
    ax.plot(epochs, rel(log["num_parameters"][:n]), label="parameters", lw=2)
    ax.plot(epochs, rel(log["macs"][:n]), label="MACs per patch", lw=2)
    ax.set_ylabel("% of first epoch")
    ax.set_ylim(0, 105)
    ax.legend()
    ax.set_title("Network size")

    ax = axes[1]
    times = [e - s for e, s in zip(log["epoch_end_timestamps"][:n], log["epoch_start_timestamps"][:n])]
    ax.plot(epochs, times, lw=2)
    ax.set_ylabel("epoch time [s]")
    ax.set_ylim(0, None)

    ax = axes[2]
    records = log.get(RECORD_KEY, [])[:n]
    names = []
    for r in records:
        if r:
            names = list(r["widths"])
            break
    for name in names:
        ax.plot(epochs, [r["widths"].get(name, math.nan) if r else math.nan for r in records], lw=1, label=name)
    ax.set_ylabel("channels per group")
    ax.set_yscale("log")
    if 0 < len(names) <= 40:
        ax.legend(fontsize=6, ncol=4, loc="upper right")

    for ax, key in zip(axes[3:], method_keys):
        values = [v if v is not None else math.nan for v in log.get(key, [])[:n]]
        if values and isinstance(values[0], (list, tuple)):
            for series in zip(*values):
                ax.plot(epochs, series, lw=1)
        else:
            ax.plot(epochs, values, lw=2)
        ax.set_ylabel(key)
    axes[-1].set_xlabel("epoch")
    fig.tight_layout()
    fig.savefig(f"{output_folder}/progress_pruning.png")
    plt.close(fig)


def plot_widths(records: list[dict], output_file: str, title: str = "") -> None:
    """Per-group widths at the first and last recorded epoch, as grouped bars (the per-layer width plot)."""
    import matplotlib

    matplotlib.use("agg")
    import matplotlib.pyplot as plt
    import numpy as np

    records = [r for r in records if r]
    if not records:
        return
    first, last = records[0]["widths"], records[-1]["widths"]
    names = list(first)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(8, 0.35 * len(names)), 5))
    ax.bar(x - 0.2, [first[n] for n in names], 0.4, label=f"epoch {records[0]['epoch']}")
    ax.bar(x + 0.2, [last.get(n, 0) for n in names], 0.4, label=f"epoch {records[-1]['epoch']}")
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=90, fontsize=7)
    ax.set_ylabel("channels")
    ax.set_title(title or "Channels per coupling group")
    ax.legend()
    fig.tight_layout()
    fig.savefig(output_file)
    plt.close(fig)
