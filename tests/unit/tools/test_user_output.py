"""What commands say to the user (issue 23, items 12 and 13): the structured sweep's closing hint, the PyTorch build
in ``doctor``, third-party noise filtered narrowly, the demo's folder ignored by git."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest

from tests.helpers import REPO

ROOT = REPO


# ------------------------------------------------------------------------------------- the sweep's closing hint
def sweep_report(best, folds=("0",), plans="nnUNetPlans", criterion="l2") -> dict:
    """A structured sweep's report (StructuredSweep.report) reduced to what the hint reads."""
    return {"model": f"/r/Dataset117_LiTS117/nnUNetTrainerBudget__{plans}__2d", "configuration": "2d",
            "folds": list(folds), "largest_fraction_at_threshold": best,
            "settings": {"criterion": criterion, "ratio_of": "params", "distribution": "uniform", "max_ratio": 0.9,
                         "max_ratio_coupled": 0.7, "fractions": [0.3, 0.6]},
            "results": [{"fraction": 0.3}, {"fraction": 0.6}]}


def test_the_hint_names_the_fraction_found_and_the_one_shot_trainer():
    from nnunet_prune.tools.sweep.structured import finetune_hint

    hint = finetune_hint(sweep_report(0.6))
    assert "<fraction>" not in hint
    assert hint.splitlines()[0].startswith("To fine-tune at 0.6 (one-shot: as good as or better than iterative")
    command = hint.splitlines()[1].strip()
    assert command == ("NNUNET_PRUNE_DENSE_MODEL=/r/Dataset117_LiTS117/nnUNetTrainerBudget__nnUNetPlans__2d "
                       "NNUNET_PRUNE_STRUCTURED='pruning_ratio=0.6,ratio_of=params,distribution=uniform,"
                       "max_ratio=0.9,max_ratio_coupled=0.7' nnUNetv2_train Dataset117_LiTS117 2d 0 "
                       "-tr nnUNetTrainerStructuredL2_oneshot")
    assert "nnUNetTrainerStructuredL2_iterative" in hint.splitlines()[2]  # only as the long-budget alternative


def test_the_command_of_the_hint_is_accepted_by_the_trainer():
    """The settings the hint writes are valid for the one-shot trainer it names (parsed as nnUNetv2_train would)."""
    from nnunet_prune.nnunet import trainers
    from nnunet_prune.tools.sweep.structured import finetune_hint

    command = finetune_hint(sweep_report(0.6, criterion="l1")).splitlines()[1]
    value = command.split("NNUNET_PRUNE_STRUCTURED='", 1)[1].split("'", 1)[0]
    trainer = getattr(trainers, command.rsplit("-tr ", 1)[1].split()[0])
    settings = trainer.method_class.settings_class.resolve({}, environ={"NNUNET_PRUNE_STRUCTURED": value},
                                                          fixed=trainer.method_defaults)
    assert settings.pruning_ratio == 0.6 and settings.schedule == "oneshot" and settings.criterion == "l1"


def test_without_a_fraction_at_the_threshold_the_hint_starts_at_the_smallest():
    from nnunet_prune.tools.sweep.structured import finetune_hint

    hint = finetune_hint(sweep_report(None, folds=("0", "1"), plans="nnUNetResEncUNetMPlans", criterion="slimming"))
    assert hint.startswith("Every fraction needs fine-tuning; to start at the smallest, 0.3:")
    assert "pruning_ratio=0.3," in hint and "<fraction>" not in hint
    assert "nnUNetv2_train Dataset117_LiTS117 2d FOLD -tr nnUNetTrainerStructuredSlimming_oneshot " \
           "-p nnUNetResEncUNetMPlans (FOLD: each of 0, 1)" in hint


def test_the_sweep_command_prints_the_hint():
    """cli/sweep.py prints finetune_hint (the structured sweep itself runs in the slow integration tests)."""
    source = (ROOT / "nnunet_prune" / "cli" / "sweep.py").read_text()
    assert "print(finetune_hint(report))" in source and "<fraction>" not in source


