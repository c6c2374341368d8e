"""The class registry, the trainer shim for nnUNet_extTrainer, the start-up hook and the nnU-Net patches."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
import textwrap

import pytest

import _nnunet_prune_hook
import nnunet_prune
from nnunet_prune import NnUNetPruneError
from nnunet_prune.nnunet import names as registry
from nnunet_prune.nnunet.integration.patches import all_subclasses

SHIM = _nnunet_prune_hook.shim_folder()


# ----------------------------------------------------------------------------------------------- registry
def test_trainer_registry_matches_defined_classes():
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    import nnunet_prune.nnunet.trainers as trainers

    defined = {c.__name__: c for c in all_subclasses(nnUNetTrainer)
               if c.__module__.startswith("nnunet_prune.nnunet.trainers")}
    assert set(registry.TRAINERS) == set(defined)
    assert set(trainers.__all__) == set(registry.TRAINERS)
    for name, module in registry.TRAINERS.items():
        cls = registry.load_trainer(name)
        assert cls is defined[name] and cls.__name__ == name and cls.__module__ == module
        assert issubclass(cls, nnUNetTrainer)
        assert getattr(trainers, name) is cls
    assert registry.load_trainer("nnUNetTrainer") is None  # stock classes are nnU-Net's business
    assert registry.load_trainer("nnUNetTrainerSauronn") is None


def test_magnitude_variants_carry_their_tau():
    for tau in registry.MAGNITUDE_TAUS_MILLI:
        for finetune in (False, True):
            cls = registry.load_trainer(registry.magnitude_trainer_name(tau, finetune))
            assert cls.method_defaults["tau"] == pytest.approx(tau / 1000)
            assert cls.start_from_dense and (cls.finetune_epochs > 0) is finetune
    assert registry.magnitude_trainer_name(5) == "nnUNetTrainerMagnitude_tau005"
    assert registry.magnitude_trainer_name(15, True) == "nnUNetTrainerMagnitude_tau015_ft"


def test_planner_registry_matches_defined_classes():
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner

    import nnunet_prune.nnunet.planners as planners

    defined = {c.__name__: c for c in all_subclasses(ExperimentPlanner)
               if c.__module__.startswith("nnunet_prune.nnunet.planners")}
    assert set(registry.PLANNERS) == set(defined)
    assert set(planners.__all__) == set(registry.PLANNERS)
    for name, module in registry.PLANNERS.items():
        cls = registry.load_planner(name)
        assert cls is defined[name] and cls.__name__ == name and cls.__module__ == module
        assert issubclass(cls, ExperimentPlanner)
    assert registry.load_planner("ExperimentPlanner") is None


def test_class_names_follow_nnunet_conventions():
    for name in [*registry.TRAINERS, *registry.PLANNERS]:
        assert "__" not in name, name  # nnU-Net splits model folder names at '__'
        assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name), name
    for name in registry.TRAINERS:
        assert name.startswith("nnUNetTrainer"), name
    for name in registry.PLANNERS:
        assert re.search(r"Planner(_[A-Za-z0-9]+)?$", name), name


# ----------------------------------------------------------------------------------------------- shim
def test_shim_folder_holds_only_the_shim():
    entries = sorted(e for e in os.listdir(SHIM) if e != "__pycache__")
    assert entries == ["nnunet_prune_trainers.py"]
    # The hook points at the nnunet_prune installed next to it. Under `python -m pytest` in a checkout with a
    # regular install, this process may import the checkout's copy instead: both must hold the same shim.
    package = os.path.dirname(SHIM)
    assert os.path.basename(package) == "nnunet_prune" and os.path.isfile(os.path.join(package, "__init__.py"))
    ours = os.path.join(os.path.dirname(nnunet_prune.__file__), "_ext_trainers", "nnunet_prune_trainers.py")
    with open(os.path.join(SHIM, "nnunet_prune_trainers.py")) as a, open(ours) as b:
        assert a.read() == b.read()


def test_shim_import_exposes_every_trainer():
    """Import the shim the way nnU-Net does for nnUNet_extTrainer folders: folder on sys.path, module by name."""
    name = "nnunet_prune_trainers"
    sys.modules.pop(name, None)  # a fresh import, as in a new nnU-Net process
    sys.path.insert(0, SHIM)
    try:
        shim = importlib.import_module(name)
        for trainer in registry.TRAINERS:
            assert getattr(shim, trainer) is registry.load_trainer(trainer), trainer
    finally:
        sys.path.remove(SHIM)
        sys.modules.pop(name, None)


# ----------------------------------------------------------------------------------------------- start-up hook
@pytest.fixture(scope="module")
def empty_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cwd")


def python(code: str, cwd, **env_changes) -> subprocess.CompletedProcess:
    """Run ``python -c code`` in a fresh interpreter of this venv (the .pth runs the hook) with a controlled env,
    from an empty folder (not the repository root: the hook must come from the installed .pth)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("NNUNET_PRUNE_DISABLE_HOOK", "nnUNet_extTrainer", "PYTHONPATH")}
    for k, v in env_changes.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
                          cwd=cwd)


