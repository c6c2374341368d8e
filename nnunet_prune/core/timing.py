"""One latency measurement for every tool that times networks (report, sweep, benchmark, demo).

A latency is only a result if the machine was quiet and the timed runs agree. So every timing here

* **repeats until the median is known**: ``policy.repeats`` timed rounds first, then further rounds of the same size
  until the median of every candidate is known to within ``policy.precision`` (the half-width of the median's
  approximate 95 % confidence interval, 1.57 x IQR / sqrt(runs): the notch of a box plot, McGill, Tukey & Larsen
  1978), or until ``policy.max_repeats`` runs or ``policy.max_seconds`` of timing;
* **interleaves its candidates**: with several networks (dense and pruned, or three models) each round runs every
  candidate once, the order rotated from round to round, so drift of the machine (another job starting, the clock
  frequency changing) hits all of them alike; the ratio of two candidates is the median of their per-round ratios;
* **checks the load**: a :class:`LoadSource` says how many cores other processes used while the timing ran
  (:class:`SystemLoad`: on Linux from ``/proc/stat`` minus this process's own CPU time, so the timing itself does
  not count; elsewhere the 1-minute load average). More than the cores the timing's threads leave free, plus
  ``policy.load_margin``, is a busy machine;
* **gives a verdict**: a busy machine or a median that is still not known after the cap makes the timing *not
  comparable*, with the reason (``LatencyStats.not_comparable``). Tools then print ``n/c`` where a ratio, a
  speed-up or a "fastest" choice built on it would be, and say why.

The load source and the clock are parameters, so tests simulate a busy machine or a noisy timer exactly.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

#: what tables print in place of a ratio, a speed-up or a "fastest" choice built on a timing that is not comparable
NOT_COMPARABLE = "n/c"
#: the factor of the median's confidence interval: median +- 1.57 IQR / sqrt(n) (McGill, Tukey & Larsen 1978)
NOTCH = 1.57


@dataclass(frozen=True)
class TimingPolicy:
    """How long to time and when a timing counts.

    ``repeats``: timed runs per candidate at least (one round each); more rounds of ``repeats`` runs follow while
    some candidate's median is known less precisely than ``precision`` (a fraction of the median), up to
    ``max_repeats`` runs (None: 5 x ``repeats``) or ``max_seconds`` (s) of timing (the first rounds always run).
    ``load_margin``: cores other processes may use beyond those the timing's threads leave free.
    """

    repeats: int = 10
    max_repeats: int | None = None
    max_seconds: float = 30.0
    precision: float = 0.05
    load_margin: float = 0.5

    def __post_init__(self):
        if self.repeats < 1:
            raise ValueError(f"repeats must be at least 1 (got {self.repeats})")
        if self.max_repeats is not None and self.max_repeats < self.repeats:
            raise ValueError(f"max_repeats ({self.max_repeats}) must be at least repeats ({self.repeats})")
        if not self.precision > 0 or self.max_seconds < 0 or self.load_margin < 0:
            raise ValueError("precision must be > 0, max_seconds and load_margin >= 0")

    @property
    def cap(self) -> int:
        """The most timed runs per candidate."""
        return self.max_repeats if self.max_repeats is not None else 5 * self.repeats


@dataclass(frozen=True)
class LatencyStats:
    """Milliseconds per run: median, quartiles and range of ``runs`` timed runs, and the verdict.

    ``not_comparable`` is None for a timing that counts, else why it does not (a busy machine, a median not known
    after the cap); ``other_cores`` the cores other processes used while it ran (None: unknown)."""

    median_ms: float
    q1_ms: float
    q3_ms: float
    min_ms: float
    max_ms: float
    runs: int
    not_comparable: str | None = None
    other_cores: float | None = None

    @property
    def iqr_ms(self) -> float:
        """Interquartile range (ms): the spread of the middle half of the runs."""
        return self.q3_ms - self.q1_ms

    @property
    def median_ci_ms(self) -> float:
        """Half-width (ms) of the median's approximate 95 % confidence interval, 1.57 x IQR / sqrt(runs)."""
        return NOTCH * self.iqr_ms / math.sqrt(self.runs)

    @property
    def comparable(self) -> bool:
        """True when the timing counts: a quiet machine and a known median."""
        return self.not_comparable is None

    @classmethod
    def of(cls, seconds: Sequence[float], not_comparable: str | None = None,
           other_cores: float | None = None) -> LatencyStats:
        """Statistics (in ms) of the timed runs ``seconds`` (in seconds, at least one); quartiles by the inclusive
        method."""
        ms = sorted(t * 1000.0 for t in seconds)
        if not ms:
            raise ValueError("no timed runs")
        if len(ms) >= 2:
            q1, _, q3 = statistics.quantiles(ms, n=4, method="inclusive")
        else:
            q1 = q3 = ms[0]
        return cls(statistics.median(ms), q1, q3, ms[0], ms[-1], len(ms), not_comparable, other_cores)


