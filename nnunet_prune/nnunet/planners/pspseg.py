"""PSP-Seg planners: nnU-Net's plan with PSP-Seg's redundant U-Net (PSP-Seg §3.1, §4.1, Appendix A).

Everything nnU-Net decides stays (spacing, patch size, batch size, normalisation, the strides and kernels of the
first stages); the network becomes :class:`~nnunet_prune.networks.pspseg.PSPSegUNet` with the paper's variants:

=========  ======  ========================  ==========  ===========================
planner    stages  features                  branches m  plans
=========  ======  ========================  ==========  ===========================
S          5       16, 32, 64, 128, 256      4           ``nnUNetPSPSegPlans_S``
B          5       16, 32, 64, 128, 256      7           ``nnUNetPSPSegPlans_B``
L          6       16, 32, ..., 256, 320     7           ``nnUNetPSPSegPlans_L`` (k=2)
=========  ======  ========================  ==========  ===========================

(fewer stages where nnU-Net's plan has fewer). Branch kernels: :func:`~nnunet_prune.networks.pspseg.branch_kernel_set`
per stage, with nnU-Net's kernel 1 on an axis (anisotropic stages) kept. The preprocessed data of the default plans
is reused (:class:`~nnunet_prune.nnunet.planners.lunet.SharedDataMixin`). Planning prints each configuration's parameter
count next to the default plan's network.
"""

from __future__ import annotations

from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner

from nnunet_prune.networks.pspseg import branch_kernel_set
from nnunet_prune.nnunet.planners.lunet import SharedDataMixin

NETWORK_CLASS = "nnunet_prune.networks.pspseg.PSPSegUNet"


class PSPSegPlanner_S(SharedDataMixin, ExperimentPlanner):
    """PSP-Seg-S: 5 stages 16..256, 4 branches per PRM (plans ``nnUNetPSPSegPlans_S``)."""

    default_plans_name = "nnUNetPSPSegPlans_S"
    pspseg_stages: int = 5
    pspseg_max_features: int = 256
    pspseg_branches: int = 4
    pspseg_squeeze_ratio: float = 0.5
    #: written to plans['nnunet_prune']['pspseg'] (the method's settings for these plans)
    pspseg_settings: dict = {}

    def get_plans_for_configuration(self, spacing, median_shape, data_identifier, approximate_n_voxels_dataset,
                                    _cache) -> dict:
        """nnU-Net's plan of one configuration with the network replaced by PSP-Seg's (the stock architecture kept
        aside for the parameter summary)."""
        plan = super().get_plans_for_configuration(spacing, median_shape, data_identifier,
                                                   approximate_n_voxels_dataset, _cache)
        stock = plan["architecture"]
        kw = stock["arch_kwargs"]
        n = min(self.pspseg_stages, kw["n_stages"])
        dim = len(plan["patch_size"])
        kernels = [list(k) for k in kw["kernel_sizes"][:n]]
        plan["architecture"] = {
            "network_class_name": NETWORK_CLASS,
            "arch_kwargs": {
                "n_stages": n,
                "features_per_stage": [min(16 * 2 ** i, self.pspseg_max_features) for i in range(n)],
                "conv_op": kw["conv_op"],
                "kernel_sizes": kernels,
                "strides": [list(s) for s in kw["strides"][:n]],
                "branch_kernels": [branch_kernel_set(self.pspseg_branches, dim, k) for k in kernels],
                "squeeze_ratio": self.pspseg_squeeze_ratio,
                "conv_bias": kw.get("conv_bias", True),
                "norm_op": kw["norm_op"],
                "norm_op_kwargs": kw["norm_op_kwargs"],
                "dropout_op": None,
                "dropout_op_kwargs": None,
                "nonlin": kw["nonlin"],
                "nonlin_kwargs": kw["nonlin_kwargs"],
            },
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
        }
        self._stock_architectures = getattr(self, "_stock_architectures", {})
        self._stock_architectures[data_identifier] = stock
        return plan

    def save_plans(self, plans):
        """Write the plans, with the variant's method settings (``plans['nnunet_prune']['pspseg']``) if it has
        any."""
        if self.pspseg_settings:
            plans.setdefault("nnunet_prune", {})["pspseg"] = dict(self.pspseg_settings)
        super().save_plans(plans)

    def plan_experiment(self):
        """nnU-Net's planning, then the parameter counts printed next to the default plan's network."""
        plans = super().plan_experiment()
        try:
            print(self.parameter_summary(plans))
        except Exception as e:  # logging only: never fail planning because of it
            print(f"(could not count PSP-Seg parameters: {type(e).__name__}: {e})")
        return plans

    def parameter_summary(self, plans: dict) -> str:
        """Each configuration's PSP-Seg network next to the default plan's network (parameters)."""
        import torch
        from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

        from nnunet_prune.core.stats import count_parameters

        n_in = len(self.dataset_json.get("channel_names", self.dataset_json.get("modality", {})))
        n_out = len([k for k in self.dataset_json["labels"] if k != "ignore"])
        rows = []
        for name, cfg in plans["configurations"].items():
            arch = cfg.get("architecture")
            stock = getattr(self, "_stock_architectures", {}).get(cfg.get("data_identifier"))
            if arch is None or stock is None:
                continue
            counts = []
            for a in (arch, stock):
                with torch.device("meta"):
                    net = get_network_from_plans(a["network_class_name"], a["arch_kwargs"], a["_kw_requires_import"],
                                                 n_in, n_out, allow_init=False, deep_supervision=False)
                counts.append(count_parameters(net))
            rows.append(f"  {name:<12} {arch['arch_kwargs']['n_stages']:>6} {counts[0]:>14,} {counts[1]:>16,} "
                        f"{1 - counts[0] / counts[1]:>9.0%}")
        header = f"  {'config':<12} {'stages':>6} {'PSP-Seg params':>14} {'default params':>16} {'fewer':>9}"
        return (f"\n{type(self).__name__}: parameters of the unpruned PSP-Seg network vs. the default plan's "
                f"network:\n" + "\n".join([header, *rows]) + "\n")


class PSPSegPlanner_B(PSPSegPlanner_S):
    """PSP-Seg-B: 5 stages 16..256, 7 branches per PRM (plans ``nnUNetPSPSegPlans_B``)."""

    default_plans_name = "nnUNetPSPSegPlans_B"
    pspseg_branches = 7


class PSPSegPlanner_L(PSPSegPlanner_S):
    """PSP-Seg-L: 6 stages 16..320, 7 branches per PRM, pruning step k=2 (plans ``nnUNetPSPSegPlans_L``)."""

    default_plans_name = "nnUNetPSPSegPlans_L"
    pspseg_stages = 6
    pspseg_max_features = 320
    pspseg_branches = 7
    pspseg_settings = {"k": 2}
