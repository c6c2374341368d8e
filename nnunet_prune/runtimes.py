"""Compatibility: plans written before the layered layout name ``nnunet_prune.runtimes.RuntimeNetwork``."""

from nnunet_prune.networks.runtime import RuntimeNetwork  # noqa: F401
