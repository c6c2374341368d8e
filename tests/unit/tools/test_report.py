"""Efficiency report: real (untrained) nnU-Net model folders written here, dense and pruned folds, real files."""

from __future__ import annotations

import csv
import dataclasses
import json
import sys

import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

from nnunet_prune import NnUNetPruneError
from nnunet_prune.cli.main import main
from nnunet_prune.core.outputs import MANIFEST
from nnunet_prune.core.stats import count_macs, count_parameters
from nnunet_prune.core.timing import FixedLoad, TimingPolicy
from nnunet_prune.nnunet.modelfolder import ModelFolder
from nnunet_prune.surgery import build_channel_graph
from nnunet_prune.tools.report.efficiency import (
    FoldEfficiency,
    format_markdown,
    format_table,
    measure_latency,
    measure_model_folder,
    open_model_folders,
    write_report,
)
from tests.helpers import make_network

PATCH = [32, 32]
#: a quiet machine and runs that always count: tests of what is measured, not of the verdict
#: (tests/unit/core/test_timing.py)
QUIET = dict(load=FixedLoad(0.0), policy=TimingPolicy(repeats=2, max_repeats=2, precision=1e6))
FAST = dict(compile=False, repeats=2, warmup=0, threads=1, device="cpu", runtimes=[], **QUIET)

ARCH = {
    "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
    "arch_kwargs": {
        "n_stages": 4,
        "features_per_stage": [8, 16, 24, 24],
        "conv_op": "torch.nn.modules.conv.Conv2d",
        "kernel_sizes": [[3, 3]] * 4,
        "strides": [[1, 1], [2, 2], [2, 2], [2, 2]],
        "n_conv_per_stage": [2, 2, 1, 2],
        "n_conv_per_stage_decoder": [1, 2, 2],
        "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm2d",
        "norm_op_kwargs": {"eps": 1e-05, "affine": True},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
    },
    "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
}

PLANS = {
    "dataset_name": "Dataset999_Tiny",
    "plans_name": "nnUNetPlans",
    "original_median_spacing_after_transp": [1.0, 1.0],
    "original_median_shape_after_transp": [64, 64],
    "image_reader_writer": "NaturalImage2DIO",
    "transpose_forward": [0, 1],
    "transpose_backward": [0, 1],
    "label_manager": "LabelManager",
    "experiment_planner_used": "ExperimentPlanner",
    "foreground_intensity_properties_per_channel": {},
    "configurations": {
        "2d": {
            "data_identifier": "nnUNetPlans_2d",
            "preprocessor_name": "DefaultPreprocessor",
            "batch_size": 2,
            "patch_size": PATCH,
            "median_image_size_in_voxels": [64, 64],
            "spacing": [1.0, 1.0],
            "normalization_schemes": ["ZScoreNormalization"],
            "use_mask_for_norm": [False],
            "resampling_fn_data": "resample_data_or_seg_to_shape",
            "resampling_fn_seg": "resample_data_or_seg_to_shape",
            "resampling_fn_data_kwargs": {},
            "resampling_fn_seg_kwargs": {},
            "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
            "resampling_fn_probabilities_kwargs": {},
            "batch_dice": True,
            "architecture": ARCH,
        }
    },
}

DATASET = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, "tumour": 2}, "numTraining": 4,
           "file_ending": ".png"}


def make_trained_network(seed: int = 0) -> PlainConvUNet:
    """The plans' network as nnU-Net's trainer builds it (stock class, deep supervision on)."""
    torch.manual_seed(seed)
    return get_network_from_plans(ARCH["network_class_name"], ARCH["arch_kwargs"], ARCH["_kw_requires_import"],
                                  1, 3, allow_init=True, deep_supervision=True)


