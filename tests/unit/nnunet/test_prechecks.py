"""Failing fast is fast (issue 23, item 11) and a wrong dataset names the datasets that exist (item 13d): every
command checks what the user gives it before importing torch, nnU-Net or a runtime."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nnunet_prune import NnUNetPruneError
from nnunet_prune.nnunet.prechecks import dataset_listing, existing_datasets, model_folder_folds, resolve_dataset

HEAVY = ("torch", "nnunetv2", "onnxruntime", "openvino")


@pytest.fixture
def folders(tmp_path) -> dict[str, str]:
    """nnU-Net's three folders with two datasets: 501 in raw and results, 502 only preprocessed; a fake trained model
    folder of 501 (the checks before the imports look at file names only)."""
    env = {v: str(tmp_path / v) for v in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    (tmp_path / "nnUNet_raw" / "Dataset501_Liver").mkdir(parents=True)
    (tmp_path / "nnUNet_preprocessed" / "Dataset502_Brain").mkdir(parents=True)
    model = tmp_path / "nnUNet_results" / "Dataset501_Liver" / "nnUNetTrainer__nnUNetPlans__2d"
    (model / "fold_0").mkdir(parents=True)
    for name in ("plans.json", "dataset.json"):
        (model / name).write_text("{}")
    (model / "fold_0" / "checkpoint_final.pth").write_bytes(b"")
    (tmp_path / "images").mkdir()
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "mine.txt").write_text("keep")
    return env


LISTING = "Datasets that exist: Dataset501_Liver (nnUNet_raw, nnUNet_results), Dataset502_Brain (nnUNet_preprocessed)."


# ---------------------------------------------------------------------------------------------- dataset IDs
def test_existing_datasets_and_listing(folders):
    assert existing_datasets(folders) == {"Dataset501_Liver": ["nnUNet_raw", "nnUNet_results"],
                                          "Dataset502_Brain": ["nnUNet_preprocessed"]}
    assert dataset_listing(folders) == LISTING
    assert dataset_listing({}) == ("No dataset exists in nnU-Net's folders (nnUNet_raw=(not set), "
                                   "nnUNet_preprocessed=(not set), nnUNet_results=(not set)); create one first (e.g. "
                                   "nnunet-prune dataset).")


def test_resolve_dataset_by_id_and_name(folders):
    assert resolve_dataset(501, folders) == resolve_dataset("501", folders) == "Dataset501_Liver"
    assert resolve_dataset("Dataset502_Brain", folders) == "Dataset502_Brain"
    assert resolve_dataset(" 0502", folders) == "Dataset502_Brain"


@pytest.mark.parametrize("given, words", [
    ("999", "-d 999: no dataset with ID 999 in nnU-Net's folders. "),
    ("Dataset999_Foo", "-d Dataset999_Foo: no such dataset in nnU-Net's folders. "),
    ("liver", "-d liver: give a dataset ID (e.g. 117) or a name (e.g. Dataset117_LiTS117). "),
])
def test_an_unknown_dataset_names_those_that_exist(folders, given, words):
    with pytest.raises(NnUNetPruneError) as e:
        resolve_dataset(given, folders)
    assert str(e.value) == words + LISTING


def test_two_datasets_with_one_id_are_named(folders, tmp_path):
    (tmp_path / "nnUNet_raw" / "Dataset501_Other").mkdir()
    with pytest.raises(NnUNetPruneError, match="several datasets have ID 501 \\(Dataset501_Liver, Dataset501_Other\\)"):
        resolve_dataset(501, folders)


def test_stock_training_of_an_unknown_dataset_names_those_that_exist(folders, monkeypatch):
    """The patch of nnUNetv2_train's trainer lookup resolves the dataset the same way (one line, no traceback)."""
    from nnunet_prune.nnunet.integration.patches import check_plans

    for var, value in folders.items():
        monkeypatch.setenv(var, value)
    with pytest.raises(NnUNetPruneError) as e:
        check_plans("999", "nnUNetPlans", "2d")
    assert str(e.value).endswith(LISTING)


# ---------------------------------------------------------------------------------------------- model folders
def test_model_folder_checks_on_the_file_system(folders, tmp_path):
    model = tmp_path / "nnUNet_results" / "Dataset501_Liver" / "nnUNetTrainer__nnUNetPlans__2d"
    assert model_folder_folds(model) == (model, [0])
    with pytest.raises(NnUNetPruneError, match="is a fold folder: give the model folder above it .* -f 0"):
        model_folder_folds(model / "fold_0")
    with pytest.raises(NnUNetPruneError, match=r"fold\(s\) 1 have no checkpoint_final.pth \(available: 0\)"):
        model_folder_folds(model, ["1"])
    with pytest.raises(NnUNetPruneError, match="fold_\\*/checkpoint_best.pth missing"):
        model_folder_folds(model, None, "checkpoint_best.pth")


