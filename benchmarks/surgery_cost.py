"""Cost of ONE full pruning step: remove channels from EVERY coupling group of a default nnU-Net network.

What is timed is only ``graph.prune(removal, optimizer=opt)`` -- weights, biases, norms, consumer input slices,
SGD momentum buffers (nnU-Net's SGD: momentum 0.99, nesterov; buffers populated by a real ``opt.step()``),
``sync_attributes`` and the two ``count_parameters`` calls inside ``prune_channels``. Not timed: building the
channel graph (reported separately), the deep copy of network + optimizer that every repeat starts from (each
repeat prunes a fresh copy), choosing the random channels (``--fraction`` of every group, at least one).

Columns: ``MB touched`` is the least memory traffic the step must cause (read every sliced weight / buffer /
momentum tensor once, write its sliced copy once); ``GB/s`` is that divided by the median time; ``copy ms`` is a
``copy_`` of the same tensors into pre-allocated buffers (reads + writes somewhat MORE bytes than the step must),
i.e. roughly the floor for a memory-bound implementation on this machine; ``page faults`` are the minor faults
during the step (fresh memory mapped and zeroed by the kernel). The issue's goal is a step under 20 ms on CPU;
``meets goal`` compares the median with it.

``--profile`` adds a breakdown by phase: the functions ``prune_channels`` calls (``plan_keep``,
``consumer_input_index``, ``index_slicer`` -- building the gather indices --, ``set_tensor``,
``_slice_optimizer_state``, ``sync_attributes``, ``count_parameters``, ``ChannelGraph.widths``) and
``Tensor.index_select`` (the gathers of weights / norms; those of the momentum count as optimizer state) are
wrapped with timers; the rest is "other". ``--compare-two-pass`` times the current ``graph.prune`` against an
in-script reference of the previous approach (every sliced tensor and momentum buffer sliced with one
``index_select`` per dim, everything else the same), interleaved on fresh copies, checks that both give identical
tensors, optimizer state and channel attributes, and prints the speed-up of the one-pass gather. ``--small`` has
no effect here (the step depends on the weights, not on the patch size); it is accepted so that all benchmark
scripts share their options.

What the step costs, and why:

* It is memory-bound: nearly all of the time goes into gathering the kept slices of the weights and of the SGD
  momentum buffers; the Python around it (planning, index building, channel bookkeeping, parameter counts) is a
  small share (``--profile``). At the default ``--fraction 0.25`` the step must read and write at least ~420 MB
  for 2d (33.5 M parameters), ~390 MB for 3d_fullres (31.2 M: 125 MB of weights + 125 MB of momentum read, ~140 MB
  written) and ~1.3 GB for 3d_resenc (ResEnc M, 102 M parameters); the traffic shrinks with the square of the
  width, so later steps of an iterative schedule are cheaper.
* Adopted in ``nnunet_prune/surgery/prune.py``: a conv that is both producer and consumer (most of them) is sliced
  along dims 0 AND 1; ``index_slicer`` gathers it in ONE ``index_select`` over the rows of its
  ``(out * in, kernel)`` view, and the same slicer is applied to the parameter's momentum (any optimizer state of
  its shape). Two successive ``index_select`` calls, as before, read the tensor and then ~75 % of it again and
  write twice. This is the main gain (``--compare-two-pass``; the results are bit-identical); its own cost is the
  int64 row index (one entry per kept (out, in) pair, built by ``index_slicer`` and read by the gather), which is
  larger relative to the weights for 3x3 (2d) than for 3x3x3 (3d) kernels. Smaller changes adopted with it:
  ``plan_keep`` reads ``ChannelGroup.size`` once per group (it used to go through ``Module.__getattr__`` once per
  removed index) and builds the kept indices with a mask; kept indices are moved to the device once per group /
  consumer instead of once per tensor and optimizer-state entry (no effect on CPU, saves synchronous
  host-to-device copies on CUDA); ``sync_attributes`` makes one pass over the modules (children before parents)
  instead of four.
* 20 ms for a full-width default network is out of reach on one core of this VM whatever the implementation:
  moving ~400 MB in 20 ms needs a sustained ~20 GB/s (read + write), more than a plain ``copy_`` of the same
  tensors achieves on one core here (``copy ms`` is itself above the goal). It needs more memory bandwidth
  (several threads, ``--threads N``, on a workstation / server CPU: ``index_select`` along dim 0 runs in parallel
  over rows), a smaller step, or a GPU (there the copies take well under a millisecond and the Python part
  remains). Timings measured on a quiet machine are recorded in docs/performance.md.

On a machine with other jobs running, pass ``--threads 1`` (or at most the number of idle cores): with torch's
default of one thread per core and a core busy, every parallel op waits for a descheduled thread, which made the
step several times slower and even reversed the ``--compare-two-pass`` ratio in a smoke run.

Usage::

    python benchmarks/surgery_cost.py --networks 2d --repeats 2 --threads 1 --profile --compare-two-pass  # smoke
    python benchmarks/surgery_cost.py --repeats 15 --profile --compare-two-pass --out surgery_cost.md
    python benchmarks/surgery_cost.py --threads 8 --repeats 15 --compare-two-pass
    python benchmarks/surgery_cost.py --device cuda --repeats 30 --compare-two-pass --out surgery_cost_cuda.json
"""

