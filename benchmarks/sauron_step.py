"""Sauron's training-step overhead: one nnU-Net training step with and without Sauron, at equal (full) width.

Three variants of the same network (same initial weights, same batch), timed interleaved:

* ``nnU-Net``          stock training step, as ``nnUNetTrainer.train_step``: ``zero_grad(set_to_none=True)``,
  forward with deep supervision, DC+CE loss (``DC_and_CE_loss`` + ``DeepSupervisionWrapper``, nnU-Net's weights),
  backward, gradient clipping (12), SGD (lr 1e-2, momentum 0.99, Nesterov, weight decay 3e-5); autocast (fp16)
  and a GradScaler on CUDA, as nnU-Net;
* ``Sauron``           the same plus Sauron's forward hooks on every coupling-group output point (average pooling,
  omega = 2) and ``lambda * delta_opt`` added to the loss through ``LossWithExtraTerm`` -- the trainer's own code
  (:class:`nnunet_prune.methods.sauron.SauronObserver`, :mod:`nnunet_prune.criteria.sauron`), not a copy;
* ``Sauron collecting`` a step of the last ``stat_batches`` iterations of an epoch: also the prune distances
  (eq. 3) of every output point to a random reference channel.

The network is nnU-Net's default PlainConvUNet as the default planner makes it for the patch (stages from
``get_pool_and_conv_props`` with isotropic spacing and minimal edge 4, features 32 doubling up to 512 (2D) / 320
(3D), two convs per stage, InstanceNorm, LeakyReLU, deep supervision). Each round runs every variant once; the
order alternates (A B C, C B A, ...); per round the ratio to nnU-Net's step is taken; medians and min-max are
reported, for wall-clock time and for the CPU time of the process, with the activation memory autograd keeps for
the backward. ``--profile`` adds a torch.profiler breakdown of one step of each variant: self time of the ops
Sauron's step calls more often than nnU-Net's (its own work).

Usage::

    python benchmarks/sauron_step.py                                   # 2D, 224x192, batch 5 (a few minutes)
    python benchmarks/sauron_step.py --profile --repeats 2
    python benchmarks/sauron_step.py --dim 3                            # 3D, 64^3 on CPU (128^3 on CUDA), batch 2
    python benchmarks/sauron_step.py --device cuda --repeats 30         # nnU-Net's AMP on the GPU
    python benchmarks/sauron_step.py --device cuda --repeats 30 --compile   # ... and its default torch.compile
    python benchmarks/sauron_step.py --device cuda --dim 3 --patch 128 128 128 --batch 2 --repeats 30
"""

from __future__ import annotations

import contextlib
import copy
import random
import time
import types

import numpy as np
import torch
from torch import nn

try:
    from benchmarks import common
except ImportError:  # run as a script: benchmarks/ is on sys.path
    import common

from nnunet_prune.core.stats import count_parameters
from nnunet_prune.methods.sauron import SauronObserver
from nnunet_prune.nnunet.trainers.base import LossWithExtraTerm
from nnunet_prune.surgery import build_channel_graph

VARIANTS = ("nnU-Net", "Sauron", "Sauron collecting")


def plan_network(patch: tuple[int, ...], input_channels: int = 1, num_classes: int = 3) -> nn.Module:
    """nnU-Net's default PlainConvUNet for ``patch`` (as ExperimentPlanner + get_network_from_plans)."""
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props

    dim = len(patch)
    _, strides, kernels, planned, _ = get_pool_and_conv_props([1.0] * dim, list(patch), 4, 999999)
    if tuple(int(s) for s in planned) != tuple(patch):
        raise SystemExit(f"nnU-Net would plan patch {tuple(int(s) for s in planned)} instead of {tuple(patch)}: "
                         f"use a patch divisible by 2 ** (number of poolings)")
    n = len(strides)
    features = [min(32 * 2 ** i, 512 if dim == 2 else 320) for i in range(n)]
    conv, norm = (nn.Conv2d, nn.InstanceNorm2d) if dim == 2 else (nn.Conv3d, nn.InstanceNorm3d)
    net = PlainConvUNet(input_channels, n, features, conv, kernels, strides, [2] * n, num_classes, [2] * (n - 1),
                        conv_bias=True, norm_op=norm, norm_op_kwargs={"eps": 1e-5, "affine": True},
                        dropout_op=None, dropout_op_kwargs=None, nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True},
                        deep_supervision=True)
    net.apply(net.initialize)
    return net


