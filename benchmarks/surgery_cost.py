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
``meets goal`` compares the median with it. ``--profile`` adds a breakdown (the functions ``prune_channels`` calls
and ``Tensor.index_select`` are wrapped with timers). ``--prototype`` times the current implementation against a
prototype of the proposed changes (below), interleaved on fresh copies, and checks that the results are identical.
``--small`` has no effect here (the step depends on the weights, not on the patch size); it is accepted so that
all benchmark scripts share their options.

Findings (2-core AMD EPYC VM, torch 2.14.1, 1 thread, while other CPU-heavy jobs were running, so absolute
numbers vary by up to 2x between runs; the side-by-side ratios are more stable):

* The goal is missed by 3-15x: 2d ~65-120 ms, 3d_fullres ~55-130 ms, 3d_resenc ~130-320 ms (graph building:
  1-3 ms, not included).
* The step is memory-bound. 3d_fullres has 31.2 M parameters: 125 MB of weights + 125 MB of momentum are read and
  ~140 MB written (390 MB, 206 tensors); 2d 33.5 M parameters, 418 MB; ResEnc M 102 M parameters, 1.28 GB. The
  breakdown (``--profile``): ``index_select`` of weights/norms 40-60 %, slicing the SGD momentum 28-45 %; all the
  Python around it 10-15 %: ``plan_keep`` 4-9 % (5-10 ms: it evaluates the ``ChannelGroup.size`` property --
  ``producers[0].weight.shape`` through ``Module.__getattr__`` -- once per removed index), ``sync_attributes``
  2-4 % (2-9 ms, four passes over all modules), the two ``count_parameters`` 1-3 %, spec building / loops 3-4 %.
* The current code slices a conv that is producer AND consumer with two ``index_select`` calls (dim 0, then dim 1),
  which reads the tensor and then 75 % of it again, and writes twice; on this VM the step takes ~1.2-2.4x a plain
  ``copy_`` of the same tensors.
* A single core moves ~13 GB/s (read + write) here (``copy ms``: 500 MB in ~37 ms for 3d_fullres), so the 390 MB
  of 3d_fullres alone take >= ~30 ms: 20 ms for a full-width 3D/2D default network is out of reach on one core of
  this VM whatever the implementation (the prototype below gets to ~40 ms); it needs > 20 GB/s (several
  threads on a workstation / server CPU -- not measurable on this loaded 2-core VM), a smaller step (traffic
  shrinks with the square of the width: later steps of an iterative schedule are cheaper) or a GPU (there the
  copies take well under 1 ms and the Python part, plus one host-to-device index copy per sliced tensor, remains).

Proposals for ``nnunet_prune/surgery/prune.py`` (implemented as ``prototype_prune`` below; ``--prototype`` measures
them -- three smoke runs: 1.4-1.8x faster on 2d, 1.2-1.75x on 3d_fullres, 1.4-1.6x on 3d_resenc; bit-identical
tensors, optimizer state and channel attributes; still ~40 ms for 3d_fullres on one core of this VM):

1. One-pass gather for tensors sliced along dims 0 and 1: view the weight as ``(out*in, kernel)`` rows and
   ``index_select`` the rows ``keep0[:, None] * in + keep1[None, :]`` once; reuse the same slicer for the momentum
   buffer (and any optimizer state of the same shape). This is the main win (items 2-5 together give only
   1.0-1.2x, partly within the noise).
2. ``plan_keep``: read ``g.size`` once per group (5-7 ms -> ~1.5-2.5 ms on these networks), build ``keep`` with a
   mask.
3. Move kept indices to the device once per group / consumer instead of ``idx.to(tensor.device)`` per tensor and
   per optimizer-state entry (no effect on CPU; on CUDA each is a synchronous host-to-device copy).
4. ``sync_attributes``: one pass over ``reversed(list(network.modules()))`` (children before parents) instead of
   four passes (~1.7 -> ~0.9 ms on 2d/3d_fullres).
5. Compute ``PruneResult.params_before/after`` lazily (or from the removed shapes) instead of two full
   ``count_parameters`` passes in the hot path (~0.4-1 ms each).
6. Worth a check on a real machine: the step with ``--threads N`` (``index_select`` along dim 0 runs in parallel
   over rows); ``THP_MEM_ALLOC_ENABLE=1`` cut the page faults of the step ~4x (7.9 k -> 2 k) but had no
   measurable effect on the time amid the noise here.