from __future__ import annotations

import contextlib
import copy
import gc

try:
    import resource
except ImportError:  # not on Windows
    resource = None
import time
from collections import defaultdict

import torch

try:
    from benchmarks import common
except ImportError:  # run as a script: benchmarks/ is on sys.path
    import common

from nnunet_prune.surgery import build_channel_graph
from nnunet_prune.surgery.prune import PruneResult, prune_channels

GOAL_MS = 20.0


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt if resource is not None else 0


def populated_optimizer(network: torch.nn.Module) -> torch.optim.SGD:
    """nnU-Net's SGD with momentum buffers created by a real step (random gradients; no forward pass needed)."""
    opt = common.nnunet_sgd(network)
    with torch.no_grad():
        for p in network.parameters():
            p.grad = torch.randn_like(p)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return opt


def removal_for(graph, fraction: float, generator: torch.Generator) -> dict[int, list[int]]:
    """``fraction`` of every group's channels (at least one, never all), random indices."""
    out = {}
    for g in graph.groups:
        n = min(max(1, round(fraction * g.size)), g.size - 1)
        out[g.index] = torch.randperm(g.size, generator=generator)[:n].tolist()
    return out


def state_tensors(net: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[tuple, torch.Tensor]:
    """Every parameter, buffer and optimizer-state tensor, keyed by name (stable across deep copies)."""
    out = {}
    for name, m in net.named_modules():
        for store in (m._parameters, m._buffers):
            for k, t in store.items():
                if t is not None:
                    out[("module", name, k)] = t
    param_names = {p: n for n, p in net.named_parameters()}
    for p, st in opt.state.items():
        for k, t in st.items():
            if torch.is_tensor(t) and t.dim() > 0:
                out[("optimizer", param_names[p], k)] = t
    return out


def shapes(tensors: dict[tuple, torch.Tensor]) -> dict[tuple, tuple[torch.Size, int]]:
    """Shape and element size of every tensor (holding no references: the step must free what it replaces)."""
    return {k: (t.shape, t.element_size()) for k, t in tensors.items()}


def traffic(before: dict, after: dict) -> tuple[int, list[tuple]]:
    """(bytes read + written at least, keys of the sliced tensors)."""
    total, keys = 0, []
    for key, (shape, size) in before.items():
        new = after.get(key)
        if new is not None and new.shape != shape:
            total += (shape.numel() + new.numel()) * size
            keys.append(key)
    return total, keys


class PhaseTimer:
    """Wrap the functions ``prune_channels`` calls with timers (cumulative seconds per phase)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.t = defaultdict(float)
        self._depth_opt = 0

    def wrap(self, fn, phase):
        def wrapped(*a, **k):
            common.synchronize(self.device)
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                common.synchronize(self.device)
                self.t[phase] += time.perf_counter() - t0
        return wrapped

    @contextlib.contextmanager
    def installed(self):
        import nnunet_prune.surgery.prune as prune
        from nnunet_prune.surgery.graph import ChannelGraph

        timer = self
        targets = [(prune, "count_parameters", "count_parameters (x2)"), (prune, "plan_keep", "plan_keep"),
                   (prune, "consumer_input_index", "consumer_input_index"),
                   (prune, "index_slicer", "index_slicer (gather indices)"),
                   (prune, "sync_attributes", "sync_attributes"), (prune, "set_tensor", "set_tensor"),
                   (ChannelGraph, "widths", "graph.widths (x2)")]
        saved = [(owner, attr, getattr(owner, attr), label) for owner, attr, label in targets if hasattr(owner, attr)]
        original_index_select = torch.Tensor.index_select
        original_slice_opt = getattr(prune, "_slice_optimizer_state", None)

        def index_select(t, *a, **k):
            if timer._depth_opt:
                return original_index_select(t, *a, **k)
            return timer.wrap(original_index_select, "index_select (weights/norms)")(t, *a, **k)

        def slice_opt(*a, **k):
            timer._depth_opt += 1
            try:
                return timer.wrap(original_slice_opt, "optimizer state (slicing momentum)")(*a, **k)
            finally:
                timer._depth_opt -= 1

        try:
            for owner, attr, fn, label in saved:
                setattr(owner, attr, self.wrap(fn, label))
            if original_slice_opt is not None:
                prune._slice_optimizer_state = slice_opt
            torch.Tensor.index_select = index_select
            yield self
        finally:
            for owner, attr, fn, _ in saved:
                setattr(owner, attr, fn)
            if original_slice_opt is not None:
                prune._slice_optimizer_state = original_slice_opt
            del torch.Tensor.index_select  # the original lives on torch._C.TensorBase

# ------------------------------------------------------------------------------------------------------------------
# Reference: prune_channels before the one-pass gather (--compare-two-pass): the same function with a slicer that
# slices every tensor and every optimizer-state entry with one index_select per dim.
# ------------------------------------------------------------------------------------------------------------------


def two_pass_slicer(shape: torch.Size, dims: dict[int, torch.Tensor]):
    """Successive ``index_select`` calls, one per dim: a tensor sliced along dims 0 and 1 is read and written twice
    (the implementation before the one-pass gather)."""
    def slicer(t: torch.Tensor) -> torch.Tensor:
        for dim, idx in dims.items():
            t = t.index_select(dim, idx)
        return t
    return slicer


def two_pass_prune(graph, removal, optimizer=None, min_width: int = 1) -> PruneResult:
    """``prune_channels`` with the previous two-pass slicing; same results, tensor for tensor."""
    return prune_channels(graph, removal, optimizer=optimizer, min_width=min_width, slicer_factory=two_pass_slicer)


ATTRIBUTES = ("in_channels", "out_channels", "input_channels", "output_channels", "num_features",
              "bottleneck_channels")


def same_state(a: tuple, b: tuple) -> bool:
    """Identical tensors (parameters, buffers, optimizer state) and channel bookkeeping of two pruned copies."""
    (na, oa), (nb, ob) = a, b
    ta, tb = state_tensors(na, oa), state_tensors(nb, ob)
    if ta.keys() != tb.keys() or not all(torch.equal(ta[k], tb[k]) for k in ta):
        return False
    if na.encoder.output_channels != nb.encoder.output_channels:
        return False
    return all(getattr(x, at, None) == getattr(y, at, None) for x, y in zip(na.modules(), nb.modules(), strict=True)
               for at in ATTRIBUTES)


CURRENT, TWO_PASS = "one-pass gather (graph.prune)", "two-pass index_select (previous)"


def compare_two_pass(name: str, net, opt, args, gen, device) -> tuple[list[list], dict]:
    """Current ``graph.prune`` vs the two-pass reference: interleaved (alternating order), fresh copies each."""
    variants = {CURRENT: lambda g, r, o: g.prune(r, optimizer=o), TWO_PASS: two_pass_prune}
    times = {k: [] for k in variants}
    identical = False
    for run in range(args.warmup + args.repeats):
        removal, results = None, {}
        for k in (list(variants) if run % 2 else list(variants)[::-1]):  # no variant always runs first
            net_c, opt_c = copy.deepcopy((net, opt))
            graph = build_channel_graph(net_c)
            if removal is None:
                removal = removal_for(graph, args.fraction, gen)
            gc.collect()
            t = common.time_once(lambda f=variants[k], g=graph, r=removal, o=opt_c: f(g, r, o), device)
            if run >= args.warmup:
                times[k].append(t)
            if run == 0:
                results[k] = (net_c, opt_c)
            del net_c, opt_c, graph
        if run == 0:
            identical = same_state(results[CURRENT], results[TWO_PASS])
        del results
    one, two = common.median(times[CURRENT]), common.median(times[TWO_PASS])
    rows = []
    for k, v in times.items():
        lo, hi = common.spread(v)
        rows.append([name, k, f"{common.median(v) * 1e3:.1f}", f"{lo * 1e3:.1f}-{hi * 1e3:.1f}",
                     f"{two / common.median(v):.2f}x", "yes" if identical else "NO"])
    record = dict(one_pass_ms=one * 1e3, two_pass_ms=two * 1e3, speedup=two / one, identical=identical,
                  one_pass_all_ms=[x * 1e3 for x in times[CURRENT]], two_pass_all_ms=[x * 1e3 for x in times[TWO_PASS]])
    return rows, record


def main(argv=None) -> str:
    p = common.base_parser(__doc__, default_repeats=10)
    p.add_argument("--fraction", type=float, default=0.25, help="fraction of every group's channels to remove")
    p.add_argument("--profile", action="store_true", help="also print a breakdown of the step by phase")
    p.add_argument("--compare-two-pass", action="store_true",
                   help="also time graph.prune against the previous two-pass slicing (interleaved) and check that "
                        "the results are identical")
    args = p.parse_args(argv)
    device = common.setup(args)
    info = common.machine_info(device)
    names = args.networks or ["2d", "3d_fullres", "3d_resenc"]
    gen = torch.Generator().manual_seed(args.seed)

    headers = ["network", "params (M)", "groups", "tensors sliced", "MB touched", "build graph ms",
               "prune ms (median)", "min-max ms", "GB/s", "copy ms", "prune/copy",
               "page faults", "goal ms", "meets goal"]
    rows, records, profile_rows, compare_rows = [], [], [], []
    for name in names:
        net = common.build_network(name).to(device)
        opt = populated_optimizer(net)
        builds, prunes, copies, faults = [], [], [], []
        phases: dict[str, list[float]] = defaultdict(list)
        touched = n_sliced = 0
        n_params = sum(q.numel() for q in net.parameters())
        n_groups = 0
        copy_pairs = None  # (source, pre-touched destination) of every tensor the step slices
        total_runs = args.warmup + args.repeats + (args.repeats if args.profile else 0)
        for run in range(total_runs):
            net_c, opt_c = copy.deepcopy((net, opt))
            assert opt_c.param_groups[0]["params"][0] is next(net_c.parameters())  # noqa: S101 - copy sanity
            common.synchronize(device)
            t0 = time.perf_counter()
            graph = build_channel_graph(net_c)
            t_build = time.perf_counter() - t0
            n_groups = len(graph.groups)
            removal = removal_for(graph, args.fraction, gen)
            before = shapes(state_tensors(net_c, opt_c))
            gc.collect()
            profiling = run >= args.warmup + args.repeats
            step = lambda g=graph, r=removal, o=opt_c: g.prune(r, optimizer=o)  # noqa: E731
            f0 = minor_faults()
            if profiling:
                timer = PhaseTimer(device)
                with timer.installed():
                    t = common.time_once(step, device)
                for k, v in timer.t.items():
                    phases[k].append(v)
                phases["other (Python: specs, loops, .to(device))"].append(t - sum(timer.t.values()))
                phases["total (with timers)"].append(t)
            else:
                t = common.time_once(step, device)
            n_faults = minor_faults() - f0
            touched, sliced_keys = traffic(before, state_tensors(net_c, opt_c))
            n_sliced = len(sliced_keys)
            del net_c, opt_c, graph, step
            if copy_pairs is None:
                originals = state_tensors(net, opt)
                copy_pairs = [(originals[k], torch.zeros_like(originals[k])) for k in sliced_keys]
                del originals
            if run >= args.warmup and not profiling:
                builds.append(t_build)
                prunes.append(t)
                faults.append(n_faults)
                gc.collect()
                copies.append(common.time_once(lambda cp=copy_pairs: [d.copy_(x) for x, d in cp], device))
        del copy_pairs
        ms = lambda xs: common.median(xs) * 1e3  # noqa: E731
        med = ms(prunes)
        lo, hi = common.spread(prunes)
        rec = dict(network=name, params=n_params, groups=n_groups, tensors_sliced=n_sliced, bytes_touched=touched,
                   build_graph_ms=ms(builds), prune_ms=med, prune_min_ms=lo * 1e3, prune_max_ms=hi * 1e3,
                   gb_per_s=touched / med / 1e6, copy_ms=ms(copies), page_faults=common.median(faults),
                   goal_ms=GOAL_MS, meets_goal=med < GOAL_MS,
                   prune_all_ms=[x * 1e3 for x in prunes])
        records.append(rec)
        rows.append([name, f"{n_params / 1e6:.1f}", n_groups, n_sliced, f"{touched / 1e6:.0f}",
                     f"{rec['build_graph_ms']:.1f}", f"{med:.1f}", f"{lo * 1e3:.1f}-{hi * 1e3:.1f}",
                     f"{rec['gb_per_s']:.1f}", f"{rec['copy_ms']:.1f}", f"{med / rec['copy_ms']:.2f}",
                     f"{rec['page_faults']:.0f}", f"{GOAL_MS:.0f}",
                     "yes" if rec["meets_goal"] else "no"])
        print(" | ".join(str(c) for c in rows[-1]), flush=True)
        if args.profile:
            rec["profile_ms"] = {k: ms(v) for k, v in phases.items()}
            total = rec["profile_ms"]["total (with timers)"]
            for k, v in rec["profile_ms"].items():
                profile_rows.append([name, k, f"{v:.2f}", f"{100 * v / total:.0f} %"])
        if args.compare_two_pass:
            cmp_rows, rec["compare_two_pass"] = compare_two_pass(name, net, opt, args, gen, device)
            compare_rows += cmp_rows
            for r in cmp_rows:
                print(" | ".join(str(c) for c in r), flush=True)
            print(f"{name}: one-pass gather {rec['compare_two_pass']['speedup']:.2f}x faster than two-pass, "
                  f"identical results: {'yes' if rec['compare_two_pass']['identical'] else 'NO'}", flush=True)
        del net, opt

    notes = [f"Removed {args.fraction:.0%} of the channels (random, at least one) of every group in one "
             f"`graph.prune(..., optimizer=sgd)` call; median of {args.repeats} repeats, each on a fresh deep copy "
             f"of network + optimizer (momentum buffers populated). 'MB touched' = bytes read + written at least "
             f"(weights, norms, momentum); 'copy ms' = `copy_` of the same tensors into pre-allocated buffers "
             f"(memory-bandwidth reference: reads + writes slightly more bytes than the step must); 'page faults' "
             f"= minor page faults during the step (fresh memory the kernel had to map and zero)."]
    if profile_rows:
        notes += ["", f"Breakdown (--profile, median of {args.repeats} further repeats; timers add a little "
                      f"overhead):", "", common.markdown_table(["network", "phase", "ms", "share"], profile_rows)]
    if compare_rows:
        notes += ["", f"One-pass gather (current `graph.prune`) vs the previous two-pass slicing (--compare-two-pass: "
                      f"one index_select per dim for every sliced tensor and momentum buffer, everything else the "
                      f"same; interleaved, alternating order, fresh copies, median of {args.repeats}; 'speed-up' = "
                      f"two-pass median / median; 'identical' = same tensors, optimizer state and channel "
                      f"attributes):", "",
                  common.markdown_table(["network", "implementation", "ms (median)", "min-max ms", "speed-up",
                                         "identical"], compare_rows)]
    return common.finish("surgery cost: one full pruning step", info, args, headers, rows, "\n".join(notes), records)


if __name__ == "__main__":
    main()
