"""One latency measurement for every tool (nnunet_prune/core/timing.py): repeats until the median is known, interleaved
candidates, a load check, and a "not comparable" verdict that replaces ratios, speed-ups and "fastest" choices in
the report, the structured sweep and the benchmark. A simulated busy machine (a load source reading more cores in
use than the machine has free) and a noisy timer (a clock with random jumps) make the verdict deterministic."""

from __future__ import annotations

import csv
import itertools
import json
import random
import time

import pytest
import torch

from nnunet_prune.core.latency import measure_latencies, measure_latency_stats
from nnunet_prune.core.timing import (
    NOT_COMPARABLE,
    FixedLoad,
    SystemLoad,
    TimingPolicy,
    busy_reason,
    time_interleaved,
)
from nnunet_prune.tools.benchmark.benchmark import Benchmark, BenchmarkSettings, MethodResult, plot_pareto
from nnunet_prune.tools.report.efficiency import format_markdown, format_table, measure_model_folder, write_report
from nnunet_prune.tools.sweep.structured import write_outputs
from tests.helpers import make_network
from tests.unit.tools.test_report import make_model_folder

#: a machine with 2 cores on which other processes use 3 (a load average above the cores) / none
BUSY, QUIET = FixedLoad(3.0, cores=2), FixedLoad(0.0, cores=2)
#: runs that always count, whatever the real timer does (for the busy-machine cases)
LENIENT = TimingPolicy(repeats=3, max_repeats=3, precision=1e6)


