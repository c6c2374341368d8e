"""The benchmark's table of methods, derived from what is registered: one :class:`MethodSpec` per entry of
:data:`nnunet_prune.nnunet.benchmarked.BENCHMARKED` (trainer name -> its rows), in that order, and the distilled
row of each student method (:func:`distilled`: ``<method>_distill``, the same method learning from the benchmark's
dense model as its teacher). Nothing here imports torch or nnU-Net (``nnunet-prune --help`` lists the methods)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from nnunet_prune import NnUNetPruneError
from nnunet_prune.nnunet.benchmarked import BENCHMARKED, Benchmarked
from nnunet_prune.nnunet.names import DISTILL_SUFFIX, distilled_trainer_name

#: the dense reference's name: the first row, the one the methods that start from a dense fold wait for
DENSE = "dense"
#: the variable naming a distilled training's teacher (a model folder: the benchmark's dense model of the seed)
TEACHER_VAR = "NNUNET_PRUNE_TEACHER"
#: the distillation settings' variable: it switches distillation on for every trainer of this package when set, so
#: the benchmark's undistilled rows get it as ``0`` (off) and only the distilled rows the user's value
DISTILL_VAR = "NNUNET_PRUNE_DISTILL"
#: the dense student with distillation on: the distilled counterpart of ``nnUNetTrainerBudget`` (any plans)
#: methods without a distilled row, and why (the message of an explicit ``<method>_distill``)
NOT_DISTILLED = {
    DENSE: "the dense model is the teacher itself",
    "magnitude": "it validates the dense fold at the sweep's tau without training, so a teacher has nothing to teach",
}


@dataclass(frozen=True)
class MethodSpec:
    """One method of the benchmark: trained with ``trainer`` on plans ``plans`` (planned by ``planner``; None: the
    default plans). ``from_dense``: it starts from the benchmark's dense fold (``NNUNET_PRUNE_DENSE_MODEL``);
    ``magnitude``: its tau is the magnitude-pruning sweep's critical point on the dense model. ``export``: it is
    measured after ``nnunet-prune export`` (PSP-Seg: branches still masked at the end are deleted there, outputs
    unchanged). ``claim``: what the method's paper reports, to read the table against. ``env``: (variable, value)
    pairs its trainings get on top of the run's environment (a preset's schedule, e.g. the demo's Sauron).
    ``student_of``: a distilled row's undistilled method (None: not distilled); its trainings learn from the
    benchmark's dense model (:data:`TEACHER_VAR`), so it waits for it like a ``from_dense`` row."""

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
    student_of: str | None = None

    @property
    def distilled(self) -> bool:
        """Whether this row is a distilled one (its trainings get the dense model as their teacher)."""
        return self.student_of is not None

    @property
    def needs_dense(self) -> bool:
        """Whether this row needs the benchmark's dense model trained first: it starts from it (``from_dense``) or
        learns from it (``distilled``)."""
        return self.from_dense or self.distilled

    @classmethod
    def of(cls, trainer: str, entry: Benchmarked) -> MethodSpec:
        """The spec of ``trainer``'s registered row ``entry``."""
        return cls(entry.name, entry.label, trainer, entry.plans, entry.planner, entry.starts_from_dense,
                   entry.tau_from_sweep, entry.export_first, entry.claim)


#: every method, in the order they are trained (the dense model first: others start from it)
METHODS: tuple[MethodSpec, ...] = tuple(MethodSpec.of(trainer, entry) for trainer, entries in BENCHMARKED.items()
                                        for entry in entries)
METHOD_NAMES = tuple(m.name for m in METHODS)


def distilled_trainer(trainer: str) -> str:
    """The distilled counterpart of trainer name ``trainer``: ``nnUNetTrainerBudget`` (the dense student, any plans)
    -> ``nnUNetTrainerDistill``; every other trainer ``T`` of this package -> ``T_distill``."""
    return distilled_trainer_name(trainer)


def distilled_spec(m: MethodSpec) -> MethodSpec:
    """The distilled row of student method ``m``: named ``<name>_distill``, labelled ``<label> + distillation``,
    trained by :func:`distilled_trainer` with the same plans, planner, budget, flags (``from_dense``, ``export``)
    and preset variables; no claim of its own (its student's is in the table once).

    Raises:
        NnUNetPruneError: ``m`` has no distilled row (:data:`NOT_DISTILLED`: dense, magnitude) or is one already."""
    if m.name in NOT_DISTILLED or m.distilled:
        why = NOT_DISTILLED.get(m.name, "it is distilled already")
        raise NnUNetPruneError(f"Benchmark method {m.name!r} has no distilled row: {why}.")
    return replace(m, name=m.name + DISTILL_SUFFIX, label=f"{m.label} + distillation",
                   trainer=distilled_trainer(m.trainer), claim="", student_of=m.name)


#: the distilled row of every student method (every method but :data:`NOT_DISTILLED`), in the table's order
DISTILLED: tuple[MethodSpec, ...] = tuple(distilled_spec(m) for m in METHODS if m.name not in NOT_DISTILLED)
DISTILLED_NAMES = tuple(m.name for m in DISTILLED)


def method_spec(name: str) -> MethodSpec:
    """The :class:`MethodSpec` called ``name`` (a registered method or a distilled row, ``<method>_distill``).

    Raises:
        NnUNetPruneError: no method has that name (the message lists them; for ``dense_distill`` and
            ``magnitude_distill``, why they do not exist)."""
    for m in (*METHODS, *DISTILLED):
        if m.name == name:
            return m
    student = name[:-len(DISTILL_SUFFIX)] if name.endswith(DISTILL_SUFFIX) else None
    if student in NOT_DISTILLED:
        raise NnUNetPruneError(f"Unknown benchmark method {name!r}: {student} has no distilled row "
                               f"({NOT_DISTILLED[student]}).")
    raise NnUNetPruneError(f"Unknown benchmark method {name!r}. Methods: {', '.join(METHOD_NAMES)}; each but "
                           f"{' and '.join(NOT_DISTILLED)} also as <method>{DISTILL_SUFFIX} (distilled).")


def table_order(names: Iterable[str], distill: bool = False) -> list[str]:
    """``names`` (methods, distilled rows among them) in the table's order: the registered order (the dense model
    first), each distilled row right after its student method's place. ``distill``: every student method named
    (all but :data:`NOT_DISTILLED`) gets its distilled row too. Duplicates count once.

    Raises:
        NnUNetPruneError: a name is no method (:func:`method_spec`)."""
    chosen = {method_spec(n).name for n in names}
    if distill:
        chosen |= {m.name + DISTILL_SUFFIX for m in METHODS if m.name in chosen and m.name not in NOT_DISTILLED}
    out = []
    for m in METHODS:
        out += [n for n in (m.name, m.name + DISTILL_SUFFIX) if n in chosen]
    return out