Usage::

    python benchmarks/surgery_cost.py --small --repeats 3 --profile --prototype    # smoke run
    python benchmarks/surgery_cost.py --threads 8 --repeats 15 --profile --prototype --out surgery_cost.md
    python benchmarks/surgery_cost.py --device cuda --repeats 30 --out surgery_cost_cuda.json
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
        import nnunet_prune.stats as stats
        import nnunet_prune.surgery.prune as prune
        from nnunet_prune.surgery.graph import ChannelGraph

        timer = self
        targets = [(stats, "count_parameters", "count_parameters (x2)"), (prune, "plan_keep", "plan_keep"),
                   (prune, "consumer_input_index", "consumer_input_index"),
                   (prune, "sync_attributes", "sync_attributes"), (prune, "set_tensor", "set_tensor"),
                   (ChannelGraph, "widths", "graph.widths (x2)")]
        saved = [(owner, attr, getattr(owner, attr), label) for owner, attr, label in targets if hasattr(owner, attr)]
        original_index_select = torch.Tensor.index_select
        original_slice_opt = getattr(prune, "_slice_optimizer_state", None)

        def index_select(t, *a, **k):
            if timer._depth_opt:
                return original_index_select(t, *a, **k)
            return timer.wrap(original_index_select, "index_select weights/norms")(t, *a, **k)

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
# Prototype of the proposed changes to nnunet_prune/surgery/prune.py (measured side by side with --prototype; the
# package itself is not modified). Same results, tensor for tensor, as graph.prune; differences:
#   * plan_keep reads ``g.size`` once per group (the original evaluates the property once per removed index) and
#     builds the kept indices with a mask;
#   * kept indices are moved to the device once per group / consumer, not once per tensor;
#   * each parameter's slicing function is built once and applied to the parameter and its optimizer state right
#     away; with ``one_pass`` a tensor sliced along dims 0 AND 1 (every conv that is both producer and consumer) is
#     gathered in ONE pass over (out*in, kernel) rows instead of two index_selects (the second re-reads 75 %);
#   * one pass over the modules (children before parents) for the channel bookkeeping instead of four;
#   * no count_parameters in the hot path (PruneResult could compute the counts lazily).
# ------------------------------------------------------------------------------------------------------------------


def _proto_plan_keep(graph, removal, min_width: int = 1):
    keep, removed, clipped = {}, {}, {}
    for key, indices in removal.items():
        g = graph.resolve(key)
        size = g.size
        idx = list(dict.fromkeys(int(i) for i in indices))
        bad = [i for i in idx if not 0 <= i < size]
        if bad:
            raise IndexError(f"group {g.name} has {size} channels; cannot remove {bad[:5]}")
        allowed = max(size - min_width, 0)
        if len(idx) > allowed:
            clipped[g.name] = len(idx) - allowed
            idx = idx[:allowed]
        if idx:
            mask = torch.ones(size, dtype=torch.bool)
            mask[idx] = False
            keep[g] = mask.nonzero().squeeze(1)
            removed[g.name] = sorted(idx)
    return keep, removed, clipped


def _proto_sync_attributes(network: torch.nn.Module) -> None:
    from dynamic_network_architectures.building_blocks.residual import BasicBlockD, BottleneckD, StackedResidualBlocks
    from dynamic_network_architectures.building_blocks.simple_conv_blocks import ConvDropoutNormReLU, StackedConvBlocks
    from torch.nn.modules.batchnorm import _NormBase
    from torch.nn.modules.conv import _ConvNd

    from nnunet_prune.surgery.tensors import conv_in_channels, conv_out_channels

    for m in reversed(list(network.modules())):  # pre-order reversed: every module after all its descendants
        if isinstance(m, _ConvNd):
            m.in_channels, m.out_channels = conv_in_channels(m), conv_out_channels(m)
        elif isinstance(m, ConvDropoutNormReLU):
            m.input_channels, m.output_channels = m.conv.in_channels, m.conv.out_channels
            if isinstance(getattr(m, "norm", None), _NormBase):
                m.norm.num_features = m.conv.out_channels
        elif isinstance(m, StackedConvBlocks):
            m.output_channels = m.convs[-1].output_channels
        elif isinstance(m, BasicBlockD):
            m.input_channels, m.output_channels = m.conv1.input_channels, m.conv2.output_channels
        elif isinstance(m, BottleneckD):
            m.input_channels, m.output_channels = m.conv1.input_channels, m.conv3.output_channels
            m.bottleneck_channels = m.conv1.output_channels
        elif isinstance(m, StackedResidualBlocks):
            m.output_channels = m.blocks[-1].output_channels
    encoder = getattr(network, "encoder", None)
    if encoder is not None and hasattr(encoder, "stages") and hasattr(encoder, "output_channels"):
        encoder.output_channels = [(s[-1] if isinstance(s, torch.nn.Sequential) else s).output_channels
                                   for s in encoder.stages]


def _proto_slicer(shape: torch.Size, dims: dict[int, torch.Tensor], one_pass: bool):
    if one_pass and len(dims) == 2 and set(dims) == {0, 1} and len(shape) > 2:
        rows = (dims[0][:, None] * shape[1] + dims[1][None, :]).reshape(-1)
        new_shape = (len(dims[0]), len(dims[1]), *shape[2:])
        return lambda t: t.reshape(shape[0] * shape[1], -1).index_select(0, rows).view(new_shape)

    def slicer(t):
        for dim, idx in dims.items():
            t = t.index_select(dim, idx)
        return t
    return slicer


