"""The benchmark's table of methods, derived from what is registered: one :class:`MethodSpec` per entry of
:data:`nnunet_prune.nnunet.benchmarked.BENCHMARKED` (trainer name -> its rows), in that order. Nothing here imports
torch or nnU-Net (``nnunet-prune --help`` lists the methods)."""

from __future__ import annotations

from dataclasses import dataclass

from nnunet_prune import NnUNetPruneError
from nnunet_prune.nnunet.benchmarked import BENCHMARKED, Benchmarked

#: the dense reference's name: the first row, the one the methods that start from a dense fold wait for
DENSE = "dense"


@dataclass(frozen=True)
class MethodSpec:
    """One method of the benchmark: trained with ``trainer`` on plans ``plans`` (planned by ``planner``; None: the
    default plans). ``from_dense``: it starts from the benchmark's dense fold (``NNUNET_PRUNE_DENSE_MODEL``);
    ``magnitude``: its tau is the magnitude-pruning sweep's critical point on the dense model. ``export``: it is
    measured after ``nnunet-prune export`` (PSP-Seg: branches still masked at the end are deleted there, outputs
    unchanged). ``claim``: what the method's paper reports, to read the table against. ``env``: (variable, value)
    pairs its trainings get on top of the run's environment (a preset's schedule, e.g. the demo's Sauron)."""

    name: str
    label: str
    trainer: str
    plans: str = "nnUNetPlans"
    planner: str | None = None
    from_dense: bool = False
    magnitude: bool = False
    export: bool = False
    claim: str = ""
    env: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, trainer: str, entry: Benchmarked) -> MethodSpec:
        """The spec of ``trainer``'s registered row ``entry``."""
        return cls(entry.name, entry.label, trainer, entry.plans, entry.planner, entry.starts_from_dense,
                   entry.tau_from_sweep, entry.export_first, entry.claim)


#: every method, in the order they are trained (the dense model first: others start from it)
METHODS: tuple[MethodSpec, ...] = tuple(MethodSpec.of(trainer, entry) for trainer, entries in BENCHMARKED.items()
                                        for entry in entries)
METHOD_NAMES = tuple(m.name for m in METHODS)


def method_spec(name: str) -> MethodSpec:
    """The :class:`MethodSpec` called ``name``.

    Raises:
        NnUNetPruneError: no method has that name (the message lists them)."""
    for m in METHODS:
        if m.name == name:
            return m
    raise NnUNetPruneError(f"Unknown benchmark method {name!r}. Methods: {', '.join(METHOD_NAMES)}.")
