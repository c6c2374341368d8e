"""`nnunet-prune pseudo-label` without nnU-Net training: the agreement (labels and regions), the ensemble of saved
probabilities, dataset.json and the CSV, every refusal of bad input (in a fake nnU-Net folder tree, leaving it
unchanged), and a whole run with the per-fold predictions replaced by written probability files (a real, untrained
model folder: tests/unit/tools/test_report.py)."""

from __future__ import annotations

import csv
import io
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from nnunetv2.utilities.label_handling.label_handling import LabelManager

from nnunet_prune import NnUNetPruneError
from nnunet_prune.cli.main import main
from nnunet_prune.core.outputs import MANIFEST, foreign_entries
from nnunet_prune.tools import pseudolabel as pl
from nnunet_prune.tools.pseudolabel import (
    MARK,
    TABLE,
    PseudoLabelRequest,
    check_request,
    ensemble_agreement,
    ensemble_case,
    fold_segmentation,
    new_dataset_json,
    pseudo_label,
    table_text,
)
from nnunet_prune.tools.runner import StepFailed

pytestmark = pytest.mark.usefixtures("single_thread")

SOURCE = "Dataset501_Fake"
MODEL = "nnUNetTrainer__nnUNetPlans__2d"


# ---------------------------------------------------------------------------------------------------- agreement
def test_agreement_of_label_maps():
    a = np.array([[0, 1, 1, 2], [0, 0, 2, 2]])
    assert ensemble_agreement([a, a.copy()]) == 1.0
    assert ensemble_agreement([a]) == 1.0  # one fold: nothing to compare
    b = np.array([[0, 1, 2, 2], [1, 0, 2, 0]])  # foreground somewhere: 6 voxels; same foreground label: 3
    assert ensemble_agreement([a, b]) == pytest.approx(3 / 6)
    assert ensemble_agreement([a, b, a]) == pytest.approx(3 / 6)
    assert ensemble_agreement([np.zeros((3, 3), int)] * 3) == 1.0  # no fold predicts foreground
    assert ensemble_agreement([a, np.zeros_like(a)]) == 0.0
    assert ensemble_agreement([np.ones((2, 2), np.uint8), np.full((2, 2), 2, np.uint8)]) == 0.0  # other labels
    with pytest.raises(NnUNetPruneError, match="differ in shape"):
        ensemble_agreement([a, a[:1]])
    with pytest.raises(NnUNetPruneError, match="at least one"):
        ensemble_agreement([])


def test_fold_segmentation_labels_and_regions():
    labels = LabelManager({"background": 0, "liver": 1, "tumour": 2}, None)
    probs = np.zeros((3, 1, 2, 2), np.float32)
    probs[0, 0, 0, 0] = probs[1, 0, 0, 1] = probs[2, 0, 1, :] = 1
    seg = fold_segmentation(probs, labels)
    assert seg.dtype == np.uint8 and seg.shape == (1, 2, 2)
    assert seg[0].tolist() == [[0, 1], [2, 2]]
    regions = LabelManager({"background": 0, "whole": [1, 2], "core": [2]}, [1, 2])
    r = np.zeros((2, 1, 2, 2), np.float32)
    r[0, 0] = [[0.9, 0.9], [0.2, 0.8]]  # whole tumour
    r[1, 0] = [[0.1, 0.7], [0.0, 0.3]]  # core
    seg = fold_segmentation(r, regions)
    assert seg[0].tolist() == [[1, 2], [0, 1]]
    r2 = r.copy()
    r2[1, 0, 0, 1] = 0.2  # the second fold sees no core there: whole instead
    assert ensemble_agreement([seg, fold_segmentation(r2, regions)]) == pytest.approx(2 / 3)


def write_fold(folder: Path, case: str, probabilities: np.ndarray, properties: dict | None = None) -> Path:
    """What nnUNetv2_predict --save_probabilities writes for one case: <case>.npz and <case>.pkl."""
    folder.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(folder / f"{case}.npz", probabilities=probabilities)
    with open(folder / f"{case}.pkl", "wb") as f:
        pickle.dump(properties or {"spacing": (999, 1, 1)}, f)
    return folder / f"{case}.npz"


