"""The benchmark's table of methods is derived from what is registered (nnunet_prune.nnunet.benchmarked, keyed by
trainer name): the 13 rows keep their names, labels and order; every trainer and planner named there exists; a
trainer class that describes itself (a ``benchmark`` class attribute) agrees with the table. Every method but dense
and magnitude has a distilled row (``<method>_distill``), placed right after it."""

from __future__ import annotations

import pytest

from nnunet_prune import NnUNetPruneError
from nnunet_prune.nnunet.benchmarked import BENCHMARKED, Benchmarked, class_entries
from nnunet_prune.tools.benchmark.methods import (
    DISTILLED,
    DISTILLED_NAMES,
    METHOD_NAMES,
    METHODS,
    MethodSpec,
    distilled_spec,
    method_spec,
    table_order,
)

#: the table's rows as they were written by hand before they were derived (name, label, trainer)
ROWS = [
    ("dense", "nnU-Net default", "nnUNetTrainerBudget"),
    ("lunet", "LUnet 32", "nnUNetTrainerBudget"),
    ("lunet16", "LUnet 16", "nnUNetTrainerBudget"),
    ("lunet8", "LUnet 8", "nnUNetTrainerBudget"),
    ("sauron", "Sauron", "nnUNetTrainerSauron"),
    ("stamp", "STAMP", "nnUNetTrainerSTAMP"),
    ("stamp_widestBlock", "STAMP widestBlock", "nnUNetTrainerSTAMP_widestBlock"),
    ("stamp_randomInBlock", "STAMP randomInBlock", "nnUNetTrainerSTAMP_randomInBlock"),
    ("l1", "structured L1 (iterative)", "nnUNetTrainerStructuredL1_iterative"),
    ("l2", "structured L2 (iterative)", "nnUNetTrainerStructuredL2_iterative"),
    ("slimming", "network slimming (iterative)", "nnUNetTrainerStructuredSlimming_iterative"),
    ("pspseg_s", "PSP-Seg-S", "nnUNetTrainerPSPSeg"),
    ("magnitude", "magnitude (critical tau)", "nnUNetTrainerMagnitude"),
]


def test_the_methods_keep_their_names_labels_and_order():
    assert [(m.name, m.label, m.trainer) for m in METHODS] == ROWS
    assert METHOD_NAMES[0] == "dense" and len(set(METHOD_NAMES)) == len(METHOD_NAMES)
    flags = {m.name: (m.from_dense, m.magnitude, m.export) for m in METHODS}
    assert {n for n, f in flags.items() if f[0]} == {"l1", "l2", "slimming", "magnitude"}
    assert {n for n, f in flags.items() if f[1]} == {"magnitude"} and {n for n, f in flags.items() if f[2]} == \
        {"pspseg_s"}


def test_every_trainer_and_planner_of_the_table_is_registered():
    from nnunet_prune.nnunet import trainers
    from nnunet_prune.nnunet.names import PLANNERS, load_planner

    assert set(BENCHMARKED) <= set(trainers.__all__)
    for m in METHODS:
        if m.planner is not None:
            assert m.planner in PLANNERS, m.planner
            assert load_planner(m.planner) is not None


def test_trainer_classes_that_describe_themselves_agree_with_the_table():
    from nnunet_prune.nnunet import trainers

    own = class_entries({n: getattr(trainers, n) for n in trainers.__all__})
    for name, entries in own.items():
        assert BENCHMARKED.get(name) == entries, name


def test_class_entries_reads_only_a_class_s_own_description():
    class Base:
        benchmark = Benchmarked("toy", "a toy method", claim="toys prune")

    class Variant(Base):
        pass

    class Pair(Base):
        benchmark = (Benchmarked("a", "A"), Benchmarked("b", "B", starts_from_dense=True))

    found = class_entries({"Base": Base, "Variant": Variant, "Pair": Pair, "Plain": object})
    assert found == {"Base": (Base.benchmark,), "Pair": Pair.benchmark}
    spec = MethodSpec.of("Pair", Pair.benchmark[1])
    assert (spec.name, spec.trainer, spec.from_dense, spec.plans) == ("b", "Pair", True, "nnUNetPlans")