class VirtualClock:
    """A clock that only moves when a candidate runs: each candidate adds its next duration (s)."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def candidate(self, durations):
        it = iter(durations)

        def run():
            self.now += next(it)
        return run


class NoisyClock:
    """The real timer plus random jumps of up to 50 ms at every reading: runs that never agree (seeded)."""

    def __init__(self, seed: int = 0):
        self.rng, self.offset = random.Random(seed), 0.0

    def __call__(self) -> float:
        self.offset += self.rng.uniform(0.0, 0.05)
        return time.perf_counter() + self.offset


# ---------------------------------------------------------------------------------------------------- the loop
def test_steady_runs_stop_after_the_first_round_and_count():
    clock = VirtualClock()
    out = time_interleaved({"a": clock.candidate(itertools.repeat(0.010))}, policy=TimingPolicy(repeats=5),
                           warmup=1, load=QUIET, clock=clock)
    stats = out.stats["a"]
    assert stats.runs == 5 and stats.median_ms == pytest.approx(10.0) and stats.comparable


def test_runs_that_do_not_agree_are_repeated_up_to_the_cap_then_not_comparable():
    clock = VirtualClock()
    noisy = clock.candidate(itertools.cycle([0.010, 0.030, 0.012, 0.045]))
    out = time_interleaved({"a": noisy}, policy=TimingPolicy(repeats=4, max_repeats=12), warmup=0, load=QUIET,
                           clock=clock)
    stats = out.stats["a"]
    assert stats.runs == 12 and not stats.comparable and stats.not_comparable.startswith("unstable")
    # the time cap stops adding rounds too (the first round always runs)
    clock2 = VirtualClock()
    out = time_interleaved({"a": clock2.candidate(itertools.cycle([0.010, 0.030]))},
                           policy=TimingPolicy(repeats=4, max_repeats=400, max_seconds=0.1), warmup=0, load=QUIET,
                           clock=clock2)
    assert out.stats["a"].runs == 8  # 4 runs (0.08 s), 4 more (0.16 s >= 0.1 s), stop


def test_a_busy_machine_makes_every_timing_not_comparable():
    clock = VirtualClock()
    out = time_interleaved({"a": clock.candidate(itertools.repeat(0.01)), "b": clock.candidate(itertools.repeat(0.02))},
                           policy=TimingPolicy(repeats=3), warmup=0, threads=1, load=BUSY, clock=clock)
    assert all("busy machine: other processes used 3.0 of 2 cores" in s.not_comparable for s in out.stats.values())
    assert out.ratio("b", "a") == (pytest.approx(2.0), out.stats["a"].not_comparable)
    assert busy_reason(0.4, cores=2, threads=2) is None and busy_reason(1.0, cores=4, threads=2) is None
    assert busy_reason(1.0, cores=2, threads=2) is not None


def test_candidates_run_interleaved_and_drift_hits_both():
    """The machine slows down steadily; the per-round ratio stays exact because both candidates see the drift."""
    clock, order = VirtualClock(), []
    slowdown = itertools.count()

    def candidate(name, ms):
        def run():
            order.append(name)
            clock.now += ms / 1000 * (1 + 0.05 * next(slowdown))
        return run

    out = time_interleaved({"dense": candidate("dense", 20), "pruned": candidate("pruned", 10)},
                           policy=TimingPolicy(repeats=4, max_repeats=4), warmup=0, load=QUIET, clock=clock)
    assert order == ["dense", "pruned", "pruned", "dense", "dense", "pruned", "pruned", "dense"]  # rotated
    speed_up, why = out.ratio("dense", "pruned")
    assert why is None or why.startswith("unstable")
    assert speed_up == pytest.approx(2.0, rel=0.06)


def test_a_speed_up_counts_when_noise_hits_both_candidates_alike():
    """Other work slows whole rounds down (both candidates alike): the medians stay unknown, the per-round ratio
    does not move, so the speed-up counts; on a busy machine it does not."""
    clock, calls = VirtualClock(), itertools.count()
    factors = [1.0, 3.0, 1.5, 4.0, 2.0]

    def candidate(ms):
        def run():
            clock.now += ms / 1000 * factors[(next(calls) // 2) % len(factors)]
        return run

    for load, counts in ((QUIET, True), (BUSY, False)):
        out = time_interleaved({"dense": candidate(20), "pruned": candidate(10)},
                               policy=TimingPolicy(repeats=5, max_repeats=10), warmup=0, load=load, clock=clock)
        assert not out.stats["dense"].comparable and out.stats["dense"].runs == 10
        speed_up, why = out.ratio("dense", "pruned")
        assert speed_up == pytest.approx(2.0) and (why is None) == counts


def test_a_failing_candidate_is_reported_and_the_others_are_timed():
    clock = VirtualClock()

    def broken():
        raise RuntimeError("no C++ compiler")

    out = time_interleaved({"ok": clock.candidate(itertools.repeat(0.01)), "broken": broken},
                           policy=TimingPolicy(repeats=2), warmup=1, load=QUIET, clock=clock)
    assert set(out.stats) == {"ok"} and "no C++ compiler" in str(out.failed["broken"])


def test_policy_and_load_source_checks():
    with pytest.raises(ValueError):
        TimingPolicy(repeats=0)
    with pytest.raises(ValueError):
        TimingPolicy(repeats=5, max_repeats=2)
    load = SystemLoad(min_window=0.0)
    token = load.begin()
    reading = load.end(token)
    assert load.cores >= 1 and (reading is None or reading >= 0)


def test_network_timing_takes_the_load_source_and_the_clock():
    net = make_network("plain", 2, ds=True, in_channels=1)
    busy = measure_latency_stats(net, [32, 32], "cpu", threads=1, load=BUSY, policy=LENIENT)
    assert busy.runs == 3 and busy.not_comparable.startswith("busy machine")
    noisy = measure_latency_stats(net, [32, 32], "cpu", threads=1, load=QUIET, clock=NoisyClock(),
                                  policy=TimingPolicy(repeats=3, max_repeats=6))
    assert noisy.runs == 6 and noisy.not_comparable.startswith("unstable")
    quiet = measure_latencies({"a": net, "b": make_network("plain", 2, ds=True, in_channels=1)}, [32, 32], "cpu",
                              threads=1, load=QUIET, policy=LENIENT)
    assert all(s.comparable for s in quiet.stats.values()) and quiet.ratio("a", "b")[1] is None
    assert torch.get_num_threads() >= 1 and net.decoder.deep_supervision  # restored


# ---------------------------------------------------------------------------------------------------- the report
def test_report_of_a_busy_machine_gives_no_ratio_and_no_fastest(tmp_path):
    dense_dir, _ = make_model_folder(tmp_path / "a", dice={0: (0.9, 0.7)})
    pruned_dir, _ = make_model_folder(tmp_path / "b", name="nnUNetTrainerPruned__nnUNetPlans__2d", pruned_folds=(0,),
                                      dice={0: (0.9, 0.0)})
    fast = dict(compile=False, repeats=3, warmup=0, threads=1, device="cpu", runtimes=[], policy=LENIENT)
    dense, = measure_model_folder(dense_dir, load=QUIET, **fast)
    warnings = []
    pruned, = measure_model_folder(pruned_dir, load=BUSY, warn=warnings.append, **fast)
    assert not dense.latency_not_comparable and "cpu_ms_eager" in pruned.latency_not_comparable
    assert warnings and "latency not comparable (CPU eager): busy machine" in warnings[0]
    table = format_table([dense, pruned])
    header, _, first, second = table.splitlines()
    assert "CPU ms vs first" in header and "MACs vs first" in header
    assert second.split()[-2:] == [NOT_COMPARABLE, "-0.3500"]  # 'CPU ms vs first' replaced, Dice kept
    assert "faster" not in second and "slower" not in second and f"({NOT_COMPARABLE})" in second
    assert "fewer" in second  # MACs are no timing: their ratio stays
    md = format_markdown([dense, pruned])
    assert "latency not comparable (CPU eager): busy machine: other processes used 3.0 of 2 cores" in md
    written = write_report([dense, pruned], tmp_path / "out")
    with open(written["csv"]) as f:
        records = list(csv.DictReader(f))
    assert [r["latency_comparable"] for r in records] == ["True", "False"]
    assert "busy machine" in records[1]["latency_not_comparable"] and float(records[1]["cpu_ms_eager"]) > 0


def test_report_names_no_fastest_runtime_from_timings_that_do_not_count(tmp_path):
    from nnunet_prune.tools.report.efficiency import FoldEfficiency

    row = FoldEfficiency(model="m", fold=0, trainer="t", configuration="2d", patch_size=[32, 32], parameters=10**6,
                         macs=10**9, checkpoint_bytes=10**6, cpu_ms_eager=5361.0, cpu_ms_eager_iqr=3168.0,
                         cpu_ms_runtimes={"onnxruntime": 128.0}, cpu_ms_runtimes_iqr={"onnxruntime": 5.0},
                         latency_not_comparable={"cpu_ms_eager": "unstable: ..."})
    assert row.fastest_cpu == "onnxruntime"  # what was measured ...
    table = format_table([row])
    assert "Fastest on CPU" in table and "41.9x" not in table and table.splitlines()[-1].split()[-2] == NOT_COMPARABLE
    written = write_report([row], tmp_path)
    with open(written["csv"]) as f:
        record, = csv.DictReader(f)
    assert record["fastest_cpu"] == "" and record["latency_comparable"] == "False"  # ... is no headline


# ---------------------------------------------------------------------------------------------------- the sweep
def sweep_report(load) -> dict:
    """A structured sweep's report whose latencies were measured interleaved under ``load``."""
    dense = make_network("plain", 2, ds=True, in_channels=1)
    pruned = make_network("plain", 2, ds=True, in_channels=1)
    timings = measure_latencies({"dense": dense, "pruned": pruned}, [32, 32], "cpu", threads=1, load=load,
                                policy=LENIENT)
    speed_up, why = timings.ratio("dense", "pruned")
    results = [{"fraction": f, "filters_removed": f, "parameters_removed": f, "macs_removed": f, "parameters": 1e5,
                "macs": 1e8, "latency_ms": timings.stats["pruned"].median_ms,
                "dense_latency_ms": timings.stats["dense"].median_ms, "speed_up": None if why else speed_up,
                "latency_not_comparable": why, "proxy_dice": 0.97, "real_dice": 0.8, "seconds": 1.0}
               for f in (0.5, 0.75)]
    return {"model": "/r/Dataset001_X/nnUNetTrainer__nnUNetPlans__2d", "folds": ["0"], "cases": ["a"],
            "settings": {"criterion": "l2", "ratio_of": "filters", "distribution": "global", "device": "cpu"},
            "threshold": 0.95, "dense_latency_ms": timings.stats["dense"].median_ms,
            "dense_latency_not_comparable": timings.stats["dense"].not_comparable, "dense_real_dice": 0.8,
            "largest_fraction_at_threshold": 0.75, "results": results}


