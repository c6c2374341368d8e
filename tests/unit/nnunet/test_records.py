"""FoldRecords, the one owner of a fold's JSON files: starts and resumes of pruning_config.json, the --c settings
check, pruning_history.json from nnU-Net's logger, magnitude_pruning.json; readers that never raise."""

from __future__ import annotations

import json

import pytest

from nnunet_prune import NnUNetPruneError
from nnunet_prune.nnunet.trainers.records import (
    CONFIG_FILE,
    HISTORY_FILE,
    MAGNITUDE_FILE,
    RECORD_KEY,
    FoldRecords,
    history_epochs,
)


def test_a_start_is_kept_and_resumes_are_appended(tmp_path):
    records = FoldRecords(tmp_path)
    assert records.read_config() == {} and records.stored_config() is None and records.initial_widths() is None
    start = {"trainer": "T", "method": {"tau": 0.1}, "initial_widths": {"a": "8"}, "resumes": []}
    path = records.start_or_resume(start, resume=None)
    assert path == str(tmp_path / CONFIG_FILE) and not (tmp_path / (CONFIG_FILE + ".tmp")).exists()
    records.start_or_resume({"trainer": "other"}, resume={"epoch": 3})
    config = json.loads((tmp_path / CONFIG_FILE).read_text())
    assert config["trainer"] == "T" and config["resumes"] == [{"epoch": 3}]
    assert records.initial_widths() == {"a": 8}


def test_a_resume_without_a_recorded_start_writes_a_start(tmp_path):
    records = FoldRecords(tmp_path)
    (tmp_path / CONFIG_FILE).write_text(json.dumps({"trainer": "T"}))  # no "method": not a pruning trainer's start
    records.start_or_resume({"trainer": "new", "method": {}}, resume={"epoch": 1})
    assert records.read_config() == {"trainer": "new", "method": {}}
    records.start_or_resume({"trainer": "newer"}, resume={"epoch": 2}, resumes_if=None)  # the budget trainer's rule
    assert records.read_config()["resumes"] == [{"epoch": 2}]


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", ""])
def test_damaged_files_read_as_empty(tmp_path, text):
    for name in (CONFIG_FILE, HISTORY_FILE, MAGNITUDE_FILE):
        (tmp_path / name).write_text(text)
    records = FoldRecords(tmp_path)
    assert records.read_config() == {} and records.stored_config() is None
    assert records.read_history() == [] and records.read_magnitude() == {}


def test_resume_with_other_method_settings_is_refused_naming_each(tmp_path):
    records = FoldRecords(str(tmp_path))
    records.write_config({"method": {"tau": 0.1, "k": 2}})
    records.check_same_method({"tau": 0.1, "k": 2, "new": 1}, "T", 0)  # same (a new key is not a change)
    with pytest.raises(NnUNetPruneError, match=r"T fold 0 was started with other method settings \(tau: 0\.1 at "
                                               r"the start, 0\.2 now; recorded in .*pruning_config\.json\).*"
                                               r"\(NNUNET_PRUNE_X, plans entry\)"):
        records.check_same_method({"tau": 0.2, "k": 2}, "T", 0, "NNUNET_PRUNE_X")


def test_history_comes_from_the_logger_and_round_trips(tmp_path):
    log = {RECORD_KEY: [{"epoch": 0, "widths": {"a": 8}}, None, {"epoch": 2}],
           "epoch_start_timestamps": [0.0, 1.0, 2.0], "epoch_end_timestamps": [0.5, 1.5],
           "train_losses": [1.0, 0.9], "val_losses": [1.1, 1.0], "mean_fg_dice": [0.2, 0.3]}
    epochs = history_epochs(log)
    assert epochs[0] == {"epoch": 0, "widths": {"a": 8}, "epoch_seconds": 0.5, "val_loss": 1.1, "train_loss": 1.0,
                         "pseudo_dice": 0.2}
    assert epochs[1] == {"epoch": 2}  # no timestamps yet: the record alone
    records = FoldRecords(tmp_path)
    records.write_history("T", epochs)
    assert json.loads((tmp_path / HISTORY_FILE).read_text())["trainer"] == "T"
    assert records.read_history() == epochs
    records.write_magnitude({"tau": 0.01})
    assert records.read_magnitude() == {"tau": 0.01}
