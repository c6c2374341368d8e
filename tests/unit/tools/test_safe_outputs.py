"""Faults found by trying the package as users do: folders the package did not write are never deleted, bad
checkpoints and bad input folders stop every command with one ERROR line before any work, files and folders get
ordinary permissions. Model folders here are real nnU-Net folders written in a temp dir (untrained networks)."""

from __future__ import annotations

import json
import os
import stat
import sys

import pytest
import torch
import torch.nn.utils.prune as torch_prune

from nnunet_prune import NnUNetPruneError
from nnunet_prune.cli.main import main
from nnunet_prune.core.outputs import (
    MANIFEST,
    check_replaceable,
    check_writable_files,
    foreign_entries,
    make_temp_dir,
    ordinary_mode,
    record_files,
    remove_owned,
)
from nnunet_prune.networks import AdaptivePlainConvUNet
from nnunet_prune.networks.checkpoints import check_state_dict, normalise_state_dict
from nnunet_prune.nnunet.modelfolder import ModelFolder
from tests.helpers import REPO, make_network
from tests.unit.tools.test_report import make_model_folder, make_trained_network

pytestmark = pytest.mark.usefixtures("single_thread")


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def run_cli(capsys, *argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


# ------------------------------------------------------------------------------------------------ outputs
def test_manifest_proves_ownership_and_nothing_else(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.txt").write_text("mine")
    (out / "sub").mkdir()
    (out / "sub" / "b.bin").write_bytes(b"12345")
    record_files(out, "export")
    assert foreign_entries(out, "export") == []
    check_replaceable(out, "export", "--overwrite")  # all ours
    (out / "notes.txt").write_text("important")
    assert foreign_entries(out, "export") == ["notes.txt"]
    with pytest.raises(NnUNetPruneError, match="notes.txt"):
        remove_owned(out, "export")
    assert (out / "notes.txt").read_text() == "important" and (out / "a.txt").exists()
    (out / "notes.txt").unlink()
    (out / "a.txt").write_text("changed by the user")  # a changed file is no longer provably ours
    with pytest.raises(NnUNetPruneError, match="a.txt"):
        check_replaceable(out, "export", "--overwrite")
    with pytest.raises(NnUNetPruneError, match="was not written by `nnunet-prune sweep`"):
        check_replaceable(out, "sweep", "--restart")  # another tool's folder
    (out / "a.txt").write_text("mine")
    remove_owned(out, "export")
    assert not out.exists()


def test_folder_without_manifest_is_never_replaceable(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "plans.json").write_text("{}")
    with pytest.raises(NnUNetPruneError, match="Nothing was changed"):
        check_replaceable(tmp_path / "x", "export", "--overwrite")
    check_replaceable(tmp_path / "missing", "export", "--overwrite")  # absent: fine
    (tmp_path / "empty").mkdir()
    check_replaceable(tmp_path / "empty", "export", "--overwrite")  # empty: fine


def test_writable_files_refuses_a_users_file(tmp_path):
    (tmp_path / "report.md").write_text("my own notes")
    with pytest.raises(NnUNetPruneError, match="report.md"):
        check_writable_files(tmp_path, ["report.md", "report.csv"], "report")
    (tmp_path / "report.md").unlink()
    (tmp_path / "report.md").write_text("ours")
    record_files(tmp_path, "report", ["report.md"])
    check_writable_files(tmp_path, ["report.md", "report.csv"], "report")


def test_temp_dirs_get_ordinary_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        tmp = make_temp_dir(tmp_path / "new" / "parent", ".x.")
        assert mode(tmp) == 0o755 == ordinary_mode()
    finally:
        os.umask(old)


# ------------------------------------------------------------------------------------------------ checkpoints
def test_reparametrised_state_is_read_as_the_pruned_weights():
    src = make_network(cls=AdaptivePlainConvUNet)
    for m in src.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch_prune.l1_unstructured(m, "weight", 0.3)
    state = src.state_dict()
    assert any(k.endswith("weight_orig") for k in state)
    net = make_network(cls=AdaptivePlainConvUNet)
    net.load_state_dict(state)
    conv = src.encoder.stages[0][0].convs[0].conv
    assert torch.equal(net.encoder.stages[0][0].convs[0].conv.weight, conv.weight_orig * conv.weight_mask)
    x = torch.randn(1, 2, 32, 32)
    src.eval(), net.eval()
    with torch.no_grad():
        assert (src(x)[0] - net(x)[0]).abs().max() <= 1e-5


def test_wrapper_prefixes_are_stripped():
    state = make_network().state_dict()
    compiled = {f"_orig_mod.{k}": v for k, v in state.items()}
    assert normalise_state_dict(compiled).keys() == state.keys()
    ddp = {f"module.{k}": v for k, v in state.items()}
    assert normalise_state_dict(ddp).keys() == state.keys()


def test_check_state_dict_names_what_is_wrong():
    net = make_network(cls=AdaptivePlainConvUNet)
    good = make_network().state_dict()
    check_state_dict(net, good, "ok.pth", [32, 32])
    orphan = {k: v for k, v in good.items()}
    orphan["encoder.stages.0.0.convs.0.conv.weight_orig"] = orphan.pop("encoder.stages.0.0.convs.0.conv.weight")
    with pytest.raises(NnUNetPruneError, match="prune.remove") as e:
        check_state_dict(net, orphan, "bad.pth", [32, 32])
    assert "bad.pth" in str(e.value) and "missing" in str(e.value)
    kernel = dict(good)
    kernel["encoder.stages.0.0.convs.0.conv.weight"] = torch.zeros(8, 2, 5, 5)
    with pytest.raises(NnUNetPruneError, match=r"kernel size.*\(8, 2, 5, 5\)"):
        check_state_dict(net, kernel, "bad.pth", [32, 32])
    widths = dict(good)  # 5 output channels in one conv, its norm and its consumers still 8: cannot work
    widths["encoder.stages.0.0.convs.0.conv.weight"] = widths["encoder.stages.0.0.convs.0.conv.weight"][:5]
    with pytest.raises(NnUNetPruneError, match="widths stored in the checkpoint do not fit together"):
        check_state_dict(make_network(cls=AdaptivePlainConvUNet), widths, "bad.pth", [32, 32])


def reparametrised_model_folder(root):
    """A model folder whose fold_0 was saved after torch.nn.utils.prune.l1_unstructured(conv, 'weight', 0.3) on
    every convolution, WITHOUT prune.remove (keys weight_orig / weight_mask)."""
    folder, _ = make_model_folder(root, folds=(0,))
    net = make_trained_network()
    for m in net.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            torch_prune.l1_unstructured(m, "weight", 0.3)
    file = folder / "fold_0" / "checkpoint_final.pth"
    ckpt = torch.load(file, weights_only=False)
    ckpt["network_weights"] = net.state_dict()
    torch.save(ckpt, file)
    return folder, net


def test_tools_read_a_reparametrised_checkpoint(tmp_path, capsys):
    folder, net = reparametrised_model_folder(tmp_path / "models")
    mf = ModelFolder.open(folder)
    loaded = mf.load_network(0)
    net.eval()
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        assert (loaded(x) - net(x)[0]).abs().max() <= 1e-5
    code, text = run_cli(capsys, "export", folder, "-o", tmp_path / "exported")
    assert code == 0, text
    assert "weight_orig" not in "".join(torch.load(tmp_path / "exported" / "fold_0" / "checkpoint_final.pth",
                                                   weights_only=False)["network_weights"])


def damaged_model_folders(root) -> dict[str, tuple]:
    """Model folders whose fold_0 checkpoint cannot be used, with the words the error must contain."""
    cases = {}
    folder, _ = make_model_folder(root / "extra_key")
    file = folder / "fold_0" / "checkpoint_final.pth"
    ckpt = torch.load(file, weights_only=False)
    ckpt["network_weights"]["decoder.extra.weight"] = torch.zeros(3)
    torch.save(ckpt, file)
    cases["extra_key"] = (folder, "decoder.extra.weight")
    folder, _ = make_model_folder(root / "truncated")
    file = folder / "fold_0" / "checkpoint_final.pth"
    file.write_bytes(file.read_bytes()[:1000])
    cases["truncated"] = (folder, "Cannot read")
    folder, _ = make_model_folder(root / "bare_state_dict")
    torch.save(make_trained_network().state_dict(), folder / "fold_0" / "checkpoint_final.pth")
    cases["bare_state_dict"] = (folder, "is not an nnU-Net checkpoint")
    folder, _ = make_model_folder(root / "other_configuration")
    file = folder / "fold_0" / "checkpoint_final.pth"
    ckpt = torch.load(file, weights_only=False)
    ckpt["init_args"]["configuration"] = "3d_fullres"
    torch.save(ckpt, file)
    cases["other_configuration"] = (folder, "'3d_fullres' cannot be read from plans.json")
    return cases


@pytest.mark.parametrize("command", ["export", "report", "sweep"])
def test_every_tool_refuses_a_damaged_checkpoint_before_any_work(tmp_path, capsys, command):
    images = tmp_path / "images"
    images.mkdir()
    for name, (folder, words) in damaged_model_folders(tmp_path / "models").items():
        out = tmp_path / f"out_{command}_{name}"
        argv = {"export": ["export", folder, "-o", out],
                "report": ["report", folder, "-o", out, "--no-compile"],
                "sweep": ["sweep", folder, "-i", images, "-o", out]}[command]
        code, text = run_cli(capsys, *argv)
        assert code == 2, (name, text)
        errors = [line for line in text.splitlines() if line.startswith("ERROR:")]
        assert len(errors) == 1 and words in text, (name, text)
        assert "Traceback" not in text and not out.exists(), name


# ------------------------------------------------------------------------------------------------ export
def test_export_overwrite_never_deletes_a_users_folder(tmp_path, capsys):
    folder, _ = make_model_folder(tmp_path / "models")
    mydata = tmp_path / "mydata"
    mydata.mkdir()
    (mydata / "notes.txt").write_text("important")
    code, text = run_cli(capsys, "export", folder, "-o", mydata, "--overwrite")
    assert code == 2 and "Nothing was changed" in text
    assert (mydata / "notes.txt").read_text() == "important"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".mydata")] == []  # no temp folder left

    out = tmp_path / "exported"
    old = os.umask(0o022)
    try:
        assert run_cli(capsys, "export", folder, "-o", out)[0] == 0
    finally:
        os.umask(old)
    assert mode(out) == 0o755 and mode(out / "fold_0") & 0o055 == 0o055
    assert mode(out / "fold_0" / "checkpoint_final.pth") & 0o044 == 0o044
    assert (out / MANIFEST).is_file()
    assert run_cli(capsys, "export", folder, "-o", out, "--overwrite")[0] == 0  # its own export: replaced
    (out / "fold_0" / "my_predictions.txt").write_text("keep me")
    code, text = run_cli(capsys, "export", folder, "-o", out, "--overwrite")
    assert code == 2 and "my_predictions.txt" in text
    assert (out / "fold_0" / "my_predictions.txt").read_text() == "keep me"
    assert (out / "fold_0" / "checkpoint_final.pth").is_file()


