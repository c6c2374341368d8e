"""A run's state: the wall time of each step, and what a rerun reads back (``benchmark_state.json``: the settings,
the rows per seed, the step times; saved atomically after every method). The demo keeps it in memory only."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path


class RunState:
    """The state of a run, kept in :attr:`data` (``steps``: step name, e.g. ``seed 0: dense train fold 0`` -> wall
    seconds, in the order the steps first ran; plus what the owner stores) and written to ``file`` by :meth:`save`
    (None: in memory only). ``tool`` names the owner of the file in its folder's manifest
    (:func:`nnunet_prune.core.outputs.record_files`; None: not recorded, e.g. a cluster job's own state, which the
    benchmark records when it collects). Thread-safe: the benchmark's methods run in threads."""

    def __init__(self, file: Path | None = None, tool: str | None = "benchmark"):
        self.file, self.tool = file, tool
        self.data: dict = {}
        self._lock = threading.Lock()

    def load(self) -> dict:
        """The state a previous run saved ({} when there is none or it cannot be read); becomes :attr:`data`."""
        self.data = {}
        if self.file is not None and self.file.is_file():
            try:
                self.data = json.loads(self.file.read_text())
            except ValueError:
                self.data = {}
        return self.data

    def merge_steps(self, files: Iterable[Path]) -> None:
        """Take the step times other processes recorded in ``files`` (the states of a benchmark's cluster jobs, each
        written by its job only): theirs win over this state's."""
        for file in files:
            steps = RunState(file).load().get("steps", {})
            with self._lock:
                self.data.setdefault("steps", {}).update(steps)

    def seconds(self, key: str) -> float | None:
        """The recorded seconds of step ``key`` (None: not recorded)."""
        with self._lock:
            return self.data.setdefault("steps", {}).get(key)

    def add_seconds(self, key: str, seconds: float, resumed: bool = False) -> float:
        """Record ``seconds`` for step ``key``, added to those already recorded when the step ``resumed`` (a training
        continued with ``--c``); returns the step's total."""
        with self._lock:
            steps = self.data.setdefault("steps", {})
            total = (steps.get(key) or 0.0) * resumed + seconds
            steps[key] = round(total, 1)
            return total

    @contextmanager
    def timed(self, key: str) -> Iterator[None]:
        """Time the block as step ``key`` (recorded when it finishes without an exception)."""
        start = time.perf_counter()
        yield
        self.add_seconds(key, time.perf_counter() - start)

    def save(self, **sections) -> None:
        """Store ``sections`` in :attr:`data` and write it (a temporary file, then a rename: a kill never leaves half
        a state), recorded as the tool's own file. Nothing is written without a file."""
        from nnunet_prune.core.outputs import record_files

        with self._lock:
            self.data.update(sections)
            if self.file is None:
                return
            tmp = self.file.with_name(self.file.name + ".tmp")
            tmp.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(self.data, indent=2, default=str))
            tmp.replace(self.file)
            if self.tool is not None:
                record_files(self.file.parent, self.tool, [self.file])
