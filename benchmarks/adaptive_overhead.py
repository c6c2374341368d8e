"""The adaptive network classes must cost nothing: stock vs adaptive U-Net, same widths, same weights.

``AdaptivePlainConvUNet`` / ``AdaptiveResidualEncoderUNet`` only override ``load_state_dict``; this script checks
that training and inference run exactly as fast as with the stock dynamic_network_architectures classes:

* training step: ``train()``, deep supervision on, batch 2, forward + deep-supervised loss + backward + gradient
  clipping (12) + SGD step (nnU-Net's optimizer), ``zero_grad(set_to_none=True)`` -- as ``nnUNetTrainer.train_step``;
* inference: ``eval()``, ``no_grad``, deep supervision off, batch 1 -- as nnU-Net's predictor.

Stock (A) and adaptive (B) are measured interleaved, alternating the order every round (AB, BA, AB, BA; an even
number of rounds) so that drift (thermal, other jobs) affects both alike; the per-round ratio B/A is reported as
median and min-max. "within noise" means the min-max range of the per-round ratios contains 1.0; ``--control``
adds the same measurement for stock vs an identical copy of stock (A/A), which shows how far the ratio strays
from 1 on this machine when nothing differs. The adaptive network receives the
stock network's weights through its own ``load_state_dict`` (with ``--width`` < 1 the stock network is first slimmed
uniformly with the surgery layer, so the adaptive one has to resize itself to load it).

Usage::

    python benchmarks/adaptive_overhead.py --small --repeats 2 --control  # smoke run (2d and 2d_resenc, 256^2)
    python benchmarks/adaptive_overhead.py --device cuda --repeats 20 --out adaptive_overhead.md
    python benchmarks/adaptive_overhead.py --device cuda --bf16 --width 0.5 --networks 3d_fullres 3d_resenc
"""

from __future__ import annotations

import contextlib
import copy

import torch
import torch.nn.functional as F

try:
    from benchmarks import common
except ImportError:  # run as a script: benchmarks/ is on sys.path
    import common

from nnunet_prune.core.stats import count_parameters, inference_outputs
from nnunet_prune.surgery import build_channel_graph


def make_pair(name: str, width: float, seed: int) -> tuple[torch.nn.Module, torch.nn.Module, bool]:
    """(stock, adaptive, whether the adaptive network had to resize) with identical widths and weights."""
    torch.manual_seed(seed)
    stock = common.build_network(name, adaptive=False, deep_supervision=True)
    if width < 1:
        graph = build_channel_graph(stock)
        stock_graph_removal = common.uniform_removal(graph, width, torch.Generator().manual_seed(seed))
        graph.prune(stock_graph_removal)
    adaptive = common.build_network(name, adaptive=True, deep_supervision=True)
    before = {k: v.shape for k, v in adaptive.state_dict().items()}
    adaptive.load_state_dict(stock.state_dict())
    resized = any(v.shape != before[k] for k, v in adaptive.state_dict().items())
    return stock, adaptive, resized


class Trainer:
    """One nnU-Net-like training step of a network (own optimizer, fixed random batch and targets)."""

    def __init__(self, net: torch.nn.Module, x: torch.Tensor, targets: list[torch.Tensor], bf16: bool):
        self.net, self.x, self.targets = net, x, targets
        self.opt = common.nnunet_sgd(net)
        self.weights = [1 / 2 ** i for i in range(len(targets))]  # nnU-Net's deep-supervision weights (unnormed)
        self.autocast = (lambda: torch.autocast(x.device.type, dtype=torch.bfloat16)) if bf16 else \
            contextlib.nullcontext

    def step(self) -> None:
        self.net.train()
        self.opt.zero_grad(set_to_none=True)
        with self.autocast():
            out = self.net(self.x)
            out = out if isinstance(out, (list, tuple)) else [out]
            loss = sum(w * F.cross_entropy(o, t) for w, o, t in zip(self.weights, out, self.targets, strict=False))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), 12)
        self.opt.step()


class Predictor:
    def __init__(self, net: torch.nn.Module, x: torch.Tensor, bf16: bool):
        self.net, self.x = net, x
        self.autocast = (lambda: torch.autocast(x.device.type, dtype=torch.bfloat16)) if bf16 else \
            contextlib.nullcontext

    def __call__(self) -> torch.Tensor:
        self.net.eval()
        with torch.no_grad(), inference_outputs(self.net), self.autocast():
            return self.net(self.x)


def interleaved(fa, fb, repeats: int, warmup: int, device: torch.device) -> tuple[list[float], list[float]]:
    """Times of ``fa`` and ``fb``, alternating AB / BA every round."""
    for _ in range(warmup):
        fa()
        fb()
    ta, tb = [], []
    for r in range(repeats):
        if r % 2 == 0:
            ta.append(common.time_once(fa, device))
            tb.append(common.time_once(fb, device))
        else:
            tb.append(common.time_once(fb, device))
            ta.append(common.time_once(fa, device))
    return ta, tb


