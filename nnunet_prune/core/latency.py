"""The one latency loop every tool shares, with a runtime option (pure PyTorch).

* Latency: :func:`measure_latency_stats`, milliseconds per forward pass over one patch (batch 1, inference mode,
  no deep supervision), median and quartiles over repeated passes with the load check and verdict of
  :mod:`nnunet_prune.core.timing`; :func:`measure_latencies` times several networks interleaved; ``runtime`` "eager"
  or "compile" (``torch.compile``); :func:`peak_gpu_memory_mb`, the peak CUDA memory of one patch (MB).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from nnunet_prune.core.stats import inference_outputs, input_channels, unwrap
from nnunet_prune.core.timing import LatencyStats, LoadSource, TimingPolicy, Timings, time_interleaved

__all__ = ["LatencyStats", "Timings", "TimingPolicy", "measure_latencies", "measure_latency", "measure_latency_stats",
           "peak_gpu_memory_mb"]

#: runtimes the latency loop knows
RUNTIMES = ("eager", "compile")


@contextlib.contextmanager
def _eval_on(network: nn.Module, device: torch.device, threads: int | None):
    """Network in eval mode on ``device`` with ``threads`` CPU threads; everything restored afterwards."""
    modes = {m: m.training for m in network.modules()}
    first = next(network.parameters(), None)
    old_device = first.device if first is not None else torch.device("cpu")
    old_threads = torch.get_num_threads()
    old_benchmark = torch.backends.cudnn.benchmark
    try:
        if threads:
            torch.set_num_threads(threads)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # as nnU-Net's predictor
        network.eval().to(device)
        yield network
    finally:
        network.to(old_device)
        for m, mode in modes.items():
            m.training = mode
        torch.set_num_threads(old_threads)
        torch.backends.cudnn.benchmark = old_benchmark
        if device.type == "cuda":
            torch.cuda.empty_cache()


def _autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def measure_latency(network: nn.Module, patch_size: Sequence[int], device: str | torch.device = "cpu",
                    repeats: int = 10, warmup: int = 2, runtime: str = "eager", threads: int | None = None,
                    bf16: bool = False) -> float:
    """Median milliseconds (ms) for one forward pass over one patch; see :func:`measure_latency_stats`."""
    return measure_latency_stats(network, patch_size, device, repeats, warmup, runtime, threads, bf16).median_ms


def measure_latency_stats(network: nn.Module, patch_size: Sequence[int], device: str | torch.device = "cpu",
                          repeats: int = 10, warmup: int = 2, runtime: str = "eager", threads: int | None = None,
                          bf16: bool = False, *, policy: TimingPolicy | None = None, load: LoadSource | None = None,
                          clock: Callable[[], float] | None = None) -> LatencyStats:
    """Milliseconds for one forward pass over one patch (batch 1, ``torch.inference_mode``, no deep supervision)
    after ``warmup`` untimed passes: median, quartiles, range and the verdict of :mod:`nnunet_prune.core.timing`
    (at least ``repeats`` timed passes, more until the median is known; ``policy``, ``load`` and ``clock`` as
    there).

    ``runtime`` is one of :data:`RUNTIMES`: "eager", or "compile" (``torch.compile``: on the CPU plain inductor, on
    CUDA ``mode="reduce-overhead"``, i.e. CUDA graphs, which is how a deployed model would run). ``bf16`` runs under
    bfloat16 autocast. ``threads`` sets
    ``torch.set_num_threads`` for the measurement. The network's device, mode and the thread count are restored
    afterwards; a compiled measurement resets torch.compile's caches (``torch.compiler.reset``) before and after.
    A compile failure propagates (callers decide whether it is fatal).

    Raises:
        ValueError: repeats < 1, warmup < 0, or an unknown runtime.
    """
    timings = measure_latencies({"network": network}, patch_size, device, repeats, warmup, runtime, threads, bf16,
                                policy=policy, load=load, clock=clock)
    if "network" in timings.failed:
        raise timings.failed["network"]
    return timings.stats["network"]


def measure_latencies(networks: Mapping[str, nn.Module], patch_size: Sequence[int],
                      device: str | torch.device = "cpu", repeats: int = 10, warmup: int = 2, runtime: str = "eager",
                      threads: int | None = None, bf16: bool = False, *, policy: TimingPolicy | None = None,
                      load: LoadSource | None = None, clock: Callable[[], float] | None = None) -> Timings:
    """Time several networks interleaved (one forward pass of each per round, the order rotated every round) as
    :func:`measure_latency_stats` times one: drift of the machine hits all of them alike, and
    ``Timings.ratio(a, b)`` is the median of their per-round ratios. A network that fails (e.g. a compile) is in
    ``Timings.failed``; the others are measured.

    Raises:
        ValueError: repeats < 1, warmup < 0, an unknown runtime, or no networks.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError("repeats must be >= 1 and warmup >= 0")
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r} (known: {', '.join(RUNTIMES)})")
    if not networks:
        raise ValueError("no networks to time")
    compiled = runtime == "compile"
    device = torch.device(device)
    cuda = device.type == "cuda"
    if compiled:
        warmup = max(warmup, 3 if cuda else 1)  # compilation, then CUDA-graph recording, stay out of the timing
    policy = policy or TimingPolicy(repeats=repeats)
    nets = {name: unwrap(net) for name, net in networks.items()}
    with contextlib.ExitStack() as stack:
        calls = {}
        for name, net in nets.items():
            stack.enter_context(_eval_on(net, device, threads))
            stack.enter_context(inference_outputs(net))
            x = torch.randn((1, input_channels(net), *patch_size),
                            generator=torch.Generator().manual_seed(0)).to(device)
            calls[name] = _forward(net, x, compiled, cuda)
        if compiled:
            torch.compiler.reset()  # a fresh cache: no recompile limit across networks, no stale CUDA graphs
            stack.callback(torch.compiler.reset)
        stack.enter_context(torch.inference_mode())
        stack.enter_context(_autocast(device, bf16))
        return time_interleaved(calls, policy=policy, warmup=warmup, threads=1 if cuda else torch.get_num_threads(),
                                load=load, clock=clock or time.perf_counter,
                                sync=(lambda: torch.cuda.synchronize(device)) if cuda else None)


def _forward(net: nn.Module, x: torch.Tensor, compiled: bool, cuda: bool) -> Callable[[], object]:
    """One forward pass of ``net`` over ``x`` (compiled lazily on the first call with ``compiled``)."""
    state = {"fn": None}

    def call():
        if state["fn"] is None:
            state["fn"] = torch.compile(net, mode="reduce-overhead" if cuda else None) if compiled else net
        if cuda and compiled:
            torch.compiler.cudagraph_mark_step_begin()
        return state["fn"](x)

    return call


def peak_gpu_memory_mb(network: nn.Module, patch_size: Sequence[int], device: str | torch.device = "cuda",
                       bf16: bool = True) -> float:
    """Peak CUDA memory (MB, 1e6 bytes) allocated by PyTorch while predicting one patch (batch 1, eager), weights
    included: what the GPU must hold to run the network at all."""
    device = torch.device(device)
    net = unwrap(network)
    with _eval_on(net, device, None), inference_outputs(net):
        x = torch.randn((1, input_channels(net), *patch_size), device=device)
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        with torch.inference_mode(), _autocast(device, bf16):
            net(x)
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        del x
    return peak / 1e6
