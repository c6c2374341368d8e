"""The README's main job, `nnunet-prune demo`, end to end with a tiny budget (stock nnU-Net scripts inside)."""

from __future__ import annotations

import json
import sys

import pytest

from tests.conftest import NnUNet

pytestmark = pytest.mark.slow


def test_demo_runs_end_to_end_and_refuses_foreign_folders(tmp_path):
    nnunet = NnUNet(tmp_path / "env")
    workdir = tmp_path / "demo"
    run = nnunet.run(sys.executable, "-m", "nnunet_prune.cli.main", "demo", "--workdir", workdir, "--epochs", 1,
                     "--iterations", 3)
    for step in ("Creating the synthetic dataset", "LUnetPlanner", "Training Sauron", "Exporting Sauron",
                 "Predicting the held-out images", "Magnitude-pruning sweep", "Total wall time"):
        assert step in run.stdout
    # each step says where the demo is and the time left (seeded trainings repeat exactly: tests/unit/nnunet/
    # test_seeding.py trains twice with one seed, which is what makes a rerun of the demo give the same table)
    assert "==> [step 1 of 12, " in run.stdout and "(model 3 of 3)" in run.stdout and " left] " in run.stdout
    results = json.loads((workdir / "demo_results.json").read_text())
    rows = {r["name"]: r for r in results["rows"]}
    assert set(rows) == {"nnU-Net default", "LUnet", "Sauron"}
    assert rows["LUnet"]["parameters"] * 30 < rows["nnU-Net default"]["parameters"]
    assert rows["LUnet"]["macs"] < rows["nnU-Net default"]["macs"]
    assert all(0 <= r["dice"] <= 1 for r in rows.values())
    # one Dice source, as in the benchmark: nnU-Net's own evaluation of each model's predictions
    for name, r in rows.items():
        summary = json.loads((workdir / "predictions" / name / "summary.json").read_text())
        assert abs(r["dice"] - summary["foreground_mean"]["Dice"]) < 1e-9, name
    assert rows["Sauron"]["model_folder"].startswith(str(workdir / "exported"))  # measured and predicted exported
    assert "| model | parameters | GMAC/patch" in (workdir / "demo_results.md").read_text()
    assert (workdir / "magnitude_sweep" / "summary.md").is_file()
    # a class no model learnt within the (here tiny) budget is said in words, not left as a silent 0.00
    for c in rows["nnU-Net default"]["dice_per_class"]:
        if all(r["dice_per_class"][c] < 0.1 for r in rows.values()):
            assert f"No model learnt '{c}'" in run.stdout
    # the terminal table is narrow, the commands it prints can be pasted, progress bars do not flood the log
    start = run.stdout.index("\n", run.stdout.index("Training budget:"))
    table = run.stdout[start:run.stdout.index("CPU ms/patch: one patch")]
    assert max(len(line) for line in table.splitlines()) < 120
    assert sum("it/s]" in line for line in run.stdout.splitlines()) < 10

    # every file of the working folder is recorded as the demo's own (what a rerun may delete) ...
    from nnunet_prune.core.outputs import foreign_entries

    assert foreign_entries(workdir, "demo") == []
    # ... and a file the user adds there stops the rerun before anything is deleted
    (workdir / "nnUNet_results" / "my_notes.txt").write_text("keep me")
    bad = nnunet.run(sys.executable, "-m", "nnunet_prune.cli.main", "demo", "--workdir", workdir, check=False)
    assert bad.returncode == 2 and "my_notes.txt" in bad.stderr
    assert (workdir / "nnUNet_results" / "my_notes.txt").read_text() == "keep me"
    assert (workdir / "demo_results.json").is_file()

    # running it again replaces its own working folder, but never a folder it did not make
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep me")
    bad = nnunet.run(sys.executable, "-m", "nnunet_prune.cli.main", "demo", "--workdir", foreign, check=False)
    assert bad.returncode == 2 and "was not made by the demo" in bad.stderr
    assert (foreign / "precious.txt").read_text() == "keep me"