# ----------------------------------------------------------------------------------------- doctor: the build
def test_doctor_names_the_pytorch_build(capsys):
    import torch

    from nnunet_prune.cli import doctor

    build = doctor.torch_build()
    expected = (f"ROCm {torch.version.hip}" if getattr(torch.version, "hip", None) else
                f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU-only")
    assert build == expected
    lines = doctor.torch_build_lines()
    assert lines[0].split()[:3] == ["PyTorch", "build", *expected.split()[:1]]
    note = [x for x in lines if x.lstrip().startswith("Note:")]
    gpu_build_without_gpu = build != "CPU-only" and not torch.cuda.is_available() and not doctor.gpu_driver_present()
    assert bool(note) == gpu_build_without_gpu
    if note:  # this machine: a CUDA build without a GPU, as the CPU server
        assert f"a {build} build of PyTorch on a machine without a GPU" in note[0]
        assert "pip install torch --index-url https://download.pytorch.org/whl/cpu" in note[0]
        size = doctor.nvidia_library_bytes()
        assert (f"take {size / 1e9:.1f} GB" in note[0]) == (size > 0)


def test_the_readme_shows_the_cpu_only_install():
    readme = (ROOT / "README.md").read_text()
    first = readme.index("pip install torch --index-url https://download.pytorch.org/whl/cpu")
    assert first < readme.index('pip install ".[test]"', first)  # PyTorch's CPU build first, then the package


# ---------------------------------------------------------------------------------- noise that is not the user's
def test_timms_jit_interface_warning_is_filtered_and_nothing_else():
    from nnunet_prune.tools.quiet import filter_warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        filter_warnings()
        for module, message in (("torch.jit._script", "`torch.jit.interface` is deprecated. Please use "
                                                      "`torch.compile` instead."),
                                ("mine", "`torch.jit.interface` is deprecated. Please use `torch.compile` instead."),
                                ("torch.jit._script", "`torch.jit.script` is deprecated.")):
            warnings.warn_explicit(message, FutureWarning, "x.py", 1, module=module)
    assert [(str(w.message)[:22], w.filename) for w in caught] == [("`torch.jit.interface` ", "x.py"),
                                                                  ("`torch.jit.script` is ", "x.py")]


class _Interface:
    """A class torch.jit.interface can take (it reads the source)."""

    def run(self, x: int) -> int:
        pass


def jit_interface_warnings(quiet: bool) -> list[str]:
    """The warnings of decorating a class with torch.jit.interface (what importing timm does), with or without the
    CLI's filter."""
    import torch

    from nnunet_prune.tools.quiet import filter_warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if quiet:
            filter_warnings()
        torch.jit.interface(_Interface)
    return [str(w.message) for w in caught if "torch.jit.interface" in str(w.message)]


def test_commands_and_their_subprocesses_do_not_show_the_jit_warning():
    """The real warning of this PyTorch is filtered by the CLI's filter, and in a subprocess started with
    quiet_environment (how the demo and the benchmark start stock commands, which import timm)."""
    if not jit_interface_warnings(quiet=False):
        pytest.skip("this PyTorch does not warn about torch.jit.interface")
    assert jit_interface_warnings(quiet=True) == []
    from nnunet_prune.tools.quiet import quiet_environment

    env = quiet_environment({**os.environ, "PYTHONWARNINGS": "default::DeprecationWarning"})
    assert env["PYTHONWARNINGS"].startswith("default::DeprecationWarning,ignore:")  # the user's entries kept first
    quiet = subprocess.run([sys.executable, "-c", "import timm.models"], capture_output=True, text=True, timeout=300,
                           env=env)
    assert quiet.returncode == 0 and "torch.jit.interface" not in quiet.stderr, quiet.stderr


def test_nnunets_banners_are_left_out_of_the_demo_stream():
    from nnunet_prune.tools.quiet import is_banner_line

    rule = "#" * 71
    banner = [rule, "INFO: You are using the old nnU-Net default plans. We have updated our recommendations. Please "
              "consider using those instead! Read more here: https://github.com/MIC-DKFZ/nnUNet/blob/master/"
              "documentation/resenc_presets.md", rule, "", rule, "Please cite the following paper when using nnU-Net:",
              "Isensee, F., Jaeger, P. F., Kohl, S. A., Petersen, J., & Maier-Hein, K. H. (2021). nnU-Net: a "
              "self-configuring method for deep learning-based biomedical image segmentation. Nature methods, 18(2), "
              "203-211.", rule]
    assert [x for x in banner if x and not is_banner_line(x)] == []
    for line in ("2025-01-01 12:00:00: Epoch 3", "Using trainer nnUNetTrainerBudget", "INFO: something else"):
        assert not is_banner_line(line)


def test_the_demo_folder_is_ignored_by_git():
    proc = subprocess.run(["git", "check-ignore", "-q", "nnunet_prune_demo/nnUNet_raw/x.nii.gz"], cwd=ROOT)
    assert proc.returncode == 0