#: the distilled rows' trainers: nnUNetTrainerDistill for the dense student (nnUNetTrainerBudget), else T_distill
DISTILLED_TRAINERS = {
    "lunet_distill": "nnUNetTrainerDistill",
    "lunet16_distill": "nnUNetTrainerDistill",
    "lunet8_distill": "nnUNetTrainerDistill",
    "sauron_distill": "nnUNetTrainerSauron_distill",
    "stamp_distill": "nnUNetTrainerSTAMP_distill",
    "stamp_widestBlock_distill": "nnUNetTrainerSTAMP_widestBlock_distill",
    "stamp_randomInBlock_distill": "nnUNetTrainerSTAMP_randomInBlock_distill",
    "l1_distill": "nnUNetTrainerStructuredL1_iterative_distill",
    "l2_distill": "nnUNetTrainerStructuredL2_iterative_distill",
    "slimming_distill": "nnUNetTrainerStructuredSlimming_iterative_distill",
    "pspseg_s_distill": "nnUNetTrainerPSPSeg_distill",
}


def test_every_student_method_has_a_distilled_row_with_its_plans_and_flags():
    assert {m.name: m.trainer for m in DISTILLED} == DISTILLED_TRAINERS
    assert DISTILLED_NAMES == tuple(DISTILLED_TRAINERS)  # the table's order
    for d in DISTILLED:
        m = method_spec(d.student_of)
        assert d.name == m.name + "_distill" and d.label == m.label + " + distillation"
        assert (d.plans, d.planner, d.from_dense, d.magnitude, d.export, d.env) == \
            (m.plans, m.planner, m.from_dense, m.magnitude, m.export, m.env)
        assert d.distilled and d.needs_dense and not m.distilled and d.claim == ""
        assert method_spec(d.name) == d
    lunet16 = method_spec("lunet16_distill")
    assert (lunet16.trainer, lunet16.plans, lunet16.planner) == ("nnUNetTrainerDistill", "nnUNetLUnetPlans_16",
                                                                 "LUnetPlanner_16")
    assert method_spec("l2_distill").from_dense and method_spec("pspseg_s_distill").export
    assert not set(DISTILLED_NAMES) & set(METHOD_NAMES)  # --methods' default stays the registered methods


@pytest.mark.parametrize("name, words", [("magnitude_distill", "without training, so a teacher has nothing"),
                                         ("dense_distill", "the teacher itself"),
                                         ("lunet16_distill_distill", "Unknown benchmark method")])
def test_dense_and_magnitude_have_no_distilled_row(name, words):
    with pytest.raises(NnUNetPruneError, match=words):
        method_spec(name)
    student = method_spec(name[:-len("_distill")])
    with pytest.raises(NnUNetPruneError, match="has no distilled row"):
        distilled_spec(student)


def test_distill_adds_a_row_after_each_student_and_never_doubles_dense_or_magnitude():
    every = table_order(METHOD_NAMES, distill=True)
    assert len(every) == len(METHOD_NAMES) + len(DISTILLED_NAMES) and len(set(every)) == len(every)
    assert every[:4] == ["dense", "lunet", "lunet_distill", "lunet16"] and every[-3:] == \
        ["pspseg_s", "pspseg_s_distill", "magnitude"]
    for d in DISTILLED_NAMES:  # right after its student
        assert every[every.index(d) - 1] == method_spec(d).student_of
    assert table_order(["magnitude", "dense", "stamp"], distill=True) == ["dense", "stamp", "stamp_distill",
                                                                           "magnitude"]
    assert table_order(["dense", "magnitude"], distill=True) == ["dense", "magnitude"]
    # explicit distilled names, with or without --distill, their students not required; duplicates count once
    assert table_order(["stamp_distill", "lunet16_distill", "dense"]) == ["dense", "lunet16_distill",
                                                                          "stamp_distill"]
    assert table_order(["lunet16_distill", "lunet16", "dense"], distill=True) == ["dense", "lunet16",
                                                                                 "lunet16_distill"]
    assert table_order(["dense", "dense"]) == ["dense"]
    with pytest.raises(NnUNetPruneError, match="Unknown benchmark method 'nope'"):
        table_order(["dense", "nope"], distill=True)


def test_every_distilled_trainer_is_registered():
    from nnunet_prune.nnunet import trainers

    if "nnUNetTrainerDistill" not in trainers.__all__:
        pytest.skip("the distillation trainers (nnunet/trainers/distill.py) are not there yet")
    assert set(DISTILLED_TRAINERS.values()) <= set(trainers.__all__)