def prune_some(net) -> dict:
    """Remove half the channels of every other group (in place); returns the removal."""
    graph = build_channel_graph(net)
    removal = {g.name: list(range(g.size // 2)) for i, g in enumerate(graph) if i % 2 == 0}
    graph.prune(removal)
    return removal


def write_summary(fold_dir, dice_liver: float, dice_tumour: float) -> None:
    """fold_k/validation/summary.json as nnU-Net's compute_metrics_on_folder writes it (shortened)."""
    (fold_dir / "validation").mkdir(parents=True)
    summary = {
        "foreground_mean": {"Dice": (dice_liver + dice_tumour) / 2, "IoU": 0.5},
        "mean": {"1": {"Dice": dice_liver, "IoU": 0.6}, "2": {"Dice": dice_tumour, "IoU": 0.4}},
        "metric_per_case": [],
    }
    (fold_dir / "validation" / "summary.json").write_text(json.dumps(summary, sort_keys=True, indent=2))


def make_model_folder(root, name="nnUNetTrainer__nnUNetPlans__2d", folds=(0,), pruned_folds=(), dice=None,
                      trainer="nnUNetTrainer"):
    """A model folder like nnUNetv2_train leaves it: plans.json, dataset.json, fold_k/checkpoint_final.pth.
    ``dice``: fold -> (liver, tumour) Dice for a validation summary. Returns (path, {fold: network})."""
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(PLANS, indent=2))
    (folder / "dataset.json").write_text(json.dumps(DATASET, indent=2))
    nets = {}
    for fold in folds:
        net = make_trained_network(seed=fold)
        if fold in pruned_folds:
            prune_some(net)
        fold_dir = folder / f"fold_{fold}"
        fold_dir.mkdir()
        torch.save({"network_weights": net.state_dict(), "optimizer_state": None, "grad_scaler_state": None,
                    "logging": {}, "_best_ema": None, "current_epoch": 1, "trainer_name": trainer,
                    "init_args": {"plans": PLANS, "configuration": "2d", "fold": fold, "dataset_json": DATASET},
                    "inference_allowed_mirroring_axes": (0, 1)}, fold_dir / "checkpoint_final.pth")
        if dice and fold in dice:
            write_summary(fold_dir, *dice[fold])
        nets[fold] = net
    return folder, nets


# ---------------------------------------------------------------------------------------------------- library
def test_measure_dense_and_pruned_folds(tmp_path):
    folder, nets = make_model_folder(tmp_path, folds=(0, 1), pruned_folds=(1,), dice={0: (0.9, 0.7)})
    rows = measure_model_folder(folder, **FAST)
    assert [r.fold for r in rows] == [0, 1]
    dense, pruned = rows
    mf = ModelFolder.open(folder)
    for row in rows:
        net = nets[row.fold]
        assert row.parameters == count_parameters(net) == count_parameters(mf.load_network(row.fold))
        assert row.macs == count_macs(net, PATCH) == count_macs(mf.load_network(row.fold), PATCH)
        assert row.checkpoint_bytes == (folder / f"fold_{row.fold}" / "checkpoint_final.pth").stat().st_size
        assert row.nonzero_parameters == sum(int(torch.count_nonzero(p)) for p in net.parameters())
        assert row.model == "nnUNetTrainer__nnUNetPlans__2d" and row.trainer == "nnUNetTrainer"
        assert row.configuration == "2d" and row.patch_size == PATCH
        assert row.cpu_ms_eager > 0 and row.threads == 1 and row.repeats == 2
        assert row.cpu_ms_compiled is None and row.notes == []
        assert row.gpu_ms_eager is None and row.gpu_ms_compiled is None and row.gpu_peak_mb is None
    assert pruned.macs < dense.macs and pruned.parameters < dense.parameters
    assert pruned.checkpoint_bytes < dense.checkpoint_bytes
    # the stock U-Net registers encoder modules twice (also as decoder.encoder): the state dict counts them twice
    dense_net = nets[0]
    assert dense.parameters == sum(p.numel() for p in dense_net.parameters())
    assert dense.parameters < sum(t.numel() for t in dense_net.state_dict().values())
    # Dice from summary.json, per class under the dataset.json label names
    assert dense.dice == pytest.approx(0.8)
    assert dense.dice_per_class == pytest.approx({"liver": 0.9, "tumour": 0.7})
    assert pruned.dice is None and pruned.dice_per_class is None


def test_measure_selected_fold_and_missing_fold(tmp_path):
    folder, _ = make_model_folder(tmp_path, folds=(0, 1))
    rows = measure_model_folder(folder, [1], **FAST)
    assert [r.fold for r in rows] == [1]
    with pytest.raises(NnUNetPruneError, match=r"fold\(s\) 3 have no checkpoint_final.pth .*available: 0, 1"):
        measure_model_folder(folder, [3], **FAST)


def test_measure_latency_restores_state():
    net = make_network("plain", 2, ds=True, in_channels=1)
    net.train()
    threads = torch.get_num_threads()
    ms = measure_latency(net, PATCH, "cpu", repeats=3, warmup=1, threads=1)
    assert ms > 0
    assert torch.get_num_threads() == threads
    assert net.training and net.decoder.deep_supervision
    assert next(net.parameters()).device.type == "cpu"


def test_compile_failure_is_recorded_not_fatal(tmp_path, monkeypatch, capsys):
    """A compile that fails (e.g. no C++ compiler for inductor) fails at the first call of the compiled module."""
    def broken_compile(module, **kwargs):
        def call(*args):
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\nsecond line")
        return call

    monkeypatch.setattr(torch, "compile", broken_compile)
    folder, _ = make_model_folder(tmp_path)
    row, = measure_model_folder(folder, **{**FAST, "compile": True})
    assert row.cpu_ms_eager > 0 and row.cpu_ms_compiled is None
    assert len(row.notes) == 1 and "torch.compile on cpu failed" in row.notes[0] and "second line" not in row.notes[0]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("WARNING: torch.compile on cpu failed for nnUNetTrainer__")
    assert "torch.compile on cpu failed" in format_markdown([row])


@pytest.mark.slow
def test_compiled_latency_cpu():
    """Real inductor compilation (needs a C++ compiler; tens of seconds on a small machine)."""
    net = make_network("plain", 2, ds=True, in_channels=1)
    assert measure_latency(net, PATCH, "cpu", repeats=2, warmup=0, runtime="compile", threads=1) > 0
    assert net.decoder.deep_supervision


def test_write_report_files_and_relative_columns(tmp_path):
    dense_dir, _ = make_model_folder(tmp_path / "a", folds=(0, 1), dice={0: (0.9, 0.7), 1: (0.8, 0.6)})
    pruned_dir, _ = make_model_folder(tmp_path / "b", name="nnUNetTrainerPruned__nnUNetPlans__2d", folds=(0,),
                                      pruned_folds=(0,), dice={0: (0.85, 0.65)})
    nodice_dir, _ = make_model_folder(tmp_path / "c", name="Other__nnUNetPlans__2d", folds=(0,), pruned_folds=(0,))
    rows = [r for d in (dense_dir, pruned_dir, nodice_dir) for r in measure_model_folder(d, **FAST)]
    written = write_report(rows, tmp_path / "out")
    assert set(written) == {"csv", "markdown", "plot"}
    assert all(p.is_file() and p.stat().st_size > 0 for p in written.values())
    assert written["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    with open(written["csv"], newline="") as f:
        records = list(csv.DictReader(f))
    assert len(records) == 4  # one row per model/fold
    assert [(r["model"], r["fold"]) for r in records] == [(r.model, str(r.fold)) for r in rows]
    assert [int(r["macs"]) for r in records] == [r.macs for r in rows]
    assert records[0]["patch_size"] == "32x32" and float(records[0]["dice_liver"]) == pytest.approx(0.9)
    assert records[3]["dice"] == ""  # no validation: empty, not zero

    md = written["markdown"].read_text()
    assert "| Model | Fold | Params (M) | GMAC/patch |" in md and "MACs vs first" in md
    ratio = rows[2].macs / rows[0].macs
    assert ratio < 1 and f"{1 / ratio:.3g}x fewer ({ratio - 1:+.1%})".replace("%", " %") in md  # as users quote it
    assert "| nnUNetTrainer__nnUNetPlans__2d | 0 |" in md and "| same |" in md
    if not torch.cuda.is_available():
        assert "GPU ms" not in md and "CPU ms compiled" not in md  # unmeasured columns are left out
    table = format_table(rows)
    assert len(table.splitlines()) == 2 + len(rows) and "Other__nnUNetPlans__2d" in table


def test_changes_read_as_users_quote_them():
    from nnunet_prune.tools.report.efficiency import _latency, _ratio

    assert _ratio(100_000, 7_800_000) == "78x fewer (-98.7 %)"
    assert _ratio(50, 95, "faster", "slower") == "1.9x faster (-47.4 %)"
    assert _ratio(120, 100) == "1.2x more (+20.0 %)" and _ratio(100.2, 100) == "same"
    assert _ratio(None, 100) == "-" and _latency(95.1, 3.2) == "95.1 ±1.60" and _latency(None, None) == "-"


def test_latency_stats_quartiles_and_busy_machine():
    from nnunet_prune.tools.report.efficiency import LatencyStats, busy_machine_warning

    stats = LatencyStats.of([0.010, 0.011, 0.012, 0.013, 0.100])
    assert stats.median_ms == pytest.approx(12.0) and stats.min_ms == pytest.approx(10.0)
    assert stats.q1_ms == pytest.approx(11.0) and stats.q3_ms == pytest.approx(13.0) and stats.runs == 5
    import os

    cores = os.cpu_count() or 1
    assert busy_machine_warning(cores, 0.1) is None
    assert "busy" in busy_machine_warning(cores, cores + 1.0)


def test_write_report_without_dice_has_no_plot(tmp_path):
    row = FoldEfficiency(model="m", fold=0, trainer="t", configuration="2d", patch_size=[32, 32], parameters=10**6,
                         macs=2 * 10**9, checkpoint_bytes=4 * 10**6, cpu_ms_eager=12.5)
    written = write_report([row], tmp_path)
    assert set(written) == {"csv", "markdown"}
    assert not (tmp_path / "dice_vs_macs.png").exists()
    md = format_markdown([row])
    assert "| m | 0 | 1.00 | 2.00 | 4.00 | 12.5 | - |" in md and "vs first" not in md  # one model: no ratios
    sparse = dataclasses.replace(row, model="sparse", nonzero_parameters=250_000)
    assert "| sparse | 0 | 1.00 | 0.25 | 2.00 |" in format_markdown([row, sparse])  # unstructured sparsity shown


def test_open_model_folders_errors(tmp_path):
    good, _ = make_model_folder(tmp_path)
    with pytest.raises(NnUNetPruneError, match="does not exist"):
        open_model_folders([good, tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(NnUNetPruneError, match="not a trained nnU-Net model folder: plans.json, dataset.json"):
        open_model_folders([tmp_path / "empty"])
    plans = json.loads((good / "plans.json").read_text())
    plans["configurations"] = {"3d_fullres": plans["configurations"]["2d"]}
    (good / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(NnUNetPruneError, match="configuration '2d' cannot be read from plans.json"):
        open_model_folders([good])


# ---------------------------------------------------------------------------------------------------- command line
def test_cli_report(tmp_path, capsys):
    dense_dir, _ = make_model_folder(tmp_path / "a", folds=(0,), dice={0: (0.9, 0.7)})
    pruned_dir, _ = make_model_folder(tmp_path / "b", folds=(0,), pruned_folds=(0,), dice={0: (0.88, 0.69)})
    out = tmp_path / "report"
    rc = main(["report", str(dense_dir), str(pruned_dir), "-o", str(out), "--device", "cpu", "--no-compile",
               "--repeats", "1", "--warmup", "0", "--threads", "1"])
    stdout = capsys.readouterr().out
    assert rc == 0
    # same folder name twice: labels are made unique with the parent folder
    assert "[1/2] a/nnUNetTrainer__nnUNetPlans__2d fold 0: " in stdout
    assert "[2/2] b/nnUNetTrainer__nnUNetPlans__2d fold 0: " in stdout and "MACs vs first" in stdout
    # the three files, and the record of them that lets a rerun replace them (and nothing else)
    assert {p.name for p in out.iterdir()} == {"report.csv", "report.md", "dice_vs_macs.png", MANIFEST}


@pytest.mark.parametrize("case", ["missing", "not_model", "fold", "device", "threads", "out_is_file"])
def test_cli_bad_input_fails_before_measuring(tmp_path, capsys, case):
    good, _ = make_model_folder(tmp_path)
    args = ["report", str(good), "--device", "cpu", "--no-compile", "-o", str(tmp_path / "out")]
    expected = {
        "missing": "does not exist",
        "not_model": "is not a trained nnU-Net model folder",
        "fold": "fold(s) 7 have no checkpoint_final.pth",
        "device": "sees no CUDA GPU",
        "threads": "--threads must be at least 1",
        "out_is_file": "exists and is not a folder",
    }[case]
    if case == "missing":
        args.insert(2, str(tmp_path / "typo"))
    elif case == "not_model":
        (tmp_path / "plain").mkdir()
        args.insert(2, str(tmp_path / "plain"))
    elif case == "fold":
        args += ["-f", "7"]
    elif case == "device":
        if torch.cuda.is_available():
            pytest.skip("CUDA is available")
        args += ["--device", "cuda"]
    elif case == "threads":
        args += ["--threads", "0"]
    elif case == "out_is_file":
        (tmp_path / "file").write_text("x")
        args[-1] = str(tmp_path / "file")
    assert main(args) == 2
    captured = capsys.readouterr()
    assert expected in captured.err and captured.err.startswith("ERROR: ")
    assert "[1/" not in captured.out  # nothing was measured
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------------- runtimes
def test_runtimes_are_timed_side_by_side_and_the_fastest_is_named(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("openvino")
    folder, _ = make_model_folder(tmp_path, folds=(0,), pruned_folds=(0,))
    row, = measure_model_folder(folder, **{**FAST, "runtimes": ["onnxruntime", "openvino"]})
    assert set(row.cpu_ms_runtimes) == {"onnxruntime", "openvino"} and all(v > 0 for v in row.cpu_ms_runtimes.values())
    times = row.cpu_latencies()
    assert set(times) == {"pytorch", "onnxruntime", "openvino"} and times[row.fastest_cpu] == min(times.values())
    written = write_report([row], tmp_path / "out")
    md = written["markdown"].read_text()
    assert "CPU ms onnxruntime" in md and "CPU ms openvino" in md and f"| {row.fastest_cpu}" in md
    with open(written["csv"]) as f:
        record, = csv.DictReader(f)
    assert float(record["cpu_ms_openvino"]) == row.cpu_ms_runtimes["openvino"]
    assert record["fastest_cpu"] == row.fastest_cpu


def test_runtime_folder_is_measured_as_its_pytorch_network(tmp_path):
    """A folder written by `export --runtime` reads as the PyTorch folder it came from (report, export)."""
    pytest.importorskip("openvino")
    from nnunet_prune.tools.export.folder import export_model_folder

    folder, nets = make_model_folder(tmp_path, folds=(0,), pruned_folds=(0,))
    out = tmp_path / "ov"
    export_model_folder(folder, out, runtime="openvino", runtime_options={"threads": 1})
    mf = ModelFolder.open(out)
    assert mf.runtime == ("openvino", {"threads": 1}) and ModelFolder.open(folder).runtime is None
    with pytest.raises(NnUNetPruneError, match="is a fold folder: give the model folder above it"):
        ModelFolder.open(out / "fold_0")
    row, = measure_model_folder(out, **FAST)
    assert row.parameters == count_parameters(nets[0]) and row.macs == count_macs(nets[0], PATCH)


def test_bad_runtime_choice_is_a_clear_error(monkeypatch):
    from nnunet_prune.tools.report.efficiency import check_runtimes

    with pytest.raises(NnUNetPruneError, match="unknown; choose among onnxruntime, openvino"):
        check_runtimes(["tensorrt"])
    with pytest.raises(NnUNetPruneError, match="give it alone"):
        check_runtimes(["none", "openvino"])
    with pytest.raises(NnUNetPruneError, match="compiled' column"):
        check_runtimes(["torch-compile"])
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(NnUNetPruneError, match=r"nnunet-prune\[deploy\]"):
        check_runtimes(["openvino"])
    assert "openvino" not in check_runtimes(None)


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_export_without_the_runtime_package_stops_before_any_work(tmp_path, monkeypatch, capsys, runtime):
    folder, _ = make_model_folder(tmp_path)
    monkeypatch.setitem(sys.modules, runtime, None)  # as if it were not installed
    assert main(["export", str(folder), "-o", str(tmp_path / "out"), "--runtime", runtime]) == 2
    err = capsys.readouterr().err
    assert f"ERROR: The runtime {runtime} needs the Python package {runtime}" in err
    assert 'pip install "nnunet-prune[deploy]"' in err and "Traceback" not in err
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))


def test_export_rejects_options_the_runtime_does_not_take(tmp_path, capsys):
    folder, _ = make_model_folder(tmp_path)
    assert main(["export", str(folder), "-o", str(tmp_path / "out"), "--runtime", "onnxruntime", "--precision",
                 "bf16"]) == 2
    assert "The runtime onnxruntime has no option 'precision'" in capsys.readouterr().err
    assert main(["export", str(folder), "-o", str(tmp_path / "out"), "--threads", "2"]) == 2
    assert "need a --runtime" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------------- per class
def test_every_table_has_a_column_per_class_and_says_which_class_was_not_learned(tmp_path):
    def row(model, fold, dice, per_class):
        return FoldEfficiency(model=model, fold=fold, trainer="t", configuration="2d", patch_size=[32, 32],
                              parameters=10**6, macs=10**9, checkpoint_bytes=10**6, dice=dice,
                              dice_per_class=per_class)

    rows = [row("dense", 0, 0.6035, {"liver": 0.9, "lesion": 0.307}),
            row("pruned", 0, 0.6083, {"liver": 0.9, "lesion": 0.0}),
            row("pruned", 1, None, None)]
    table = format_table(rows)
    header = table.splitlines()[0]
    assert "Dice liver" in header and "Dice lesion" in header
    assert table.splitlines()[3].split()[6:8] == ["0.9000", "0.0000"]  # the terminal shows the missing class too
    md = format_markdown(rows)
    assert "| Dice | Dice liver | Dice lesion |" in md and "| 0.6083 | 0.9000 | 0.0000 |" in md
    assert "pruned fold 0 did not learn 'lesion' (Dice 0.00; dense fold 0 reaches 0.31)" in md
    assert "hides" in md and "dense fold 0 did not learn" not in md
    from nnunet_prune.tools.report.efficiency import class_notes

    everyone = [row("a", 0, 0.45, {"liver": 0.9, "lesion": 0.0}), row("b", 0, 0.45, {"liver": 0.9, "lesion": 0.0})]
    notes = class_notes(everyone)
    assert len(notes) == 1 and "No model learnt 'lesion'" in notes[0]
    written = write_report(rows, tmp_path)
    with open(written["csv"]) as f:
        assert float(list(csv.DictReader(f))[1]["dice_lesion"]) == 0.0


def test_settings_parse_in_order_without_repeats_and_refuse_what_nnunet_cannot_run():
    from nnunet_prune.tools.report.settings import SettingRun, format_settings, parse_settings

    assert parse_settings(["tta:0.5", "notta:0.75", "tta:0.5", "notta:1"]) == [(True, 0.5), (False, 0.75),
                                                                              (False, 1.0)]
    for bad in ("mirror:0.5", "tta", "tta:0", "notta:1.5", "tta:half"):
        with pytest.raises(NnUNetPruneError, match="give tta:STEP"):
            parse_settings([bad])
    runs = [SettingRun("dense", "pytorch", [0], True, 0.5, 3, 12.0, 0.8, {0: 0.8}),
            SettingRun("dense", "openvino int8", [0], False, 0.75, 3, 4.0, 0.75, {0: 0.75})]
    table = format_settings(runs)
    assert table[3] == "| dense | openvino int8 | off | 0.75 | 3 | 4.0 | 1.33 | 3.00x | 0.7500 | -0.0500 |"
