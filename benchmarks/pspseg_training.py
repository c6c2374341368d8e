"""PSP-Seg against nnU-Net's default U-Net and LUnet: parameters, MACs, training-step time and activation memory,
side by side in one run, at the same batch and patch (the plans' own, from a preprocessed dataset folder).

Rows: every plans file given (``--plans``, default nnUNetPlans, nnUNetLUnetPlans, nnUNetPSPSegPlans_S, those that
exist), and PSP-Seg's network after deleting 1, 2, 3 branches of every module (what progressive pruning leaves;
``--deleted``). A step is nnUNetTrainer.train_step's work (forward with deep supervision, nnU-Net's DC+CE loss,
backward, clipping, SGD); PSP-Seg's steps add its functional-decoupling loss through the method's own code
(TR's extra no-grad encoder pass, RL), as nnUNetTrainerPSPSeg does. Rounds run every row once, interleaved; medians
and ratios to the first row are printed. "saved MiB" = distinct storages autograd keeps from the forward for the
backward (the activation memory that dominates training memory on a GPU; measurable on a CPU). Not a test: no
assertion on timings.

Usage::

    python benchmarks/pspseg_training.py --preprocessed $nnUNet_preprocessed/Dataset117_LiTS117 -c 2d
    python benchmarks/pspseg_training.py --preprocessed ... -c 3d_fullres --repeats 3 --out docs/pspseg_3d.md
"""

from __future__ import annotations

import json
import os
import types

import common
import torch

from nnunet_prune.core.stats import count_macs, count_parameters


def build(plans: dict, configuration: str, dataset_json: dict) -> tuple[torch.nn.Module, dict]:
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    pm = PlansManager(plans)
    cm = pm.get_configuration(configuration)
    n_in = determine_num_input_channels(pm, cm, dataset_json)
    net = get_network_from_plans(cm.network_arch_class_name, cm.network_arch_init_kwargs,
                                 cm.network_arch_init_kwargs_req_import, n_in,
                                 pm.get_label_manager(dataset_json).num_segmentation_heads, deep_supervision=True)
    return net, {"patch": tuple(cm.patch_size), "batch": cm.batch_size, "inputs": n_in}


def delete_branches(net: torch.nn.Module, per_module: int) -> torch.nn.Module:
    """Delete the first ``per_module`` branches of every PRM (structure only: what pruning leaves)."""
    from nnunet_prune.surgery.branches import prm_modules, remove_branches

    paths = [f"{p}.branches.{i}" for p, prm in prm_modules(net).items() for i in list(prm.branches)[:per_module]]
    remove_branches(net, paths)
    return net


class Step:
    """One training step of nnU-Net (plus PSP-Seg's FD loss for its networks)."""

    def __init__(self, net, x, targets, fd: bool):
        from sauron_step import nnunet_loss

        from nnunet_prune.methods.pspseg import PSPSegMethod, PSPSegSettings
        from nnunet_prune.nnunet.trainers.base import LossWithExtraTerm
        from nnunet_prune.surgery import build_channel_graph

        self.net, self.x, self.targets = net, x, targets
        self.optimizer = common.nnunet_sgd(net)
        self.loss = nnunet_loss(len(targets))
        self.method = None
        if fd:
            self.method = PSPSegMethod(PSPSegSettings())
            self.method.bind(build_channel_graph(net))
            self.loss = LossWithExtraTerm(self.loss, types.SimpleNamespace(
                network=net, extra_training_loss=self.method.extra_loss))

    def forward_loss(self):
        if self.method is not None:
            self.method.batch_start(self.x, self.targets)
        try:
            return self.loss(self.net(self.x), self.targets)
        finally:
            if self.method is not None:
                self.method.step_end()

    def __call__(self) -> None:
        self.net.train()
        self.optimizer.zero_grad(set_to_none=True)
        self.forward_loss().backward()
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), 12)
        self.optimizer.step()

    def saved_for_backward(self) -> int:
        storages = {}

        def pack(t):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        self.net.train()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            self.forward_loss()
        return sum(storages.values())