def test_structured_sweep_outputs_mark_speed_ups_of_a_busy_machine(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    figures = []
    original = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: (figures.append(self), original(self, *a, **k))[1])
    paths = write_outputs(sweep_report(BUSY), tmp_path)
    md = paths["markdown"].read_text()
    assert f"| {NOT_COMPARABLE} |" in md and "busy machine" in md and "x |" not in md.split("| 0.5 |")[1]
    with open(paths["csv"]) as f:
        records = list(csv.DictReader(f))
    assert [r["speed_up"] for r in records] == ["", ""] and {r["latency_comparable"] for r in records} == {"False"}
    assert all(float(r["latency_ms"]) > 0 and float(r["dense_latency_ms"]) > 0 for r in records)
    twin = figures[0].axes[1]
    assert all(v != v for v in twin.get_lines()[0].get_ydata())  # no speed-up point drawn (NaN) ...
    assert sum(f"speed-up\n{NOT_COMPARABLE}" == t.get_text() for t in twin.texts) == 2  # ... a mark instead
    (tmp_path / "quiet").mkdir()
    quiet = write_outputs(sweep_report(QUIET), tmp_path / "quiet")
    with open(quiet["csv"]) as f:
        assert all(float(r["speed_up"]) > 0 for r in csv.DictReader(f))
    assert NOT_COMPARABLE not in quiet["markdown"].read_text().split("| 0 (unpruned)")[1]
    assert json.loads(quiet["json"].read_text())["results"][0]["speed_up"] > 0