def prototype_prune(graph, removal, optimizer=None, min_width: int = 1, one_pass: bool = True):
    from torch.nn.modules.conv import _ConvTransposeNd

    from nnunet_prune.surgery.prune import NORM_TENSORS, PruneResult, consumer_input_index
    from nnunet_prune.surgery.tensors import set_tensor

    result = PruneResult(widths_before=graph.widths())
    keep, result.removed, result.clipped = _proto_plan_keep(graph, removal, min_width)
    if keep:
        device = next(graph.network.parameters()).device
        specs: dict[tuple, dict[int, torch.Tensor]] = defaultdict(dict)
        for g, k in keep.items():
            k = k.to(device)
            for p in g.producers:
                specs[(p, "weight")][1 if isinstance(p, _ConvTransposeNd) else 0] = k
                if p.bias is not None:
                    specs[(p, "bias")][0] = k
            for n in g.norms:
                for t in NORM_TENSORS:
                    if getattr(n, t, None) is not None:
                        specs[(n, t)][0] = k
        for c in {c for g in keep for c in g.consumers}:
            specs[(c, "weight")][0 if isinstance(c, _ConvTransposeNd) else 1] = \
                consumer_input_index(graph, c, keep).to(device)
        optimizers = [optimizer] if isinstance(optimizer, torch.optim.Optimizer) else list(optimizer or [])
        with torch.no_grad():
            for (module, name), dims in specs.items():
                tensor = getattr(module, name)
                old_shape = tensor.shape
                slicer = _proto_slicer(old_shape, dims, one_pass)
                set_tensor(module, name, slicer(tensor))
                param = module._parameters.get(name)
                for opt in optimizers if param is not None else []:
                    state = opt.state.get(param)
                    for key, value in list(state.items()) if state else []:
                        if torch.is_tensor(value) and value.dim() > 0 and value.shape == old_shape:
                            state[key] = slicer(value)
        _proto_sync_attributes(graph.network)
    result.widths_after = graph.widths()
    return result


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


def compare_prototype(name: str, net, opt, args, gen, device) -> list[list]:
    """Current ``graph.prune`` vs the prototype (with / without the one-pass gather), interleaved, fresh copies."""
    variants = {
        "current graph.prune": lambda g, r, o: g.prune(r, optimizer=o),
        "prototype: Python/index fixes": lambda g, r, o: prototype_prune(g, r, o, one_pass=False),
        "prototype: + one-pass 2-dim gather": lambda g, r, o: prototype_prune(g, r, o, one_pass=True),
    }
    times = {k: [] for k in variants}
    identical = {}
    order = list(variants)
    for run in range(args.warmup + args.repeats):
        removal, results = None, {}
        order = order[1:] + order[:1]  # rotate, so that no variant always runs first
        for k in order:
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
            ref = results["current graph.prune"]
            identical = {k: same_state(ref, v) for k, v in results.items()}
        del results
    base = common.median(times["current graph.prune"])
    rows = []
    for k, v in times.items():
        lo, hi = common.spread(v)
        rows.append([name, k, f"{common.median(v) * 1e3:.1f}", f"{lo * 1e3:.1f}-{hi * 1e3:.1f}",
                     f"{base / common.median(v):.2f}x", "yes" if identical[k] else "NO"])
    return rows


def main(argv=None) -> str:
    p = common.base_parser(__doc__, default_repeats=10)
    p.add_argument("--fraction", type=float, default=0.25, help="fraction of every group's channels to remove")
    p.add_argument("--profile", action="store_true", help="also print a breakdown of the step by phase")
    p.add_argument("--prototype", action="store_true",
                   help="also time the prototype of the proposed prune_channels changes side by side")
    args = p.parse_args(argv)
    device = common.setup(args)
    info = common.machine_info(device)
    names = args.networks or ["2d", "3d_fullres", "3d_resenc"]
    gen = torch.Generator().manual_seed(args.seed)

    headers = ["network", "params (M)", "groups", "tensors sliced", "MB touched", "build graph ms",
               "prune ms (median)", "min-max ms", "GB/s", "copy ms", "prune/copy",
               "page faults", "goal ms", "meets goal"]
    rows, records, profile_rows, proto_rows = [], [], [], []
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
        if args.prototype:
            proto_rows += compare_prototype(name, net, opt, args, gen, device)
            for r in proto_rows[-3:]:
                print(" | ".join(str(c) for c in r), flush=True)
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
    if proto_rows:
        notes += ["", f"Current implementation vs the prototype of the proposed changes (--prototype; interleaved, "
                      f"rotating order, fresh copies, median of {args.repeats}; 'identical' = same tensors, optimizer "
                      f"state and channel attributes as the current implementation):", "",
                  common.markdown_table(["network", "implementation", "ms (median)", "min-max ms", "speed-up",
                                         "identical"], proto_rows)]
    return common.finish("surgery cost: one full pruning step", info, args, headers, rows, "\n".join(notes), records)


if __name__ == "__main__":
    main()
