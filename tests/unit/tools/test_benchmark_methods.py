"""The benchmark's table of methods is derived from what is registered (nnunet_prune.nnunet.benchmarked, keyed by
trainer name): the 13 rows keep their names, labels and order; every trainer and planner named there exists; a
trainer class that describes itself (a ``benchmark`` class attribute) agrees with the table."""

from __future__ import annotations

from nnunet_prune.nnunet.benchmarked import BENCHMARKED, Benchmarked, class_entries
from nnunet_prune.tools.benchmark.methods import METHOD_NAMES, METHODS, MethodSpec

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
