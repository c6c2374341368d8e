"""Compatibility: plans written before the layered layout name ``nnunet_prune.pspseg_network.PSPSegUNet``."""

from nnunet_prune.networks.pspseg import PSPSegUNet  # noqa: F401