# ---------------------------------------------------------------------------------------------------- the benchmark
def test_benchmark_outputs_mark_latencies_of_a_busy_machine(tmp_path):
    folder, _ = make_model_folder(tmp_path / "m")
    fold, = measure_model_folder(folder, load=BUSY, compile=False, repeats=3, warmup=0, threads=1, device="cpu",
                                 runtimes=[], policy=LENIENT, warn=None)
    settings = BenchmarkSettings(dataset="Dataset001_X", configuration="2d", folds=[0], methods=["dense", "lunet"])
    bench = Benchmark(settings, tmp_path / "bench")
    bench.out.mkdir()
    common = dict(status="ok", parameters=1e6, macs=1e9, checkpoint_mb=4.0, threads=1, dice=0.7,
                  dice_per_class={"liver": 0.9, "tumour": 0.5})
    bench.rows = {
        "dense": MethodResult("dense", "nnU-Net default", "t", "p", **common, cpu_ms=40.0, fastest_runtime="openvino",
                              fastest_ms=20.0),
        "lunet": MethodResult("lunet", "LUnet 32", "t", "p", **{**common, "macs": 2e8, "dice": 0.703},
                              cpu_ms=fold.cpu_ms_eager, fastest_runtime="pytorch", fastest_ms=fold.cpu_ms_eager,
                              latency_not_comparable=fold.not_comparable()),
    }
    md = bench.write().read_text()
    lunet_line = next(line for line in md.splitlines() if line.startswith("| LUnet 32"))
    assert f"({NOT_COMPARABLE})" in lunet_line and f"| {NOT_COMPARABLE} |" in lunet_line and "pytorch" not in lunet_line
    assert "openvino 20.0 ms" in md  # the comparable row keeps its fastest runtime
    with open(bench.out / "benchmark.csv") as f:
        records = {r["method"]: r for r in csv.DictReader(f)}
    assert records["lunet"]["fastest_runtime"] == "" and records["lunet"]["fastest_ms"] == ""
    assert records["lunet"]["latency_comparable"] == "False" and "busy machine" in records["lunet"][
        "latency_not_comparable"]
    assert records["dense"]["fastest_runtime"] == "openvino" and records["dense"]["latency_comparable"] == "True"
    assert float(records["lunet"]["cpu_ms_pytorch"]) > 0  # the measurement stays; the verdict says what it is worth


def test_pareto_latency_panel_marks_and_skips_timings_that_do_not_count(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    figures = []
    original = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: (figures.append(self), original(self, *a, **k))[1])
    rows = [MethodResult(n, n, "t", "p", status="ok", parameters=p, macs=m, cpu_ms=ms, fastest_ms=ms, dice=d)
            for n, p, m, ms, d in [("a", 1e5, 1e8, 5.0, 0.50), ("b", 1e6, 1e9, 2.0, 0.70), ("c", 1e7, 1e10, 50.0,
                                                                                              0.80)]]
    rows[1].latency_not_comparable = "busy machine"
    assert plot_pareto(rows, tmp_path / "p.png")
    latency_panel = figures[0].axes[1]
    assert "b (n/c)" in [t.get_text() for t in latency_panel.texts]
    front, = [line for line in latency_panel.get_lines() if line.get_linestyle() == "--"]
    assert list(front.get_xdata()) == [5.0, 50.0]  # b's 2 ms would have led the front: it is left out


def test_end_to_end_runs_on_a_busy_machine_give_no_ratio_and_no_fastest():
    from nnunet_prune.tools.report.end_to_end import EndToEnd, format_end_to_end

    def run(runtime, seconds, why=None):
        return EndToEnd("m", runtime, 4, [0], True, 0.5, "cpu", seconds, not_comparable=why)

    quiet = "\n".join(format_end_to_end([run("pytorch", 40.0), run("openvino", 20.0)]))
    assert "2.00x faster" in quiet and "**openvino** (fastest)" in quiet
    busy = "\n".join(format_end_to_end([run("pytorch", 40.0, "busy machine: other processes used 1.8 of 2 cores"),
                                        run("openvino", 20.0)]))
    assert "faster" not in busy and "(fastest)" not in busy and f"| {NOT_COMPARABLE} |" in busy
    assert "40.0 (n/c)" in busy and "m, pytorch: not comparable: busy machine" in busy