def nnunet_loss(num_outputs: int, batch_dice: bool = True, compile_dice: bool = False) -> nn.Module:
    """nnUNetTrainer._build_loss for a label (not region) dataset without ignore label, not DDP."""
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    loss = DC_and_CE_loss({"batch_dice": batch_dice, "smooth": 1e-5, "do_bg": False, "ddp": False}, {},
                          weight_ce=1, weight_dice=1, ignore_label=None, dice_class=MemoryEfficientSoftDiceLoss)
    if compile_dice:
        loss.dc = torch.compile(loss.dc)
    weights = np.array([1 / (2 ** i) for i in range(num_outputs)])
    weights[-1] = 0
    return DeepSupervisionWrapper(loss, weights / weights.sum())


class Step:
    """One nnUNetTrainer.train_step of its own copy of the network; ``observer`` adds Sauron's hooks and term."""

    def __init__(self, net: nn.Module, x: torch.Tensor, targets: list[torch.Tensor], num_outputs: int,
                 observer: SauronObserver | None = None, collecting: bool = False, compile_: bool = False):
        self.x, self.targets, self.observer, self.collecting = x, targets, observer, collecting
        self.optimizer = common.nnunet_sgd(net)
        self.loss = nnunet_loss(num_outputs, compile_dice=compile_)
        if observer is not None:
            observer.attach(build_channel_graph(net))  # hooks on submodules: torch.compile traces them too
            # the trainer's wrapper: reads network.training and calls extra_training_loss()
            self.loss = LossWithExtraTerm(self.loss, types.SimpleNamespace(
                network=net, extra_training_loss=observer.extra_loss))
        self.net = torch.compile(net) if compile_ else net  # as nnUNetTrainer on a GPU (nnUNet_compile)
        cuda = x.device.type == "cuda"
        self.autocast = (lambda: torch.autocast("cuda", enabled=True)) if cuda else contextlib.nullcontext
        self.scaler = torch.amp.GradScaler("cuda") if cuda else None
        self.losses: list[float] = []

    def __call__(self) -> None:
        self.net.train()
        if self.observer is not None:
            self.observer.collecting = self.collecting  # nnUNetTrainerSauron.train_step
        try:
            self.optimizer.zero_grad(set_to_none=True)
            with self.autocast():
                out = self.net(self.x)
                loss = self.loss(out, self.targets)
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.net.parameters(), 12)
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.net.parameters(), 12)
                self.optimizer.step()
            self.losses.append(float(loss.detach().cpu().numpy()))
        finally:
            if self.observer is not None:
                self.observer.end_step()

    def saved_for_backward(self) -> int:
        """Bytes of the distinct storages autograd keeps for the backward of one step (forward + loss)."""
        storages = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        self.net.train()
        if self.observer is not None:
            self.observer.collecting = self.collecting
        try:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), self.autocast():
                self.loss(self.net(self.x), self.targets)
        finally:
            if self.observer is not None:
                self.observer.end_step()
        return sum(storages.values())