def main(argv=None) -> str:
    p = common.base_parser(__doc__.split("\n\n")[0], default_repeats=5)
    p.add_argument("--preprocessed", required=True, help="the dataset's folder in nnUNet_preprocessed")
    p.add_argument("-c", "--configuration", default="2d")
    p.add_argument("--plans", nargs="+", default=["nnUNetPlans", "nnUNetLUnetPlans", "nnUNetPSPSegPlans_S"])
    p.add_argument("--deleted", nargs="*", type=int, default=[1, 2, 3],
                   help="rows of PSP-Seg networks with this many branches deleted per module")
    p.add_argument("--batch", type=int, default=None, help="batch size (default: the first plans')")
    args = p.parse_args(argv)
    device = common.setup(args)
    with open(os.path.join(args.preprocessed, "dataset.json")) as f:
        dataset_json = json.load(f)
    rows_spec = []
    for name in args.plans:
        path = os.path.join(args.preprocessed, f"{name}.json")
        if not os.path.isfile(path):
            print(f"(skipping {name}: {path} does not exist)")
            continue
        with open(path) as f:
            plans = json.load(f)
        rows_spec.append((name, plans, 0))
        if "PSPSeg" in name:
            rows_spec += [(f"{name}, {k} branch(es) deleted per module", plans, k) for k in args.deleted]
    if not rows_spec:
        raise SystemExit("none of --plans exists in --preprocessed")
    steps, info_rows = {}, {}
    g = torch.Generator().manual_seed(args.seed)
    shape = None
    for label, plans, k in rows_spec:
        torch.manual_seed(args.seed)
        net, cfg = build(plans, args.configuration, dataset_json)
        if k:
            net = delete_branches(net, k)
        net = net.to(device)
        if shape is None:
            batch = args.batch or cfg["batch"]
            patch = cfg["patch"] if not args.small else tuple(max(8, s // 2) for s in cfg["patch"])
            shape = (batch, patch)
            x = torch.randn(batch, cfg["inputs"], *patch, generator=g).to(device)
        batch, patch = shape
        with torch.no_grad():
            net.eval()
            outs = net(x)
        targets = [torch.randint(0, o.shape[1], (batch, 1, *o.shape[2:]), generator=g).float().to(device)
                   for o in outs]
        fd = hasattr(net, "record_features")
        steps[label] = Step(net, x, targets, fd)
        net.decoder.deep_supervision = False
        info_rows[label] = {"parameters": count_parameters(net), "macs": count_macs(net, patch)}
        net.decoder.deep_supervision = True
    for _ in range(args.warmup):
        for s in steps.values():
            s()
    times = {k: [] for k in steps}
    order = list(steps)
    for r in range(args.repeats):
        for k in (order if r % 2 == 0 else order[::-1]):
            times[k].append(common.time_once(steps[k], device))
    saved = {k: s.saved_for_backward() for k, s in steps.items()}
    base = order[0]
    rows, records = [], []
    for k in order:
        i, b = info_rows[k], info_rows[base]
        ms = common.median(times[k]) * 1e3
        ms0 = common.median(times[base]) * 1e3
        rows.append([k, f"{i['parameters'] / 1e6:.2f}", f"{i['parameters'] / b['parameters']:.3f}",
                     f"{i['macs'] / 1e9:.2f}", f"{i['macs'] / b['macs']:.3f}", f"{ms:.0f}", f"{ms / ms0:.2f}",
                     f"{saved[k] / 2 ** 20:.0f}", f"{saved[k] / saved[base]:.2f}"])
        records.append({"row": k, **i, "step_ms": ms, "saved_for_backward_bytes": saved[k]})
    info = common.machine_info(device)
    notes = (f"Batch {batch}, patch {'x'.join(map(str, patch))}, {args.configuration}, {args.repeats} interleaved "
             f"rounds (medians). MACs per patch of the inference path (deep supervision off). PSP-Seg steps include "
             f"the FD loss (TR's no-grad encoder pass on the masked image, RL).")
    return common.finish(f"PSP-Seg training cost vs. nnU-Net ({args.configuration})", info, args,
                         ["network", "params (M)", "ratio", "GMAC/patch", "ratio", "step ms", "ratio",
                          "saved MiB", "ratio"], rows, notes, records)


if __name__ == "__main__":
    main()
