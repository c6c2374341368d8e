"""Experiment planners of this package, for ``nnUNetv2_plan_and_preprocess -pl <name>``."""

from nnunet_prune.nnunet.planners.lunet import (
    LUnetPlanner,
    LUnetPlanner_8,
    LUnetPlanner_16,
    LUnetResEncPlanner,
    LUnetResEncPlanner_16,
)
from nnunet_prune.nnunet.planners.pspseg import PSPSegPlanner_B, PSPSegPlanner_L, PSPSegPlanner_S

__all__ = ["LUnetPlanner", "LUnetPlanner_16", "LUnetPlanner_8", "LUnetResEncPlanner", "LUnetResEncPlanner_16",
           "PSPSegPlanner_S", "PSPSegPlanner_B", "PSPSegPlanner_L"]