# ------------------------------------------------------------------------ every command, before the imports
def cases(tmp: Path) -> list[tuple[list[str], str]]:
    """(argv, start of the one-line error) of a mistake per command and kind."""
    model = tmp / "nnUNet_results" / "Dataset501_Liver" / "nnUNetTrainer__nnUNetPlans__2d"
    fold, images, out = model / "fold_0", tmp / "images", tmp / "out"
    return [
        (["sweep", "-d", "999", "-c", "2d", "-i", str(images)], f"-d 999: no dataset with ID 999 in nnU-Net's folders. "
                                                                f"{LISTING}"),
        (["sweep", "-d", "501", "-c", "3d_fullres", "-i", str(images)],
         "nnUNetTrainer__nnUNetPlans__3d_fullres does not exist in"),
        (["sweep", str(fold), "-i", str(images)], f"{fold} is a fold folder"),
        (["sweep", str(model), "-f", "3", "-i", str(images)], f"{model}: fold(s) 3 have no checkpoint_final.pth"),
        (["sweep", str(model), "-i", str(tmp / "nope")], f"-i {tmp / 'nope'}: no such folder."),
        (["sweep", str(model), "-i", str(images), "--labels", str(tmp / "nope")], "--labels"),
        (["benchmark", "-d", "999", "-c", "2d", "-o", str(out)], f"-d 999: no dataset with ID 999 in nnU-Net's "
                                                                 f"folders. {LISTING}"),
        (["benchmark", "-d", "502", "-c", "2d", "-o", str(out), "--device", "cpu"], "Dataset502_Brain"),
        (["export", str(fold), "-o", str(out)], f"{fold} is a fold folder"),
        (["export", str(model), "-o", str(out), "-f", "2"], f"{model}: fold(s) 2 have no checkpoint_final.pth"),
        (["export", str(model), "-o", str(tmp / "export")], f"{tmp / 'export'} exists and is not empty"),
        (["export", str(model), "-o", str(model / "sub")], "The output"),
        (["export", str(model), "-o", str(out), "--threads", "2"], "Runtime options need a --runtime"),
        (["export", str(model), "-o", str(out), "--runtime", "openvino", "--threads", "-1"],
         "openvino option threads must be an integer >= 0"),
        (["export", str(model), "-o", str(out), "--magnitude-tau", "-1"], "--magnitude-tau must be a finite number"),
        (["report", str(fold)], f"{fold} is a fold folder"),
        (["report", str(model), "--runtimes", "tensorrt"], "--runtimes tensorrt: unknown"),
        (["report", str(model), "--repeats", "0"], "--repeats must be at least 1"),
        (["report", str(model), "--predict", str(tmp / "nope")], f"--predict {tmp / 'nope'}: no such folder."),
        (["plans-from-model", str(fold), "-f", "0", "--plans-name", "P"], f"{fold} is a fold folder"),
        (["plans-from-model", str(model), "-f", "0", "--plans-name", "P.json"], "--plans-name 'P.json'"),
        (["dataset", "lits117", "-d", "501"], "Dataset ID 501 is already used by Dataset501_Liver"),
    ]


def test_every_command_fails_fast_without_importing_torch_nnunet_or_a_runtime(folders, tmp_path):
    """Each mistake in a fresh interpreter, as a user runs it: exit code 2, the one-line message, none of torch,
    nnU-Net, ONNX Runtime or OpenVINO imported, in well under a second each (torch alone takes seconds)."""
    calls = cases(tmp_path)
    script = (
        "import json, sys, time\nfrom nnunet_prune.cli.main import main\nresults = []\n"
        "for argv in json.loads(sys.argv[1]):\n"
        "    start = time.perf_counter()\n"
        "    rc = main(argv)\n"
        f"    heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "    results.append([rc, heavy, time.perf_counter() - start])\n"
        "print('RESULTS' + json.dumps(results))\n")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("nnUNet_", "NNUNET_PRUNE_"))}, **folders}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", script, json.dumps([argv for argv, _ in calls])], env=env,
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    wall = time.perf_counter() - start
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULTS")), None)
    assert line is not None, proc.stdout + proc.stderr
    results = json.loads(line[len("RESULTS"):])
    errors = [x for x in proc.stderr.splitlines() if x.startswith("ERROR: ")]
    assert len(errors) == len(calls), proc.stderr
    for (argv, words), (rc, heavy, _), error in zip(calls, results, errors, strict=True):
        assert rc == 2, argv
        assert heavy == [], (argv, heavy)
        assert words in error, (argv, error)
    assert not (tmp_path / "out").exists() and [p.name for p in (tmp_path / "export").iterdir()] == ["mine.txt"]
    assert wall < 30, wall  # all of them together (about a second; one import of torch takes longer on a busy CPU)


def test_each_module_the_checks_use_imports_no_heavy_package():
    code = ("import sys\nimport nnunet_prune.nnunet.prechecks, nnunet_prune.core.runtime_specs, "
            "nnunet_prune.nnunet.settings, "
            "nnunet_prune.tools.quiet, nnunet_prune.cli.main\nfrom nnunet_prune.cli.main import build_parser\n"
            f"build_parser()\nprint([m for m in {HEAVY!r} + ('numpy',) if m in sys.modules])\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "[]", proc.stdout + proc.stderr
