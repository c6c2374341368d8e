"""How long ``nnunet-prune demo`` takes and where it is: the measured duration (one figure, quoted by the README and
``nnunet-prune demo --help``), each step's share of it, and an estimate of the time left that learns from the steps
already done, with advice to shorten the run when the machine is slow.

Nothing here imports PyTorch or nnU-Net (``--help`` reads :data:`MEASURED_MINUTES`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

#: wall time of ``nnunet-prune demo`` with its defaults (synthetic data, 10 epochs x 25 iterations, Sauron and the
#: sweep), measured on :data:`MEASURED_ON`
MEASURED_MINUTES = 4.9
MEASURED_ON = "a quiet 2-core CPU without a GPU"
#: the budget that measurement used: epochs, training and validation iterations per epoch
MEASURED_BUDGET = (10, 25, 4)
#: each step's share of the measured time (seconds with the defaults; they add up to MEASURED_MINUTES): steps that
#: do not depend on the budget ...
STEP_SECONDS = {"dataset": 4.0, "plan default": 14.0, "plan LUnet": 6.0, "export": 8.0, "predict": 7.0,
                "sweep": 26.0, "measure": 10.0}
#: ... and the trainings: (start-up and final validation, the epochs at the measured budget)
TRAIN_SECONDS = {"nnU-Net default": (15.0, 60.0), "LUnet": (15.0, 35.0), "Sauron": (15.0, 65.0)}
#: a training that takes this many times its estimate means a slow or busy machine: the demo suggests a smaller
#: budget once
SLOW_FACTOR = 2.0
#: weight of the estimates against the time measured so far (seconds of "virtual" steps that ran as estimated)
PRIOR_WEIGHT_S = 60.0


@dataclass
class Step:
    """One step of the demo: ``key`` (e.g. "train LUnet"), its estimated seconds ``prior`` and, for the steps done
    once per model, ``model`` = (k, n): model k of n."""

    key: str
    prior: float
    model: tuple[int, int] | None = None


def budget_scale(epochs: int, iterations: int, val_iterations: int) -> float:
    """A budget's training iterations (validation included) relative to :data:`MEASURED_BUDGET`'s."""
    e, i, v = MEASURED_BUDGET
    return epochs * (iterations + val_iterations) / (e * (i + v))


def plan_steps(models: Sequence[str], exported: Sequence[str] = (), sweep: bool = True,
               scale: float = 1.0) -> list[Step]:
    """The demo's steps in the order the benchmark's pipeline runs them (each model trained, exported where it is,
    then predicted and evaluated, before the next one) for the models trained (labels as in
    :data:`TRAIN_SECONDS`; another label is estimated like the default network), those exported, with or without
    the sweep; ``scale``: the budget's :func:`budget_scale`."""
    n = len(models)
    fixed_default, per_default = TRAIN_SECONDS["nnU-Net default"]
    steps = [Step("dataset", STEP_SECONDS["dataset"]), Step("plan default", STEP_SECONDS["plan default"]),
             Step("plan LUnet", STEP_SECONDS["plan LUnet"])]
    for k, name in enumerate(models, 1):
        fixed, per = TRAIN_SECONDS.get(name, (fixed_default, per_default))
        steps.append(Step(f"train {name}", fixed + per * scale, (k, n)))
        if name in exported:
            steps.append(Step(f"export {name}", STEP_SECONDS["export"]))
        steps.append(Step(f"predict {name}", STEP_SECONDS["predict"], (k, n)))
    if sweep:
        steps.append(Step("sweep", STEP_SECONDS["sweep"]))
    steps.append(Step("measure", STEP_SECONDS["measure"]))
    return steps


def format_minutes(seconds: float) -> str:
    """``under a minute`` or ``about N min``."""
    return "under a minute" if seconds < 60 else f"about {max(1, round(seconds / 60))} min"