def test_report_never_overwrites_a_users_file(tmp_path, capsys):
    folder, _ = make_model_folder(tmp_path / "models")
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.md").write_text("my own report")
    code, text = run_cli(capsys, "report", folder, "-o", out, "--no-compile", "--repeats", 1, "--warmup", 0)
    assert code == 2 and "report.md" in text and "Measuring" not in text
    assert (out / "report.md").read_text() == "my own report"
    (out / "report.md").unlink()
    for _ in range(2):  # the second run replaces its own files
        code, text = run_cli(capsys, "report", folder, "-o", out, "--no-compile", "--repeats", 1, "--warmup", 0)
        assert code == 0, text


# ------------------------------------------------------------------------------------------------ sweep inputs
def test_sweep_checks_paths_before_loading_anything(tmp_path, capsys):
    folders = damaged_model_folders(tmp_path / "models")
    folder = folders["truncated"][0]  # loading it would fail: the path error must come first
    code, text = run_cli(capsys, "sweep", folder, "-i", tmp_path / "does_not_exist", "-o", tmp_path / "o")
    assert code == 2 and "-i" in text and "no such folder" in text and "Cannot read" not in text
    code, text = run_cli(capsys, "sweep", folder, "-i", tmp_path, "--labels", tmp_path / "nope")
    assert code == 2 and "--labels" in text and "no such folder" in text