def test_ensemble_averages_the_folds_probabilities(tmp_path):
    labels = LabelManager({"background": 0, "a": 1}, None)
    p0 = np.array([[[[0.4, 0.9]]], [[[0.6, 0.1]]]], np.float32)  # fold 0: voxel 0 is "a"
    p1 = np.array([[[[0.8, 0.9]]], [[[0.2, 0.1]]]], np.float32)  # fold 1: background everywhere
    files = [write_fold(tmp_path / "f0", "c", p0, {"x": 1}), write_fold(tmp_path / "f1", "c", p1)]
    seg, agreement, properties = ensemble_case(files, labels)
    assert seg.tolist() == [[[0, 0]]]  # mean 0.6 / 0.4: background
    assert agreement == 0.0 and properties == {"x": 1}
    bad = write_fold(tmp_path / "f2", "c", np.zeros((2, 1, 1, 3), np.float32))
    with pytest.raises(NnUNetPruneError, match="shape"):
        ensemble_case([files[0], bad], labels)


# ---------------------------------------------------------------------------------------------------- records
def fake_record(min_agreement: float = 0.5) -> dict:
    return {"source_dataset": SOURCE, "model_folder": "/r/" + MODEL, "trainer": "nnUNetTrainer",
            "plans": "nnUNetPlans", "configuration": "2d", "folds": [0, 1], "checkpoint": "checkpoint_final.pth",
            "min_agreement": min_agreement, "labelled": ["a", "b"], "pseudo_labelled": ["u1"],
            "left_out": {"u2": 0.25}, "agreement": {"u1": 0.75, "u2": 0.25}}


def test_dataset_json_and_table():
    source = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "x": 1}, "numTraining": 2,
              "file_ending": ".png", "name": "Fake"}
    out = new_dataset_json(source, fake_record())
    assert out["numTraining"] == 3 and out[MARK]["left_out"] == {"u2": 0.25}
    assert {k: v for k, v in out.items() if k not in ("numTraining", MARK)} == \
        {k: v for k, v in source.items() if k != "numTraining"}
    assert source["numTraining"] == 2 and MARK not in source  # the source's dict is not changed
    rows = list(csv.DictReader(io.StringIO(table_text(fake_record()))))
    assert [(r["case"], r["source"], r["agreement"], r["kept"]) for r in rows] == [
        ("a", "labelled", "", "yes"), ("b", "labelled", "", "yes"), ("u1", "pseudo", "0.750000", "yes"),
        ("u2", "pseudo", "0.250000", "no")]


# ---------------------------------------------------------------------------------------------------- refusals
def fake_tree(tmp_path: Path, channels: int = 1, model: bool = False) -> dict:
    """nnU-Net's three folders with a raw dataset (2 labelled cases, ``channels`` channels, .png), a folder of 3
    unlabelled cases, and (``model``) a real untrained model folder with folds 0 and 1."""
    raw, pre, res = tmp_path / "raw", tmp_path / "preprocessed", tmp_path / "results"
    src = raw / SOURCE
    for d in (src / "imagesTr", src / "labelsTr", src / "imagesTs", pre, res, tmp_path / "unlabelled"):
        d.mkdir(parents=True)
    meta = {"channel_names": {str(c): f"ch{c}" for c in range(channels)},
            "labels": {"background": 0, "liver": 1, "tumour": 2}, "numTraining": 2, "file_ending": ".png",
            "name": "Fake"}
    (src / "dataset.json").write_text(json.dumps(meta))
    for case in ("a", "b"):
        for c in range(channels):
            (src / "imagesTr" / f"{case}_{c:04d}.png").write_bytes(b"image " + case.encode())
        (src / "labelsTr" / f"{case}.png").write_bytes(b"label " + case.encode())
    (src / "imagesTs" / "t_0000.png").write_bytes(b"test")
    for case in ("u1", "u2", "u3"):
        for c in range(channels):
            (tmp_path / "unlabelled" / f"{case}_{c:04d}.png").write_bytes(b"unlabelled " + case.encode())
    if model:
        from tests.unit.tools.test_report import make_model_folder

        make_model_folder(res / SOURCE, MODEL, folds=(0, 1))
    return {"nnUNet_raw": str(raw), "nnUNet_preprocessed": str(pre), "nnUNet_results": str(res)}


