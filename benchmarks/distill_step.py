"""What distillation costs per training step: a student's nnU-Net training step without a teacher, and with a
teacher of 1 and of 5 folds (their logits averaged), timed side by side.

The student is a LUnet (nnU-Net's default topology for the patch at a constant width, ``--width``, default 16); the
teacher folds are nnU-Net's default PlainConvUNet for the same patch (features 32 doubling up to 512 / 320), each
with its own random weights. The step is ``nnUNetTrainer.train_step`` (DC+CE with deep supervision, backward,
clipping, SGD) plus, with a teacher, the package's own code: :class:`nnunet_prune.nnunet.teacher.Teacher`'s forward
(no gradient, eval mode; fp16 autocast on CUDA) and :func:`nnunet_prune.criteria.distillation.distillation_kl`
(weight 0.3, T = 3) on the full-resolution output. Interleaved rounds (order alternating); per round the ratio to the
step without teacher; medians and min-max.

Usage::

    python benchmarks/distill_step.py                          # 2D 128x128 (LiTS-117's 2d patch), batch 12
    python benchmarks/distill_step.py --dim 3 --batch 2        # 3D 64^3 on the CPU
    python benchmarks/distill_step.py --device cuda --dim 3 --patch 128 128 128 --batch 2 --repeats 20
"""

from __future__ import annotations

import contextlib
import copy

import torch
from torch import nn

try:
    from benchmarks import common
    from benchmarks.sauron_step import nnunet_loss, plan_network, timed
except ImportError:  # run as a script: benchmarks/ is on sys.path
    import common
    from sauron_step import nnunet_loss, plan_network, timed

from nnunet_prune.core.stats import count_macs, count_parameters
from nnunet_prune.criteria.distillation import distillation_kl

WEIGHT, TEMPERATURE = 0.3, 3.0


def constant_width(net: nn.Module, width: int, patch: tuple[int, ...]) -> nn.Module:
    """A LUnet: the same topology as ``net`` (nnU-Net's default for ``patch``) with ``width`` features per stage."""
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    enc = net.encoder
    n = len(enc.stages)
    dim = len(patch)
    conv, norm = (nn.Conv2d, nn.InstanceNorm2d) if dim == 2 else (nn.Conv3d, nn.InstanceNorm3d)
    student = PlainConvUNet(1, n, [width] * n, conv, enc.kernel_sizes, enc.strides, [2] * n, 3, [2] * (n - 1),
                            conv_bias=True, norm_op=norm, norm_op_kwargs={"eps": 1e-5, "affine": True},
                            dropout_op=None, dropout_op_kwargs=None, nonlin=nn.LeakyReLU,
                            nonlin_kwargs={"inplace": True}, deep_supervision=True)
    student.apply(student.initialize)
    return student


class DistilledStep:
    """One training step of its own copy of the student, with ``teachers`` (0, 1 or 5 networks) in front."""

    def __init__(self, student: nn.Module, teachers: list[nn.Module], x, targets, device: torch.device):
        self.net = copy.deepcopy(student).to(device)
        self.teachers = teachers
        self.x, self.targets, self.device = x, targets, device
        self.optimizer = common.nnunet_sgd(self.net)
        self.loss = nnunet_loss(len(targets))
        self.scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" else None

    def teacher_logits(self) -> torch.Tensor:
        cast = torch.autocast("cuda", dtype=torch.float16) if self.device.type == "cuda" else contextlib.nullcontext()
        with torch.no_grad(), cast:
            return sum(t(self.x)[0].float() for t in self.teachers) / len(self.teachers)

    def __call__(self) -> None:
        teacher = self.teacher_logits() if self.teachers else None
        self.optimizer.zero_grad(set_to_none=True)
        cast = torch.autocast("cuda", enabled=True) if self.device.type == "cuda" else contextlib.nullcontext()
        with cast:
            out = self.net(self.x)
            loss = self.loss(out, self.targets)
            if teacher is not None:
                loss = loss + WEIGHT * distillation_kl(out[0], teacher, TEMPERATURE)
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