def main(argv=None) -> str:
    p = common.base_parser(__doc__, default_repeats=10)
    p.add_argument("--width", type=float, default=1.0,
                   help="slim both networks uniformly to this width first (default: the planned widths)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (as nnU-Net's mixed precision on GPU)")
    p.add_argument("--batch-size", type=int, default=2, help="training batch size (inference always uses 1)")
    p.add_argument("--skip-train", action="store_true", help="inference only (training steps are slow on CPU)")
    p.add_argument("--control", action="store_true",
                   help="also measure stock vs a copy of stock (A/A) the same way: the noise floor of the ratio")
    args = p.parse_args(argv)
    rounds = args.repeats + args.repeats % 2  # even: both orders equally often
    device = common.setup(args)
    info = common.machine_info(device)
    names = args.networks or (["2d", "2d_resenc"] if args.small else ["2d", "3d_fullres", "3d_resenc"])

    headers = ["network", "A vs B", "mode", "params (M)", "A ms", "B ms", "ratio B/A (median)", "ratio min-max",
               "verdict", "max abs output diff"]
    rows, records = [], []
    for name in names:
        spec = common.NETWORKS[name]
        patch = spec.patch_size(args.small)
        stock, adaptive, resized = make_pair(name, args.width, args.seed)
        contenders = [(f"{type(stock).__name__} vs {type(adaptive).__name__}" + (" (resized)" if resized else ""),
                       adaptive)]
        if args.control:
            contenders.append((f"{type(stock).__name__} vs a copy of it (control)", copy.deepcopy(stock)))
        stock = stock.to(device)
        initial = copy.deepcopy(stock.state_dict())  # training steps change the weights; every pass starts here
        g = torch.Generator().manual_seed(args.seed)
        x_infer = torch.randn((1, spec.input_channels, *patch), generator=g).to(device)
        if not args.skip_train:
            x_train = torch.randn((args.batch_size, spec.input_channels, *patch), generator=g).to(device)
            with torch.no_grad():
                shapes = [o.shape for o in stock(x_train)]
            targets = [torch.randint(0, spec.num_classes, (s[0], *s[2:]), generator=g).to(device) for s in shapes]
        for label, other in contenders:
            stock.load_state_dict(initial)
            other = other.to(device)
            pa, pb = Predictor(stock, x_infer, args.bf16), Predictor(other, x_infer, args.bf16)
            # compared before any training step (the two optimizers make the weights drift apart numerically)
            diff = (pa().float() - pb().float()).abs().max().item()
            modes = [("inference (batch 1, DS off)", pa, pb, diff)]
            if not args.skip_train:
                ta, tb = Trainer(stock, x_train, targets, args.bf16), Trainer(other, x_train, targets, args.bf16)
                modes.append((f"train step (batch {args.batch_size}, DS on)", ta.step, tb.step, None))
            for mode, fa, fb, diff in modes:
                a, b = interleaved(fa, fb, rounds, args.warmup, device)
                ratios = [y / x for x, y in zip(a, b, strict=True)]
                lo, hi = common.spread(ratios)
                verdict = "within noise" if lo <= 1.0 <= hi else ("B slower" if lo > 1 else "B faster")
                rec = dict(network=name, pair=label, mode=mode, params=count_parameters(stock), patch=patch,
                           a_ms=common.median(a) * 1e3, b_ms=common.median(b) * 1e3, ratio=common.median(ratios),
                           ratio_min=lo, ratio_max=hi, verdict=verdict, max_abs_output_diff=diff,
                           a_all_ms=[t * 1e3 for t in a], b_all_ms=[t * 1e3 for t in b])
                records.append(rec)
                rows.append([name, label, mode, f"{rec['params'] / 1e6:.1f}", f"{rec['a_ms']:.1f}",
                             f"{rec['b_ms']:.1f}", f"{rec['ratio']:.3f}", f"{lo:.3f}-{hi:.3f}", verdict,
                             "-" if diff is None else f"{diff:.3g}"])
                print(" | ".join(str(c) for c in rows[-1]), flush=True)
            del modes, pa, pb, other
        del stock, contenders

    patches = ", ".join(f"{n} {'x'.join(map(str, common.NETWORKS[n].patch_size(args.small)))}" for n in names)
    rounded = "; --repeats rounded up to even" if rounds != args.repeats else ""
    notes = (f"A = stock class, B = adaptive class (or, with --control, a copy of A). Patches: {patches}; width "
             f"{args.width:.0%} of the planned widths; {'bf16 autocast' if args.bf16 else 'fp32'}. Median of "
             f"{rounds} interleaved rounds (order alternating AB/BA{rounded}) "
             f"after {args.warmup} warm-up round(s); ratio = B / A per round; 'within noise' = the min-max range of "
             f"the per-round ratios contains 1 (with few rounds on a busy machine compare with the --control "
             f"rows: even A/A strays a few % both ways). 'max abs output diff' compares the inference outputs (0 = "
             f"bit-identical; cuDNN autotuning may pick different kernels for the two networks on GPU).")
    return common.finish("adaptive network overhead: stock vs adaptive U-Nets", info, args, headers, rows, notes,
                         records)


if __name__ == "__main__":
    main()
