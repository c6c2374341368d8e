"""What ``nnunet-prune benchmark`` trains of this package's trainers and planners: one :class:`Benchmarked` entry per
row of its table, keyed by trainer NAME (as :data:`~nnunet_prune.nnunet.names.PLANNERS` keys planners by name).

The benchmark derives its table of methods from :data:`BENCHMARKED` (in this order: the dense reference first,
since others start from it), so a new method is benchmarked by one entry here, next to its trainer's registration,
and never by a row written into the benchmark. The table is static (no torch, no nnU-Net: ``nnunet-prune --help``
lists the methods) like ``PLANNERS``. A trainer class may carry the same description itself, as a class attribute
``benchmark`` (one :class:`Benchmarked` or a tuple of them; absent by default, read by :func:`class_entries`):
``tests/unit/tools/test_benchmark_methods.py`` then checks it against this table.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Benchmarked:
    """One row of the benchmark for a trainer: ``name`` (its key on the command line, e.g. ``lunet16``), ``label``
    (its row's label), the plans it trains on (``plans``, planned by ``planner``; None: nnU-Net's default planner).
    ``starts_from_dense``: it starts from the benchmark's dense fold (``NNUNET_PRUNE_DENSE_MODEL``);
    ``tau_from_sweep``: its tau is the magnitude sweep's critical point on the dense model; ``export_first``: it is
    measured after ``nnunet-prune export`` (masked branches deleted, outputs unchanged). ``claim``: what the
    method's paper reports, to read the table against."""

    name: str
    label: str
    plans: str = "nnUNetPlans"
    planner: str | None = None
    starts_from_dense: bool = False
    tau_from_sweep: bool = False
    export_first: bool = False
    claim: str = ""


#: trainer name -> its rows in the benchmark, in the table's order (the dense reference first)
BENCHMARKED: dict[str, tuple[Benchmarked, ...]] = {
    "nnUNetTrainerBudget": (
        Benchmarked("dense", "nnU-Net default", claim="the reference"),
        Benchmarked("lunet", "LUnet 32", "nnUNetLUnetPlans", "LUnetPlanner",
                    claim="LUnet: constant width 32, Dice on par with far fewer parameters"),
        Benchmarked("lunet16", "LUnet 16", "nnUNetLUnetPlans_16", "LUnetPlanner_16"),
        Benchmarked("lunet8", "LUnet 8", "nnUNetLUnetPlans_8", "LUnetPlanner_8"),
    ),
    "nnUNetTrainerSauron": (Benchmarked("sauron", "Sauron", claim="Sauron: about -90 % MACs at similar Dice"),),
    "nnUNetTrainerSTAMP": (Benchmarked("stamp", "STAMP", claim="STAMP: gradual pruning, Dice kept"),),
    "nnUNetTrainerSTAMP_widestBlock": (
        Benchmarked("stamp_widestBlock", "STAMP widestBlock",
                    claim="Lean U-Net: pruning the widest block is as good as STAMP"),),
    "nnUNetTrainerSTAMP_randomInBlock": (Benchmarked("stamp_randomInBlock", "STAMP randomInBlock"),),
    "nnUNetTrainerStructuredL1_iterative": (
        Benchmarked("l1", "structured L1 (iterative)", starts_from_dense=True),),
    "nnUNetTrainerStructuredL2_iterative": (
        Benchmarked("l2", "structured L2 (iterative)", starts_from_dense=True,
                    claim="structured pruning study: iterative L2 keeps Dice up to 90 % of the filters removed"),),
    "nnUNetTrainerStructuredSlimming_iterative": (
        Benchmarked("slimming", "network slimming (iterative)", starts_from_dense=True),),
    "nnUNetTrainerPSPSeg": (
        Benchmarked("pspseg_s", "PSP-Seg-S", "nnUNetPSPSegPlans_S", "PSPSegPlanner_S", export_first=True,
                    claim="PSP-Seg-S: Dice on par with nnU-Net at 83-87 % fewer parameters"),),
    "nnUNetTrainerMagnitude": (
        Benchmarked("magnitude", "magnitude (critical tau)", starts_from_dense=True, tau_from_sweep=True,
                    claim="magnitude pruning: about 80 % sparsity at the critical tau"),),
}


def class_entries(classes: Mapping[str, type]) -> dict[str, tuple[Benchmarked, ...]]:
    """The entries trainer classes carry themselves (name -> class, e.g. every class of
    :mod:`nnunet_prune.nnunet.trainers`): a class attribute ``benchmark`` (one :class:`Benchmarked` or a tuple),
    absent by default, so classes without it give nothing. Only a class's own attribute counts: a variant that
    inherits it without setting it is no row of its own."""
    out = {}
    for name, cls in classes.items():
        own = vars(cls).get("benchmark")
        if own is None:
            continue
        out[name] = own if isinstance(own, tuple) else (own,)
    return out