def test_sweep_labels_folder_as_images_says_which_files_it_expected(tmp_path):
    from nnunet_prune.tools.sweep.magnitude import list_cases

    labels = tmp_path / "labelsTs"
    labels.mkdir()
    for case in ("case_a", "case_b"):
        (labels / f"{case}.nii.gz").write_bytes(b"x")
    ds = {"file_ending": ".nii.gz", "channel_names": {"0": "T1", "1": "T2"}}
    with pytest.raises(NnUNetPruneError, match="lack the channel suffix") as e:
        list_cases(labels, ds)
    assert "CASE_0000.nii.gz, CASE_0001.nii.gz" in str(e.value) and "--labels" in str(e.value)
    images = tmp_path / "imagesTs"
    images.mkdir()
    (images / "case_a_0000.nii.gz").write_bytes(b"x")
    (images / "case_a_0001.nii.gz").write_bytes(b"x")
    (images / "case_b_0000.nii.gz").write_bytes(b"x")
    with pytest.raises(NnUNetPruneError, match=r"case_b has channel\(s\) \[0\]"):
        list_cases(images, ds)
    (images / "case_b_0001.nii.gz").write_bytes(b"x")
    cases = list_cases(images, ds)
    assert list(cases) == ["case_a", "case_b"] and [os.path.basename(f) for f in cases["case_b"]] == \
        ["case_b_0000.nii.gz", "case_b_0001.nii.gz"]