class LoadSource(Protocol):
    """Where the load check reads how busy the machine is: ``cores`` the timing can use; :meth:`begin` opens a
    window and :meth:`end` closes it, returning the cores other processes used meanwhile (None: unknown)."""

    cores: int

    def begin(self) -> object:
        """Open a window (returns a token for :meth:`end`)."""

    def end(self, token: object) -> float | None:
        """Cores other processes used since :meth:`begin` (None: unknown)."""


def _usable_cpus() -> list[int] | None:
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


class SystemLoad:
    """The cores other processes use, measured over the timing window.

    Linux: the busy time of the CPUs this process may run on (``/proc/stat``: everything but idle and iowait;
    steal time counts as busy) minus this process's own CPU time (``os.times``, all its threads: PyTorch, ONNX
    Runtime and OpenVINO thread pools; and its children that ended within the window, e.g. a timed
    ``nnUNetv2_predict`` subprocess), divided by the wall time. A window shorter than ``min_window`` seconds is
    extended by sleeping, so the kernel's 10 ms ticks do not dominate. Elsewhere: the 1-minute load average read at
    the start of the window (it also counts this process's recent work: a coarser check).
    """

    def __init__(self, min_window: float = 0.5):
        self.cpus = _usable_cpus()
        self.cores = len(self.cpus) if self.cpus else (os.cpu_count() or 1)
        self.min_window = min_window
        self._tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def _busy_seconds(self) -> float | None:
        """Busy CPU seconds of the usable CPUs since boot, or None without /proc/stat."""
        try:
            with open("/proc/stat") as f:
                lines = [line.split() for line in f if line.startswith("cpu")]
        except OSError:
            return None
        wanted = {f"cpu{i}" for i in self.cpus} if self.cpus else None
        busy = 0
        for fields in lines:
            if fields[0] == "cpu" or (wanted is not None and fields[0] not in wanted):
                continue
            values = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
            busy += sum(values) - values[3] - values[4]
        return busy / self._tick

    @staticmethod
    def _own_seconds() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def begin(self) -> object:
        """Open a window: (wall time, busy CPU seconds, own CPU seconds) or the load average where /proc is absent."""
        busy = self._busy_seconds()
        if busy is None:
            try:
                return ("loadavg", os.getloadavg()[0])
            except (AttributeError, OSError):
                return ("loadavg", None)
        return ("proc", time.monotonic(), busy, self._own_seconds())

    def end(self, token: object) -> float | None:
        """Cores other processes used since :meth:`begin` (None: unknown)."""
        if token[0] == "loadavg":
            return token[1]
        _, t0, busy0, own0 = token
        elapsed = time.monotonic() - t0
        if elapsed < self.min_window:
            time.sleep(self.min_window - elapsed)
        busy, own, wall = self._busy_seconds(), self._own_seconds(), time.monotonic() - t0
        if busy is None or wall <= 0:
            return None
        return max(0.0, (busy - busy0) - (own - own0)) / wall


@dataclass
class FixedLoad:
    """A load source that reports the same reading every time: ``other_cores`` cores used by other processes on a
    machine of ``cores`` cores (a simulated busy or quiet machine in tests)."""

    other_cores: float | None
    cores: int = 2

    def begin(self) -> object:
        """Nothing to open."""
        return None

    def end(self, token: object) -> float | None:
        """The fixed reading."""
        return self.other_cores


def busy_reason(other_cores: float | None, cores: int, threads: int, margin: float = 0.5) -> str | None:
    """Why a machine is too busy for timings with ``threads`` threads on ``cores`` cores, or None: other processes
    used more than the cores the threads leave free, plus ``margin``."""
    if other_cores is None or other_cores <= max(0, cores - threads) + margin:
        return None
    return (f"busy machine: other processes used {other_cores:.1f} of {cores} cores while it was timed with "
            f"{threads} thread(s)")


def unstable_reason(stats: LatencyStats, precision: float) -> str | None:
    """Why a median is not known well enough (its confidence half-width above ``precision`` x median), or None."""
    if stats.median_ms <= 0 or stats.median_ci_ms <= precision * stats.median_ms:
        return None
    ci, iqr = stats.median_ci_ms / stats.median_ms, stats.iqr_ms / stats.median_ms
    return (f"unstable: after {stats.runs} runs the median is known only to +-{ci:.0%} (the runs' interquartile "
            f"range is {iqr:.0%} of the median)")