def make_steps(args, device):
    patch = tuple(args.patch)
    dense = plan_network(patch)
    student = constant_width(dense, args.width, patch)
    teachers = [plan_network(patch).to(device).eval().requires_grad_(False) for _ in range(5)]
    g = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.batch, 1, *patch, generator=g).to(device)
    shapes = [o.shape for o in student(x[:1].cpu())]
    targets = [torch.randint(0, 3, (args.batch, 1, *s[2:]), generator=g).float().to(device) for s in shapes]
    steps = {"no teacher": DistilledStep(student, [], x, targets, device),
             "teacher, 1 fold": DistilledStep(student, teachers[:1], x, targets, device),
             "teacher, 5 folds": DistilledStep(student, teachers, x, targets, device)}
    sizes = {"student": (count_parameters(student), count_macs(student, patch)),
             "teacher fold": (count_parameters(dense), count_macs(dense, patch))}
    return steps, sizes


def main(argv=None) -> str:
    p = common.base_parser(__doc__, default_repeats=6)
    p.add_argument("--dim", type=int, choices=(2, 3), default=2)
    p.add_argument("--patch", type=int, nargs="+", default=None, help="default 128 128 (2D), 64 64 64 (3D)")
    p.add_argument("--batch", type=int, default=None, help="default 12 (2D), 2 (3D)")
    p.add_argument("--width", type=int, default=16, help="the LUnet student's constant width")
    args = p.parse_args(argv)
    args.patch = args.patch or ([128, 128] if args.dim == 2 else [64] * 3)
    args.batch = args.batch or (12 if args.dim == 2 else 2)
    device = common.setup(args)
    info = common.machine_info(device)
    steps, sizes = make_steps(args, device)
    names = list(steps)
    for _ in range(args.warmup):
        for name in names:
            steps[name]()
    wall: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            wall[name].append(timed(steps[name], device)[0])
        print(f"round {r + 1}/{args.repeats}: " + ", ".join(f"{n} {wall[n][-1] * 1e3:.0f} ms" for n in names),
              flush=True)
    rows, records = [], []
    for name in names:
        ratios = [b / a for a, b in zip(wall["no teacher"], wall[name], strict=True)]
        lo, hi = common.spread(wall[name])
        rlo, rhi = common.spread(ratios)
        rec = dict(variant=name, ms=common.median(wall[name]) * 1e3, ratio=common.median(ratios),
                   ratio_min=rlo, ratio_max=rhi)
        records.append(rec)
        rows.append([name, f"{rec['ms']:.0f}", f"{lo * 1e3:.0f}-{hi * 1e3:.0f}", f"{rec['ratio']:.2f}x",
                     f"{rlo:.2f}-{rhi:.2f}"])
    (sp, sm), (tp, tm) = sizes["student"], sizes["teacher fold"]
    notes = (f"Student: LUnet width {args.width} ({sp / 1e6:.3f} M parameters, {sm / 1e9:.3f} GMAC per patch); "
             f"teacher fold: nnU-Net's default PlainConvUNet ({tp / 1e6:.1f} M, {tm / 1e9:.3f} GMAC per patch). "
             f"Patch {'x'.join(map(str, args.patch))}, batch {args.batch}, "
             f"{'AMP' if device.type == 'cuda' else 'fp32'}, {torch.get_num_threads()} threads. Median of "
             f"{args.repeats} interleaved rounds after {args.warmup} warm-up round(s); ratio = per-round ratio to "
             f"the step without teacher.")
    return common.finish("Distillation's cost per training step", info, args,
                         ["variant", "ms per step (median)", "ms min-max", "ratio to no teacher", "ratio min-max"],
                         rows, notes, records)


if __name__ == "__main__":
    main()