def test_benchmark_out_never_overwrites_a_users_file(tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import common
    finally:
        sys.path.pop(0)
    mine = tmp_path / "results.md"
    mine.write_text("my notes")
    with pytest.raises(SystemExit, match="was not written by a benchmark"):
        common.check_out(str(mine))
    ours = tmp_path / "ours.json"
    ours.write_text(json.dumps({"nnunet_prune_benchmark": True, "rows": []}, indent=2))
    common.check_out(str(ours))
    common.check_out(str(tmp_path / "new.md"))


# ------------------------------------------------------------------------------------------------ trainers
def test_budget_variables_validated_before_anything_is_written(monkeypatch):
    from nnunet_prune.nnunet.trainers.budget import read_budget_overrides

    assert read_budget_overrides({"NNUNET_PRUNE_EPOCHS": "3"}) == {"num_epochs": 3}
    for bad in ("abc", "0", "-2", "1.5"):
        with pytest.raises(NnUNetPruneError, match="NNUNET_PRUNE_EPOCHS"):
            read_budget_overrides({"NNUNET_PRUNE_EPOCHS": bad})


def test_trained_model_folders_lists_finished_folds_by_plans_and_configuration(tmp_path):
    from nnunet_prune.nnunet.modelfolder import trained_model_folders

    for name, fold in (("nnUNetTrainerBudget__nnUNetPlans__2d", 0), ("nnUNetTrainerSauron__nnUNetPlans__2d", 1),
                       ("nnUNetTrainer__nnUNetLUnetPlans__2d", 0), ("nnUNetTrainer__nnUNetPlans__3d_fullres", 0)):
        (tmp_path / name / f"fold_{fold}").mkdir(parents=True)
        (tmp_path / name / f"fold_{fold}" / "checkpoint_final.pth").write_bytes(b"x")
    (tmp_path / "nnUNetTrainer__nnUNetPlans__2d" / "fold_0").mkdir(parents=True)  # started, not finished
    names = lambda folders: [p.name for p in folders]  # noqa: E731
    assert names(trained_model_folders(tmp_path)) == sorted([
        "nnUNetTrainerBudget__nnUNetPlans__2d", "nnUNetTrainerSauron__nnUNetPlans__2d",
        "nnUNetTrainer__nnUNetLUnetPlans__2d", "nnUNetTrainer__nnUNetPlans__3d_fullres"])  # not the unfinished one
    assert names(trained_model_folders(tmp_path, 0, "__nnUNetPlans__2d")) == ["nnUNetTrainerBudget__nnUNetPlans__2d"]
    assert names(trained_model_folders(tmp_path, 1, "__nnUNetPlans__2d")) == ["nnUNetTrainerSauron__nnUNetPlans__2d"]
    assert trained_model_folders(tmp_path / "missing") == []
