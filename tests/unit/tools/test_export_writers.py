"""The export's writers (tools/export/writers.py): one per runtime behind one registry, so a new runtime is one new
entry -- here a toy runtime, added as the module docstring says, runs through ``nnunet-prune export --runtime``."""

from __future__ import annotations

import json
from typing import ClassVar

import pytest
import torch

from nnunet_prune import NnUNetPruneError
from nnunet_prune.cli.main import main
from nnunet_prune.tools.export import writers
from nnunet_prune.tools.export.folder import ExportOptions, export_model_folder
from nnunet_prune.tools.export.writers import WRITERS, FoldWriter, register_writer, writer_class
from tests.unit.tools.test_report import make_model_folder


class ToyWriter(FoldWriter):
    """The module docstring's example: PyTorch folds plus a note beside each checkpoint."""

    runtime: ClassVar[str] = "toy"
    holds: ClassVar[str | None] = "the fold's PyTorch weights and a toy note"

    def write(self, fold_dir, fold, state, plans, info):
        target = super().write(fold_dir, fold, state, plans, info)
        (fold_dir / "toy.txt").write_text(f"{len(state)} tensors")
        return target


@pytest.fixture
def toy_runtime(monkeypatch):
    monkeypatch.setattr(writers, "WRITERS", dict(WRITERS))  # the registry as it was, after the test
    monkeypatch.setattr("nnunet_prune.tools.export.folder.WRITERS", writers.WRITERS)
    monkeypatch.setattr("nnunet_prune.cli.export.WRITERS", writers.WRITERS)
    register_writer(ToyWriter)
    return ToyWriter


def test_the_registry_holds_one_writer_per_runtime():
    assert list(WRITERS) == ["pytorch", "onnxruntime", "openvino", "torch-compile"]
    assert all(writer_class(name).runtime == name for name in WRITERS)
    with pytest.raises(NnUNetPruneError, match="Unknown runtime 'tensorrt': known runtimes are pytorch, onnxruntime"):
        writer_class("tensorrt")
    with pytest.raises(NnUNetPruneError, match="need a --runtime"):
        writer_class("pytorch")({"threads": 2})


def test_a_new_runtime_is_one_new_entry(tmp_path, capsys, toy_runtime):
    folder, _ = make_model_folder(tmp_path, folds=(0, 1), pruned_folds=(1,))
    out = tmp_path / "toy"
    assert main(["export", str(folder), "-o", str(out), "--runtime", "toy"]) == 0
    text = capsys.readouterr().out
    assert "(runtime toy)" in text and "(each checkpoint holds the fold's PyTorch weights and a toy note;" in text
    assert (out / "fold_0" / "toy.txt").is_file() and (out / "fold_1" / "toy.txt").is_file()
    assert json.loads((out / "export_summary.json").read_text())["runtime"] == "toy"
    ckpt = torch.load(out / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["trainer_name"] == "nnUNetTrainer" and "runtime" not in ckpt["nnunet_prune_export"]
    # a runtime without options refuses them, before any work
    assert main(["export", str(folder), "-o", str(tmp_path / "x"), "--runtime", "toy", "--threads", "2"]) == 2
    assert "The runtime toy takes no options" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_options_and_keywords_are_one_interface(tmp_path):
    folder, _ = make_model_folder(tmp_path, folds=(0,))
    by_keyword = export_model_folder(folder, tmp_path / "a", magnitude_tau=0.01, fp16=True)
    by_options = export_model_folder(folder, tmp_path / "b", ExportOptions(magnitude_tau=0.01, fp16=True))
    assert by_keyword.folds == by_options.folds and by_keyword.fp16 and by_keyword.magnitude_tau == 0.01
    assert ExportOptions(magnitude_tau=0.01).compact_storage and not ExportOptions().compact_storage
    with pytest.raises(TypeError):
        export_model_folder(folder, tmp_path / "c", tau=0.01)
    assert not (tmp_path / "c").exists()
