"""`nnunet-prune pseudo-label` on the tiny 2D dataset 601 and its two trained folds (stock nnUNetv2_predict per fold,
CPU): the new dataset's files and records, the source left unchanged, refusals that change nothing, and stock
nnUNetv2_plan_and_preprocess accepting the new dataset."""

from __future__ import annotations

import csv
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import DATASET_2D, read_json

pytestmark = pytest.mark.slow

NEW = 611
MARK = "nnunet_prune_pseudo_labels"


def pseudo_label(nnunet, *args, check=True):
    return nnunet.run(sys.executable, "-m", "nnunet_prune.cli.main", "pseudo-label", *args, check=check)


def files(folder: Path) -> dict:
    """Every file under ``folder`` with its size and modification time."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_pseudo_label_writes_a_new_dataset_that_stock_nnunet_plans(nnunet, dataset2d, dense_model, tmp_path):
    unlabelled = tmp_path / "unlabelled"
    shutil.copytree(dataset2d / "imagesTs", unlabelled)
    source_before = files(dataset2d)
    model = ["-d", DATASET_2D, "-c", "2d", "-tr", "nnUNetTrainerBudget", "-i", unlabelled, "-device", "cpu"]
    run = pseudo_label(nnunet, *model, "-o", NEW)
    print(run.stdout)  # (the worked example of docs/pseudolabels.md)
    new = nnunet.raw / f"Dataset{NEW}_Synthetic2DPseudo"
    labelled = [f"phantom_{i:03d}" for i in range(10)]
    pseudo = [f"phantom_{i:03d}" for i in range(10, 13)]
    assert sorted(p.name for p in (new / "imagesTr").iterdir()) == [f"{c}_0000.nii.gz" for c in labelled + pseudo]
    assert sorted(p.name for p in (new / "labelsTr").iterdir()) == [f"{c}.nii.gz" for c in labelled + pseudo]
    assert not (new / "imagesTs").exists() and not (new / ".pseudo_work").exists()
    assert (new / "labelsTr" / "phantom_000.nii.gz").read_bytes() == \
        (dataset2d / "labelsTr" / "phantom_000.nii.gz").read_bytes()
    assert (new / "imagesTr" / "phantom_010_0000.nii.gz").read_bytes() == \
        (unlabelled / "phantom_010_0000.nii.gz").read_bytes()

    # the pseudo-labels: label maps of the images' geometry, read back with the dataset's reader
    from nnunetv2.imageio.nibabel_reader_writer import NibabelIO

    label_values = set(read_json(dataset2d / "dataset.json")["labels"].values())
    for case in pseudo:
        seg, seg_props = NibabelIO().read_seg(str(new / "labelsTr" / f"{case}.nii.gz"))
        image, image_props = NibabelIO().read_images([str(unlabelled / f"{case}_0000.nii.gz")])
        assert seg.shape == image.shape and set(np.unique(seg).tolist()) <= label_values
        assert np.allclose(seg_props["spacing"], image_props["spacing"])

    meta, source_meta = read_json(new / "dataset.json"), read_json(dataset2d / "dataset.json")
    mark = meta.pop(MARK)
    assert meta == {**source_meta, "numTraining": 13}
    assert mark["source_dataset"] == dataset2d.name and mark["trainer"] == "nnUNetTrainerBudget"
    assert mark["plans"] == "nnUNetPlans" and mark["configuration"] == "2d" and mark["folds"] == [0, 1]
    assert mark["checkpoint"] == "checkpoint_final.pth" and mark["min_agreement"] == 0
    assert mark["model_folder"] == str(dense_model)
    assert mark["labelled"] == labelled and mark["pseudo_labelled"] == pseudo and mark["left_out"] == {}
    assert sorted(mark["agreement"]) == pseudo and all(0 <= a <= 1 for a in mark["agreement"].values())
    rows = list(csv.DictReader((new / "pseudo_labels.csv").open()))
    assert [r["case"] for r in rows] == labelled + pseudo and all(r["kept"] == "yes" for r in rows)
    assert [r["source"] for r in rows] == ["labelled"] * 10 + ["pseudo"] * 3
    assert [float(r["agreement"]) for r in rows[10:]] == pytest.approx([mark["agreement"][c] for c in pseudo],
                                                                       abs=1e-6)
    assert "labelled cases (copied from Dataset601_Synthetic2D): 10" in run.stdout
    assert "pseudo-labelled cases (nnUNetTrainerBudget__nnUNetPlans__2d, folds 0, 1): 3" in run.stdout
    assert f"nnUNetv2_plan_and_preprocess -d {NEW}" in run.stdout and f"nnUNetv2_train {NEW} 2d 0" in run.stdout
    assert files(dataset2d) == source_before  # the source dataset is unchanged

    # refusals change nothing: the same new ID again, --min-agreement outside [0, 1]
    new_before = files(new)
    again = pseudo_label(nnunet, *model, "-o", NEW, check=False)
    assert again.returncode == 2 and f"dataset ID {NEW} is already used by" in again.stderr
    assert "Traceback" not in again.stderr and files(new) == new_before
    bad = pseudo_label(nnunet, *model, "-o", NEW + 1, "--min-agreement", "1.01", check=False)
    assert bad.returncode == 2 and "--min-agreement must lie in [0, 1]" in bad.stderr
    assert not list(nnunet.raw.glob(f"Dataset{NEW + 1}_*"))

    # confidence filtering: --min-agreement 1 keeps only the cases every fold segments identically
    strict = pseudo_label(nnunet, *model, "-o", NEW + 2, "--name", "Strict", "--min-agreement", "1")
    print(strict.stdout)
    kept = read_json(nnunet.raw / f"Dataset{NEW + 2}_Strict" / "dataset.json")[MARK]
    assert kept["left_out"] == {c: a for c, a in kept["agreement"].items() if a < 1}
    assert kept["pseudo_labelled"] == [c for c in pseudo if kept["agreement"][c] >= 1]
    assert f"left out (agreement < 1): {len(kept['left_out'])}" in strict.stdout

    # stock planning accepts the new dataset (its integrity check included)
    plan = nnunet.run("nnUNetv2_plan_and_preprocess", "-d", NEW, "-c", "2d", "-np", 2, "-npfp", 2,
                      "--verify_dataset_integrity")
    assert "verify_dataset_integrity Done" in plan.stdout
    assert (nnunet.preprocessed_dataset(NEW) / "nnUNetPlans.json").is_file()
    assert files(dataset2d) == source_before