REPORT = textwrap.dedent("""
    import os, sys
    print('_nnunet_prune_hook' in sys.modules)
    print(any(type(f).__name__ == '_NnUNetImportHook' for f in sys.meta_path))
    print(os.environ.get('nnUNet_extTrainer', '<unset>'))
""")


@pytest.mark.parametrize("before", [None, "", "/first/path", "/a" + os.pathsep + "/b", "SHIM_IN_MIDDLE"])
def test_hook_is_active_and_adds_shim_once(empty_dir, before):
    if before == "SHIM_IN_MIDDLE":
        before = os.pathsep.join(["/a", SHIM, "/b"])
    proc = python(REPORT, empty_dir, nnUNet_extTrainer=before)
    assert proc.returncode == 0, proc.stderr
    loaded, hooked, value = proc.stdout.strip().splitlines()
    assert loaded == "True" and hooked == "True"
    parts = value.split(os.pathsep)
    assert parts.count(SHIM) == 1
    kept = [p for p in (before or "").split(os.pathsep) if p]
    if SHIM in kept:
        assert parts == kept  # already there: left exactly as it was
    else:
        assert parts == kept + [SHIM]  # the user's paths first, the shim last
    assert proc.stderr == ""


def test_hook_is_idempotent_in_child_processes(empty_dir):
    """A process started by a hooked process (nnU-Net's workers) inherits the variable and does not add twice."""
    code = ("import os, subprocess, sys; "
            "print(subprocess.run([sys.executable, '-c', \"import os; print(os.environ['nnUNet_extTrainer'])\"], "
            "capture_output=True, text=True).stdout.strip())")
    proc = python(code, empty_dir, nnUNet_extTrainer="/x")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == os.pathsep.join(["/x", SHIM])


@pytest.mark.parametrize("value", ["1", "true", "YES"])
def test_hook_can_be_disabled(empty_dir, value):
    proc = python(REPORT, empty_dir, NNUNET_PRUNE_DISABLE_HOOK=value, nnUNet_extTrainer="/keep")
    assert proc.returncode == 0, proc.stderr
    _, hooked, ext = proc.stdout.strip().splitlines()
    assert hooked == "False"
    assert ext == "/keep"
    proc = python(REPORT, empty_dir, NNUNET_PRUNE_DISABLE_HOOK=value)
    assert proc.stdout.strip().splitlines()[1:] == ["False", "<unset>"]


@pytest.mark.parametrize("module, missing", [
    ("nnunetv2.utilities.find_objects", "recursive_find_trainer_class_by_name"),
    ("nnunetv2.experiment_planning.plan_and_preprocess_api", "recursive_find_python_class"),
])
def test_hook_survives_a_changed_nnunet(empty_dir, tmp_path, module, missing):
    """A future nnU-Net without the function the patch wraps: Python still starts and the module still imports,
    with a one-line warning."""
    parts = module.split(".")
    folder = tmp_path
    for p in parts[:-1]:
        folder = folder / p
        folder.mkdir(exist_ok=True)
        (folder / "__init__.py").write_text("")
    (folder / f"{parts[-1]}.py").write_text("def something_else():\n    return 1\n")
    proc = python(f"import {module} as m; print(m.__file__); print('alive')", empty_dir,
                  PYTHONPATH=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.strip().splitlines()
    assert out[-1] == "alive"
    assert out[0].startswith(str(tmp_path))  # the fake package was the one imported
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("nnunet-prune:") and module in lines[0] and missing in lines[0]


def test_start_up_stays_cheap(empty_dir):
    code = ("import sys; import nnunet_prune.nnunet.names; "
            "print('_nnunet_prune_hook' in sys.modules, 'torch' in sys.modules, 'nnunetv2' in sys.modules)")
    proc = python(code, empty_dir)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "False", "False"]
    proc = python("import sys; print('torch' in sys.modules, 'nnunetv2' in sys.modules)", empty_dir)
    assert proc.stdout.split() == ["False", "False"]


