"""LUnet planners: nnU-Net's plan with every stage as wide as the first (Lean U-Net, arXiv:2512.03834 §II-D).

The plan is nnU-Net's own in every other respect (spacing, patch size, batch size, pooling, kernels, number of
convolutions), so the only difference to the default plan is ``features_per_stage``. Preprocessed data is shared
with the default plans (same data identifier), and ``nnUNetv2_plan_and_preprocess -pl LUnetPlanner`` skips
preprocessing when the default plans already hold identical data (see :mod:`nnunet_prune.nnunet.planners.reuse`).

Width variants are separate classes because nnU-Net passes no extra arguments to planners.
"""

from __future__ import annotations

from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
from nnunetv2.experiment_planning.experiment_planners.residual_unets.residual_encoder_unet_planners import (
    nnUNetPlannerResEncM,
)

from nnunet_prune.nnunet.settings import check_variables


class SharedDataMixin:
    """A planner whose plans change only the network: its 2d / 3d_fullres configurations use the default plans'
    preprocessed data (same data identifier; :mod:`nnunet_prune.nnunet.planners.reuse` skips preprocessing it again),
    and
    it writes ``default_plans_name`` unless ``-overwrite_plans_name`` is given."""

    #: plans identifier of the plans whose preprocessed data is shared for configurations other than 2d/3d_fullres
    shared_data_plans: str = "nnUNetPlans"
    #: plans identifier written unless -overwrite_plans_name is given
    default_plans_name: str = ""

    def __init__(self, dataset_name_or_id: str | int, gpu_memory_target_in_gb: float = 8,
                 preprocessor_name: str = "DefaultPreprocessor", plans_name: str | None = None,
                 overwrite_target_spacing=None, suppress_transpose: bool = False):
        check_variables()  # e.g. a misspelt NNUNET_PRUNE_NO_REUSE would be ignored: refused before planning
        super().__init__(dataset_name_or_id, gpu_memory_target_in_gb, preprocessor_name,
                         plans_name or self.default_plans_name, overwrite_target_spacing, suppress_transpose)

    def generate_data_identifier(self, configuration_name: str) -> str:
        """The default plans' data identifier for 2d / 3d_fullres (the data is shared, not preprocessed again)."""
        if self.overwrite_target_spacing is None and self.preprocessor_name == "DefaultPreprocessor":
            # preprocessing does not depend on the network: share the data of the plans we deviate from
            if configuration_name in ("2d", "3d_fullres"):
                return f"nnUNetPlans_{configuration_name}"
            return f"{self.shared_data_plans}_{configuration_name}"
        return f"{self.plans_identifier}_{configuration_name}"


class _LUnetMixin(SharedDataMixin):
    """Overrides shared by the plain and residual-encoder LUnet planners."""

    #: width of every stage (the default plan's first-stage width is 32)
    lunet_width: int = 32
    default_plans_name: str = "nnUNetLUnetPlans"

    def get_plans_for_configuration(self, spacing, median_shape, data_identifier, approximate_n_voxels_dataset,
                                    _cache) -> dict:
        plan = super().get_plans_for_configuration(spacing, median_shape, data_identifier,
                                                   approximate_n_voxels_dataset, _cache)
        arch = plan["architecture"]["arch_kwargs"]
        arch["features_per_stage"] = [self.lunet_width] * arch["n_stages"]
        return plan

    def plan_experiment(self):
        plans = super().plan_experiment()
        try:
            print(lunet_parameter_summary(plans, self.dataset_json, self.reference_features))
        except Exception as e:  # logging only: never fail planning because of it
            print(f"(could not count LUnet parameters: {type(e).__name__}: {e})")
        return plans

    def reference_features(self, n_stages: int, dim: int) -> list[int]:
        """features_per_stage of the plan this planner deviates from (nnU-Net's doubling rule)."""
        cap = self.UNet_max_features_2d if dim == 2 else self.UNet_max_features_3d
        return [min(self.UNet_base_num_features * 2 ** i, cap) for i in range(n_stages)]


class LUnetPlanner(_LUnetMixin, ExperimentPlanner):
    """Plain-convolution U-Net with constant width 32 (plans ``nnUNetLUnetPlans``)."""

    default_plans_name = "nnUNetLUnetPlans"


class LUnetPlanner_16(LUnetPlanner):
    """LUnet with constant width 16 (plans ``nnUNetLUnetPlans_16``)."""

    lunet_width = 16
    default_plans_name = "nnUNetLUnetPlans_16"


class LUnetPlanner_8(LUnetPlanner):
    """LUnet with constant width 8 (plans ``nnUNetLUnetPlans_8``)."""

    lunet_width = 8
    default_plans_name = "nnUNetLUnetPlans_8"


class LUnetResEncPlanner(_LUnetMixin, nnUNetPlannerResEncM):
    """Residual-encoder U-Net (nnU-Net's ResEnc M preset) with constant width 32 (plans ``nnUNetLUnetResEncPlans``)."""

    shared_data_plans = "nnUNetResEncUNetMPlans"
    default_plans_name = "nnUNetLUnetResEncPlans"


class LUnetResEncPlanner_16(LUnetResEncPlanner):
    """Residual-encoder LUnet with constant width 16 (plans ``nnUNetLUnetResEncPlans_16``)."""

    lunet_width = 16
    default_plans_name = "nnUNetLUnetResEncPlans_16"


def lunet_parameter_summary(plans: dict, dataset_json: dict, reference_features) -> str:
    """A table of parameter counts: each configuration's LUnet network next to the default-width network."""
    import torch
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    from nnunet_prune.core.stats import count_parameters

    n_in = len(dataset_json.get("channel_names", dataset_json.get("modality", {})))
    n_out = len([k for k in dataset_json["labels"] if k != "ignore"])
    rows = []
    for name, cfg in plans["configurations"].items():
        arch = cfg.get("architecture")
        if arch is None:  # e.g. 3d_cascade_fullres inherits
            continue
        kwargs = dict(arch["arch_kwargs"])
        dim = len(cfg["patch_size"])
        counts = []
        for feats in (kwargs["features_per_stage"], reference_features(kwargs["n_stages"], dim)):
            with torch.device("meta"):
                net = get_network_from_plans(arch["network_class_name"], {**kwargs, "features_per_stage": feats},
                                             arch["_kw_requires_import"], n_in, n_out, allow_init=False,
                                             deep_supervision=False)
            counts.append(count_parameters(net))
        rows.append(f"  {name:<12} {kwargs['n_stages']:>6} {counts[0]:>14,} {counts[1]:>16,} "
                    f"{counts[1] / counts[0]:>9.1f}x")
    header = f"  {'config':<12} {'stages':>6} {'LUnet params':>14} {'default params':>16} {'fewer':>10}"
    return "\nLUnet parameter count vs. the default plan's network:\n" + "\n".join([header, *rows]) + "\n"