def busy_machine(load: float | None = None, cores: int | None = None) -> str | None:
    """Why the machine looks busy before the demo starts (the 1-minute load average is at least half the cores,
    at least 1), or None. ``load``/``cores`` default to this machine's (no load average on Windows: None)."""
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):
            return None
    cores = cores or os.cpu_count() or 1
    if load >= max(1.0, 0.5 * cores):
        return f"the machine is busy: load average {load:.1f} on {cores} core(s) before the demo started"
    return None


def shorter_budget(epochs: int, iterations: int) -> tuple[int, int]:
    """A budget about a quarter of the given one (half the epochs, half the iterations), for the advice."""
    return max(1, epochs // 2), max(5, iterations // 2)


@dataclass
class ProgressEstimate:
    """Where the demo is and how long it still takes: :meth:`begin` each step (it closes the previous one) and
    print what it returns. The time left is the estimate of the steps not done, times the ratio of the time the
    finished steps took to their estimates (weighted with :data:`PRIOR_WEIGHT_S` of estimate, so that one short step
    does not swing it). Times are ``time.perf_counter()`` seconds."""

    steps: list[Step]
    actual: dict[str, float] = field(default_factory=dict)
    current: str | None = None
    started: float = 0.0
    advised: bool = False

    def _index(self, key: str) -> int:
        return next(i for i, s in enumerate(self.steps) if s.key == key)

    def has(self, key: str) -> bool:
        """Whether ``key`` is one of the planned steps."""
        return any(s.key == key for s in self.steps)

    def speed(self) -> float:
        """Measured / estimated time of the finished steps, pulled towards 1 by the estimates' weight."""
        prior = sum(s.prior for s in self.steps if s.key in self.actual)
        return (sum(self.actual.values()) + PRIOR_WEIGHT_S) / (prior + PRIOR_WEIGHT_S)

    def remaining(self, from_key: str | None = None) -> float:
        """Seconds left for step ``from_key`` (default: the current one) and every step after it."""
        key = from_key or self.current
        start = self._index(key) if key is not None else len(self.steps)
        return self.speed() * sum(s.prior for s in self.steps[start:] if s.key not in self.actual)

    def finish(self, now: float) -> float | None:
        """Close the current step at ``now``; returns its seconds (None: no step was running)."""
        if self.current is None:
            return None
        seconds = self.actual[self.current] = max(0.0, now - self.started)
        self.current = None
        return seconds

    def begin(self, key: str, now: float) -> str:
        """Close the running step, start ``key``; returns ``step i of n (model k of m), about N min left``."""
        self.finish(now)
        i = self._index(key)
        self.current, self.started = key, now
        model = self.steps[i].model
        where = f"step {i + 1} of {len(self.steps)}" + (f" (model {model[0]} of {model[1]})" if model else "")
        return f"{where}, {format_minutes(self.remaining())} left"

    def slow_step(self, key: str) -> str | None:
        """Why the machine looks slow after the finished step ``key`` (a training that took over
        :data:`SLOW_FACTOR` times its estimate), once per run; None otherwise."""
        step = self.steps[self._index(key)]
        seconds = self.actual.get(key)
        if self.advised or seconds is None or not key.startswith("train ") or seconds < SLOW_FACTOR * step.prior:
            return None
        self.advised = True
        return f"{key[len('train '):]} trained in {seconds:.0f} s against about {step.prior:.0f} s expected"

    def advice(self, reason: str, epochs: int, iterations: int) -> str:
        """The note printed on a slow machine: ``reason``, the time left (once a step has been timed) and a smaller
        budget to run instead."""
        self.advised = True
        e, i = shorter_budget(epochs, iterations)
        left = self.speed() * sum(s.prior for s in self.steps if s.key not in self.actual)
        left_text = f" ({format_minutes(left)} left)" if self.actual else ""
        return (f"NOTE: {reason}. This run will take longer than the {MEASURED_MINUTES} minutes measured on "
                f"{MEASURED_ON}{left_text}. For a shorter run, stop it (Ctrl-C) and run "
                f"`nnunet-prune demo --epochs {e} --iterations {i}` (now {epochs} x {iterations}; a smaller budget "
                f"makes the numbers say less).")