# ----------------------------------------------------------------------------------------------- nnU-Net patches
def test_planner_lookup_finds_ours_and_explains_unknown_names():
    import nnunetv2
    import nnunetv2.experiment_planning.plan_and_preprocess_api as api

    from nnunet_prune.nnunet.planners import LUnetPlanner, LUnetResEncPlanner_16

    assert getattr(api, "_nnunet_prune_patched", False), "the start-up hook did not patch nnU-Net in this process"
    folder = os.path.join(nnunetv2.__path__[0], "experiment_planning")
    lookup = api.recursive_find_python_class
    assert lookup(folder, "LUnetPlanner", current_module="nnunetv2.experiment_planning") is LUnetPlanner
    assert lookup(folder, "LUnetResEncPlanner_16", "nnunetv2.experiment_planning") is LUnetResEncPlanner_16
    stock = lookup(folder, "ExperimentPlanner", current_module="nnunetv2.experiment_planning")
    assert stock.__name__ == "ExperimentPlanner" and stock.__module__.startswith("nnunetv2.")
    with pytest.raises(NnUNetPruneError) as e:
        lookup(folder, "LUnetPlaner", current_module="nnunetv2.experiment_planning")
    message = str(e.value)
    assert "no experiment planner (-pl) named 'LUnetPlaner'" in message
    did_you_mean = next(line for line in message.splitlines() if line.startswith("Did you mean"))
    assert "LUnetPlanner" in did_you_mean
    for name in registry.PLANNERS:
        assert name in message
    assert "ExperimentPlanner" in message and "nnUNetPlannerResEncM" in message  # nnU-Net's own are listed too


def test_trainer_lookup_finds_ours_and_explains_unknown_names(monkeypatch, capsys):
    import nnunetv2.utilities.find_objects as find_objects

    monkeypatch.setenv("nnUNet_extTrainer", SHIM)
    assert getattr(find_objects, "_nnunet_prune_patched", False), "the start-up hook did not patch nnU-Net"
    cls = find_objects.recursive_find_trainer_class_by_name("nnUNetTrainerSauron")
    assert cls is registry.load_trainer("nnUNetTrainerSauron")
    stock = find_objects.recursive_find_trainer_class_by_name("nnUNetTrainer")
    assert stock.__module__.startswith("nnunetv2.")
    with pytest.raises(NnUNetPruneError) as e:
        find_objects.recursive_find_trainer_class_by_name("nnUNetTrainerSauronn")
    message = str(e.value)
    assert "no trainer (-tr) named 'nnUNetTrainerSauronn'" in message
    did_you_mean = next(line for line in message.splitlines() if line.startswith("Did you mean"))
    assert "nnUNetTrainerSauron" in did_you_mean
    for name in registry.TRAINERS:
        assert name in message
    assert "nnUNetTrainer_250epochs" in message or "nnUNetTrainerNoMirroring" in message  # stock ones too
    capsys.readouterr()


def test_patches_are_applied_once():
    import nnunetv2.utilities.find_objects as find_objects

    from nnunet_prune.nnunet.integration.patches import patch_module

    wrapped = find_objects.recursive_find_trainer_class_by_name
    patch_module(find_objects)
    assert find_objects.recursive_find_trainer_class_by_name is wrapped
    assert not hasattr(wrapped._nnunet_prune_original, "_nnunet_prune_original")


def test_unknown_fingerprint_extractor_is_not_called_a_planner():
    import nnunetv2.experiment_planning.plan_and_preprocess_api as api

    with pytest.raises(Exception) as e:
        api.extract_fingerprints([999], "DatasetFingerprintExtractorr", clean=False)
    assert "planner" not in str(e.value).lower()


def test_patches_apply_all_or_none_when_nnunet_changes(monkeypatch, capsys):
    """A group of patches whose one target no longer has the parameters its wrapper relies on is not applied at all
    (one warning line), and doctor's status names the reason."""
    import types

    from nnunet_prune.nnunet.integration import patches

    fake = types.ModuleType("fake_nnunet_module")

    def lookup(folder, class_name):
        return "original"

    def other(trainer_name):
        return "original"

    fake.lookup, fake.other = lookup, other
    monkeypatch.setitem(sys.modules, "fake_nnunet_module", fake)
    group = (patches.Patch("fake_nnunet_module", "other", lambda f: (lambda *a: "wrapped"), ("trainer_name",), "x"),
             patches.Patch("fake_nnunet_module", "lookup", lambda f: (lambda *a: "wrapped"),
                           ("folder", "class_name", "current_module"), "y"))
    monkeypatch.setitem(patches.PATCHES, "fake_nnunet_module", group)
    patches.patch_module(fake)
    assert fake.other is other and fake.lookup is lookup  # none applied, the first one included
    assert "left unpatched" in capsys.readouterr().err
    status = {s["target"]: s["state"] for s in patches.patch_status()}
    assert status["fake_nnunet_module.lookup"] == "signature changed (no parameter current_module)"
    assert status["fake_nnunet_module.other"] == "not patched"
    monkeypatch.setitem(patches.PATCHES, "fake_nnunet_module", group[:1])
    patches.patch_module(fake)
    assert fake.other("t") == "wrapped"