def make_steps(args, device: torch.device) -> tuple[dict[str, Step], nn.Module]:
    torch.manual_seed(args.seed)
    net = plan_network(tuple(args.patch)).to(device)
    g = torch.Generator().manual_seed(args.seed)
    x = torch.randn((args.batch, 1, *args.patch), generator=g).to(device)
    with torch.no_grad():
        shapes = [o.shape[2:] for o in net(x)]
    seg = torch.randint(0, 3, (args.batch, 1, *args.patch), generator=g).float()
    # nnU-Net's DS targets: the segmentation downsampled (nearest) to every output's resolution
    targets = [seg[(slice(None), slice(None), *[slice(None, None, p // s) for p, s in zip(args.patch, shape)])]
               .to(device) for shape in shapes]
    initial = copy.deepcopy(net.state_dict())
    steps = {}
    for name in VARIANTS:
        copy_ = plan_network(tuple(args.patch)).to(device)
        copy_.load_state_dict(initial)
        observer = None
        if name != "nnU-Net":
            observer = SauronObserver(args.omega, args.lambda_)
            graph = build_channel_graph(copy_)
            rng = random.Random(args.seed)
            observer.reset_epoch({gr.name: rng.randrange(gr.size) for gr in graph if gr.size > 1})
        steps[name] = Step(copy_, x, targets, len(shapes), observer, collecting=name == "Sauron collecting",
                           compile_=args.compile)
    return steps, net


def timed(fn, device: torch.device) -> tuple[float, float]:
    """(wall-clock seconds, CPU seconds of this process, all threads) of one call (synchronized on CUDA)."""
    common.synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    common.synchronize(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def profile(steps: dict[str, Step], device: torch.device, top: int) -> str:
    """Where Sauron's extra time goes: op self times of one profiled step of each variant, for the ops that Sauron's
    step calls more often than nnU-Net's (its own work: pooling, delta_opt, distances, gradient accumulation;
    forward and backward). Ops both steps call equally often (convolutions, ...) differ only by noise and are
    left out of the table (their net difference is in the heading)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    per_variant = {}
    for name, step in steps.items():
        step()
        common.synchronize(device)
        with torch_profile(activities=activities) as prof:
            step()
            common.synchronize(device)
        per_variant[name] = {e.key: (getattr(e, key), e.count) for e in prof.key_averages()}
    base = per_variant["nnU-Net"]
    lines = []
    for name in VARIANTS[1:]:
        ops = per_variant[name]
        extra = [(ops[k][0] - base.get(k, (0, 0))[0], k, ops[k][1] - base.get(k, (0, 0))[1]) for k in ops]
        own = sorted((e for e in extra if e[2] > 0), reverse=True)
        own_total = sum(e[0] for e in own)
        rest = sum(e[0] for e in extra if e[2] <= 0) - sum(v[0] for k, v in base.items() if k not in ops)
        rows = [[k, f"{d / 1e3:.1f}", f"{d / own_total:.0%}" if own_total > 0 else "-", n] for d, k, n in own[:top]]
        lines.append(f"### {name}: {own_total / 1e3:.1f} ms of op self time ({key}) in ops it calls more often "
                     f"than nnU-Net's step (other ops: {rest / 1e3:+.1f} ms, noise)\n\n"
                     + common.markdown_table(["op", "extra ms", "share", "extra calls"], rows))
    return "\n\n".join(lines)


def main(argv=None) -> str:
    p = common.base_parser(__doc__, default_repeats=6)
    p.add_argument("--dim", type=int, choices=(2, 3), default=2)
    p.add_argument("--patch", type=int, nargs="+", default=None,
                   help="patch size (default 224 192 in 2D; 3D: 64^3 on CPU, 128^3 on CUDA)")
    p.add_argument("--batch", type=int, default=None, help="batch size (default 5 in 2D, 2 in 3D)")
    p.add_argument("--omega", type=int, default=2)
    p.add_argument("--lambda", dest="lambda_", type=float, default=0.5)
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the networks and the Dice loss, as nnU-Net does on a GPU by default")
    p.add_argument("--profile", action="store_true", help="torch.profiler breakdown of one step per variant")
    p.add_argument("--top", type=int, default=15, help="rows of the profile tables")
    args = p.parse_args(argv)
    if args.patch is None:
        args.patch = [224, 192] if args.dim == 2 else [128 if args.device == "cuda" else 64] * 3
    if len(args.patch) != args.dim:
        raise SystemExit(f"--patch needs {args.dim} sizes for --dim {args.dim}")
    args.batch = args.batch or (5 if args.dim == 2 else 2)
    device = common.setup(args)
    info = common.machine_info(device)
    steps, net = make_steps(args, device)
    n_stages = len(net.encoder.stages)
    print(f"PlainConvUNet {args.dim}D, {n_stages} stages, {count_parameters(net) / 1e6:.1f} M parameters, patch "
          f"{'x'.join(map(str, args.patch))}, batch {args.batch}, {torch.get_num_threads()} threads", flush=True)
    del net

    names = list(VARIANTS)
    # (not with --compile: the compiled graph's own saved activations are invisible to saved_tensors_hooks)
    saved = {name: None if args.compile else steps[name].saved_for_backward() for name in names}
    for _ in range(args.warmup):
        for name in names:
            steps[name]()
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            w, c = timed(steps[name], device)
            wall[name].append(w)
            cpu[name].append(c)
        print(f"round {r + 1}/{args.repeats}: " + ", ".join(f"{n} {wall[n][-1] * 1e3:.0f} ms" for n in names),
              flush=True)

    rows, records = [], []
    for name in names:
        t = wall[name]
        ratios = [b / a for a, b in zip(wall["nnU-Net"], t, strict=True)]
        cpu_ratios = [b / a for a, b in zip(cpu["nnU-Net"], cpu[name], strict=True)]
        lo, hi = common.spread(t)
        rlo, rhi = common.spread(ratios)
        rec = dict(variant=name, ms=common.median(t) * 1e3, ms_min=lo * 1e3, ms_max=hi * 1e3,
                   ratio=common.median(ratios), ratio_min=rlo, ratio_max=rhi, cpu_ms=common.median(cpu[name]) * 1e3,
                   cpu_ratio=common.median(cpu_ratios), all_ms=[x * 1e3 for x in t],
                   all_cpu_ms=[x * 1e3 for x in cpu[name]],
                   saved_for_backward_mib=None if saved[name] is None else saved[name] / 2 ** 20,
                   last_loss=steps[name].losses[-1] if steps[name].losses else None)
        records.append(rec)
        rows.append([name, f"{rec['ms']:.0f}", f"{lo * 1e3:.0f}-{hi * 1e3:.0f}", f"{rec['ratio']:.3f}",
                     f"{rlo:.3f}-{rhi:.3f}", f"{(rec['ratio'] - 1) * 100:+.1f} %", f"{rec['cpu_ms']:.0f}",
                     f"{rec['cpu_ratio']:.3f}", "-" if saved[name] is None else f"{saved[name] / 2 ** 20:.0f}"])
    notes = (f"PlainConvUNet {args.dim}D ({n_stages} stages), patch {'x'.join(map(str, args.patch))}, batch "
             f"{args.batch}, {'AMP (fp16 autocast + GradScaler)' if device.type == 'cuda' else 'fp32'}"
             f"{', torch.compile' if args.compile else ', eager'}; Sauron: "
             f"omega {args.omega}, lambda {args.lambda_}. Median of {args.repeats} interleaved rounds (order "
             f"alternating) after {args.warmup} warm-up round(s); ratio = variant / nnU-Net per round (wall clock); "
             f"CPU ms = CPU time of this process (all threads) per step, CPU ratio its median per-round ratio; "
             f"saved for backward = distinct storages autograd keeps from forward to backward (activation memory).")
    if args.profile:
        notes += "\n\n" + profile(steps, device, args.top)
    return common.finish("Sauron's training-step overhead", info, args,
                         ["variant", "ms per step (median)", "ms min-max", "ratio to nnU-Net", "ratio min-max",
                          "overhead", "CPU ms", "CPU ratio", "saved for backward (MiB)"], rows, notes, records)


if __name__ == "__main__":
    main()