def snapshot(root: Path) -> dict:
    """Every entry under ``root``: files with size and modification time, folders by name."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else "folder"
            for p in sorted(root.rglob("*"))}


def request(tmp_path: Path, **kw) -> PseudoLabelRequest:
    args = dict(dataset=501, configuration="2d", trainer="nnUNetTrainer", images=tmp_path / "unlabelled",
                new_id=502, device="cpu")
    return PseudoLabelRequest(**{**args, **kw})


def refused(tmp_path: Path, folders: dict, match: str, **kw) -> None:
    before = snapshot(tmp_path)
    with pytest.raises(NnUNetPruneError, match=match):
        pseudo_label(request(tmp_path, **kw), echo=None, folders=folders)
    assert snapshot(tmp_path) == before  # nothing written, nothing removed


def test_every_bad_input_is_refused_before_anything_is_written(tmp_path):
    folders = fake_tree(tmp_path)
    unlabelled = tmp_path / "unlabelled"
    refused(tmp_path, {**folders, "nnUNet_raw": None}, "nnUNet_raw not set")
    refused(tmp_path, {**folders, "nnUNet_results": ""}, "nnUNet_results not set")
    refused(tmp_path, folders, r"-d 503: no such dataset in nnUNet_raw .*Dataset501_Fake", dataset=503)
    refused(tmp_path, folders, "-d Dataset501_Other: no such dataset", dataset="Dataset501_Other")
    for value in (-0.1, 1.01, float("nan")):
        refused(tmp_path, folders, r"--min-agreement must lie in \[0, 1\]", min_agreement=value)
    for value in ("abc", 0, 1000, "5.5"):
        refused(tmp_path, folders, "integer from 1 to 999", new_id=value)
    refused(tmp_path, folders, "--name", name="a/b")
    refused(tmp_path, folders, "-i .*: no such folder", images=tmp_path / "nowhere")
    refused(tmp_path, folders, "no such model folder|No model folder " + r".*nnUNetTrainer__nnUNetPlans__2d")
    # the model folder exists, the requested fold does not (the file system tells, before torch is used)
    model = tmp_path / "results" / SOURCE / MODEL
    (model / "fold_0").mkdir(parents=True)
    (model / "plans.json").write_text("{}")
    (model / "dataset.json").write_text("{}")
    (model / "fold_0" / "checkpoint_final.pth").write_bytes(b"x")
    refused(tmp_path, folders, r"fold\(s\) 1 have no checkpoint_final.pth \(available: 0\)", folds=["1"])
    refused(tmp_path, folders, r"fold_\*/checkpoint_best.pth missing", folds=["0"],
            checkpoint="checkpoint_best.pth")
    # new dataset IDs in use, in any of nnU-Net's folders
    refused(tmp_path, folders, rf"dataset ID 501 is already used by .*{SOURCE} \(nnUNet_raw\)", new_id=501)
    (tmp_path / "preprocessed" / "Dataset502_Old").mkdir()
    refused(tmp_path, folders, r"ID 502 is already used by .*Dataset502_Old \(nnUNet_preprocessed\)")
    (tmp_path / "results" / "Dataset503_Old").mkdir()
    refused(tmp_path, folders, r"ID 503 is already used by .*Dataset503_Old \(nnUNet_results\)", new_id=503)
    # unlabelled images: wrong file ending, a case of the training set, an empty folder
    (unlabelled / "u4_0000.nii.gz").write_bytes(b"x")
    refused(tmp_path, folders, r"u4_0000.nii.gz not named <case>_0000.png", new_id=504)
    (unlabelled / "u4_0000.nii.gz").unlink()
    (unlabelled / "b_0000.png").write_bytes(b"x")
    refused(tmp_path, folders, "case\\(s\\) b are also training cases of Dataset501_Fake", new_id=504)
    (unlabelled / "b_0000.png").unlink()
    (unlabelled / "u1_0001.png").write_bytes(b"x")
    refused(tmp_path, folders, r"u1_0001.png is channel 1, but the dataset has 1 channel", new_id=504)
    for p in list(unlabelled.iterdir()):
        p.unlink()
    (unlabelled / ".DS_Store").write_bytes(b"x")  # hidden files are ignored: the folder counts as empty
    refused(tmp_path, folders, "-i .*: no image in it", new_id=504)


def test_a_missing_channel_file_is_named(tmp_path):
    folders = fake_tree(tmp_path, channels=2)
    (tmp_path / "unlabelled" / "u2_0001.png").unlink()
    refused(tmp_path, folders, r"case u2 lacks u2_0001.png \(the dataset has 2 channel\(s\)")
    (tmp_path / "raw" / SOURCE / "labelsTr" / "a.png").unlink()
    refused(tmp_path, folders, r"labelsTr lacks a.png")


def test_unset_folders_are_read_as_nnunet_reads_them(tmp_path, monkeypatch, capsys):
    """The command line: nnU-Net's folders from nnunetv2.paths, one ERROR line, exit code 2, nothing written."""
    import nnunetv2.paths as paths

    folders = fake_tree(tmp_path)
    monkeypatch.setattr(paths, "nnUNet_raw", None)
    monkeypatch.setattr(paths, "nnUNet_results", folders["nnUNet_results"])
    before = snapshot(tmp_path)
    argv = ["pseudo-label", "-d", "501", "-c", "2d", "-tr", "nnUNetTrainer", "-i", str(tmp_path / "unlabelled"),
            "-o", "502", "-device", "cpu"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("ERROR: nnUNet_raw not set") and len(err.strip().splitlines()) == 1
    monkeypatch.setattr(paths, "nnUNet_raw", folders["nnUNet_raw"])
    assert main([*argv[:-4], "-o", "12345", "-device", "cpu"]) == 2
    assert "integer from 1 to 999" in capsys.readouterr().err
    assert main([*argv, "--min-agreement", "1.01"]) == 2
    assert "--min-agreement must lie in [0, 1]" in capsys.readouterr().err
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------------------------------------------- a whole run
def probabilities(case: str, fold: int) -> np.ndarray:
    """(3, 1, 4, 4) probabilities of an untrained fold, made up: u1 the folds agree on, u2 half, u3 all background."""
    p = np.zeros((3, 1, 4, 4), np.float32)
    p[0] = 1
    if case == "u1" or (case == "u2" and fold == 0):
        p[:, 0, :2, :2] = [[[0]], [[1]], [[0]]]
    if case == "u2":
        p[:, 0, 2:, 2:] = [[[0]], [[0]], [[1]]]
    return p


def fake_predict(plan, work, echo=None):
    out = {}
    for fold in plan.model.folds:
        out[fold] = work / f"fold_{fold}"
        for case in plan.unlabelled:
            write_fold(out[fold], case, probabilities(case, fold))
    return out


def test_whole_run_with_written_probabilities(tmp_path, monkeypatch):
    folders = fake_tree(tmp_path, model=True)
    monkeypatch.setattr(pl, "predict_folds", fake_predict)
    source = tmp_path / "raw" / SOURCE
    before = snapshot(source)
    result = pseudo_label(request(tmp_path, min_agreement=0.6), echo=None, folders=folders)
    new = tmp_path / "raw" / "Dataset502_FakePseudo"
    assert result.folder == new and snapshot(source) == before
    assert sorted(p.name for p in (new / "imagesTr").iterdir()) == ["a_0000.png", "b_0000.png", "u1_0000.png",
                                                                     "u3_0000.png"]
    assert sorted(p.name for p in (new / "labelsTr").iterdir()) == ["a.png", "b.png", "u1.png", "u3.png"]
    assert not (new / "imagesTs").exists() and not (new / pl.WORK).exists()
    assert (new / "labelsTr" / "a.png").read_bytes() == b"label a"
    assert (new / "imagesTr" / "u1_0000.png").read_bytes() == b"unlabelled u1"
    from skimage import io as skio

    u1 = skio.imread(new / "labelsTr" / "u1.png")
    assert u1.tolist() == [[1, 1, 0, 0]] * 2 + [[0, 0, 0, 0]] * 2
    assert skio.imread(new / "labelsTr" / "u3.png").max() == 0
    meta = json.loads((new / "dataset.json").read_text())
    mark = meta[MARK]
    assert meta["numTraining"] == 4 and meta["labels"] == {"background": 0, "liver": 1, "tumour": 2}
    assert mark["labelled"] == ["a", "b"] and mark["pseudo_labelled"] == ["u1", "u3"]
    assert mark["left_out"] == {"u2": 0.5} and mark["folds"] == [0, 1]
    assert mark["agreement"] == {"u1": 1.0, "u2": 0.5, "u3": 1.0} and mark["min_agreement"] == 0.6
    assert mark["source_dataset"] == SOURCE and mark["model_folder"].endswith(MODEL)
    rows = list(csv.DictReader((new / TABLE).open()))
    assert [(r["case"], r["source"], r["kept"]) for r in rows] == [
        ("a", "labelled", "yes"), ("b", "labelled", "yes"), ("u1", "pseudo", "yes"), ("u2", "pseudo", "no"),
        ("u3", "pseudo", "yes")]
    assert foreign_entries(new, pl.TOOL) == [] and (new / MANIFEST).is_file()  # every file recorded as ours
    summary = result.summary()
    assert "labelled cases (copied from Dataset501_Fake): 2" in summary and "pseudo-labelled cases" in summary
    assert "left out (agreement < 0.6): 1 (u2)" in summary
    assert "nnUNetv2_plan_and_preprocess -d 502" in summary and "nnUNetv2_train 502 2d 0" in summary
    with pytest.raises(NnUNetPruneError, match="already used by .*Dataset502_FakePseudo"):  # never overwritten
        pseudo_label(request(tmp_path), echo=None, folders=folders)
    one = pseudo_label(request(tmp_path, new_id=503, folds=["1"], name="One"), echo=None, folders=folders)
    assert "agreement: needs >= 2 folds" in one.summary() and one.record["agreement"]["u2"] == 1.0


def test_a_failed_prediction_removes_what_it_wrote(tmp_path, monkeypatch):
    folders = fake_tree(tmp_path, model=True)
    before = snapshot(tmp_path)

    def failing(plan, work, echo=None):
        fake_predict(plan, work)
        (plan.target / "imagesTr").mkdir()
        raise StepFailed("`nnUNetv2_predict ...` failed (exit code 1)")

    monkeypatch.setattr(pl, "predict_folds", failing)
    with pytest.raises(StepFailed):
        pseudo_label(request(tmp_path), echo=None, folders=folders)
    assert snapshot(tmp_path) == before

    def interrupted(plan, pred, echo=None):  # Ctrl-C while the pseudo-labels are written
        pl.copy_labelled(plan)
        raise KeyboardInterrupt

    monkeypatch.setattr(pl, "predict_folds", fake_predict)
    monkeypatch.setattr(pl, "write_pseudo_labels", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pseudo_label(request(tmp_path), echo=None, folders=folders)
    assert snapshot(tmp_path) == before


def test_a_user_file_in_the_new_folder_is_kept(tmp_path, monkeypatch):
    folders = fake_tree(tmp_path, model=True)
    notes = []

    def failing(plan, work, echo=None):
        (plan.target / "notes.txt").write_text("mine")  # e.g. a user's file appearing during the run
        raise StepFailed("failed")

    monkeypatch.setattr(pl, "predict_folds", failing)
    with pytest.raises(StepFailed):
        pseudo_label(request(tmp_path), echo=notes.append, folders=folders)
    new = tmp_path / "raw" / "Dataset502_FakePseudo"
    assert (new / "notes.txt").read_text() == "mine" and not (new / pl.WORK).exists()
    assert any("notes.txt" in n for n in notes)


def test_check_request_resolves_the_plan(tmp_path):
    folders = fake_tree(tmp_path, model=True)
    plan = check_request(request(tmp_path, dataset=SOURCE, name="Mine"), folders)
    assert plan.target == tmp_path / "raw" / "Dataset502_Mine" and not plan.target.exists()
    assert list(plan.unlabelled) == ["u1", "u2", "u3"] and plan.model.folds == [0, 1]
    assert plan.env["nnUNet_raw"] == folders["nnUNet_raw"]