@dataclass
class Timings:
    """What :func:`time_interleaved` measured: ``stats`` per candidate that ran, ``failed`` the exception of each
    candidate that raised (left out of the later rounds), ``seconds`` each candidate's runs in round order (s),
    ``other_cores`` the load reading, ``threads`` and ``cores``, ``busy`` why the machine was too busy (None: it
    was not) and ``precision`` the policy's bound on the relative uncertainty of a median or ratio."""

    stats: dict[str, LatencyStats] = field(default_factory=dict)
    failed: dict[str, BaseException] = field(default_factory=dict)
    seconds: dict[str, list[float]] = field(default_factory=dict)
    other_cores: float | None = None
    threads: int = 1
    cores: int = 1
    busy: str | None = None
    precision: float = 0.05

    def ratio(self, numerator: str, denominator: str) -> tuple[float | None, str | None]:
        """(median over the rounds of numerator time / denominator time, why it is not comparable or None). A
        speed-up of a pruned network is ``ratio(dense, pruned)``. The ratio is judged on its own: a busy machine
        makes it not comparable; otherwise it counts when its median is known to within ``precision`` (the
        per-round ratios cancel drift both candidates saw, so a ratio can be known when the single medians are
        not). (None, reason) if either candidate failed."""
        if numerator not in self.stats or denominator not in self.stats:
            return None, "not measured"
        pairs = [x / y for x, y in zip(self.seconds[numerator], self.seconds[denominator]) if y > 0]
        if not pairs:
            return None, "not measured"
        value = statistics.median(pairs)
        if self.busy:
            return value, self.busy
        q1, _, q3 = statistics.quantiles(pairs, n=4, method="inclusive") if len(pairs) >= 2 else (value,) * 3
        ci = NOTCH * (q3 - q1) / math.sqrt(len(pairs))
        if value > 0 and ci > self.precision * value:
            return value, (f"unstable: after {len(pairs)} rounds the ratio is known only to +-{ci / value:.0%} "
                           f"(its per-round values spread {(q3 - q1) / value:.0%} around the median)")
        return value, None


def _batch(candidates: Mapping[str, Callable[[], object]], names: list[str], rounds: int, start: int,
           clock: Callable[[], float], sync: Callable[[], None] | None, out: Timings) -> None:
    """``rounds`` rounds over ``names`` (the order rotated by one each round); a candidate that raises is moved to
    ``out.failed`` and left out of the rounds after."""
    for r in range(rounds):
        shift = (start + r) % max(1, len(names))
        for name in names[shift:] + names[:shift]:
            if name in out.failed:
                continue
            try:
                if sync is not None:
                    sync()
                t0 = clock()
                candidates[name]()
                if sync is not None:
                    sync()
                out.seconds[name].append(clock() - t0)
            except Exception as e:  # noqa: BLE001 - one candidate (e.g. a failed compile) must not cost the others
                out.failed[name] = e
    names[:] = [n for n in names if n not in out.failed]


def time_interleaved(candidates: Mapping[str, Callable[[], object]], *, policy: TimingPolicy | None = None,
                     warmup: int = 2, threads: int = 1, load: LoadSource | None = None,
                     clock: Callable[[], float] = time.perf_counter,
                     sync: Callable[[], None] | None = None) -> Timings:
    """Time every candidate (a callable running one pass, e.g. one forward over one patch) interleaved, until each
    median is known or the policy's cap is reached, and give each a verdict (module docstring).

    ``warmup`` untimed runs per candidate come first (one candidate after the other). ``threads``: the CPU threads
    the candidates use (for the load check). ``load``: the load source (default :class:`SystemLoad`); ``clock``: the
    timer in seconds (default ``time.perf_counter``); ``sync``: called before and after every timed run (e.g.
    ``torch.cuda.synchronize``). A candidate that raises is reported in ``Timings.failed`` and the others go on.

    Raises:
        ValueError: no candidates, or warmup < 0.
    """
    if not candidates:
        raise ValueError("nothing to time")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0 (got {warmup})")
    policy = policy or TimingPolicy()
    load = load if load is not None else SystemLoad()
    out = Timings(seconds={n: [] for n in candidates}, threads=threads, cores=load.cores)
    names = list(candidates)
    token = load.begin()
    for name in names:
        for _ in range(warmup):
            try:
                candidates[name]()
            except Exception as e:  # noqa: BLE001
                out.failed[name] = e
                break
    names[:] = [n for n in names if n not in out.failed]
    started, done = clock(), 0
    while names:
        _batch(candidates, names, policy.repeats, done, clock, sync, out)
        done += policy.repeats
        if not names or done + policy.repeats > policy.cap or clock() - started >= policy.max_seconds:
            break
        if all(unstable_reason(LatencyStats.of(out.seconds[n]), policy.precision) is None for n in names):
            break
    out.other_cores = load.end(token)
    out.busy = busy = busy_reason(out.other_cores, out.cores, threads, policy.load_margin)
    out.precision = policy.precision
    for name in candidates:
        if name in out.failed or not out.seconds[name]:
            continue
        stats = LatencyStats.of(out.seconds[name], other_cores=out.other_cores)
        why = "; ".join(r for r in (busy, unstable_reason(stats, policy.precision)) if r) or None
        out.stats[name] = replace(stats, not_comparable=why)
    return out
