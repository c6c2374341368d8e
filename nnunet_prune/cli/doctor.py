"""``nnunet-prune doctor``: nnU-Net's paths and environment, this package's classes, and whether nnU-Net sees them."""

from __future__ import annotations

import os
import subprocess
import sys

from nnunet_prune.nnunet.prechecks import gpu_driver_present
from nnunet_prune.nnunet.settings import NNUNET_VARIABLES, all_variables, variable_problems

#: PyTorch's wheel index of CPU-only builds (README: "CPU-only servers")
CPU_WHEEL_INDEX = "https://download.pytorch.org/whl/cpu"

# run in a fresh interpreter, started the way the stock console scripts start
_PROBE = r"""
import json, os, sys
out = {"hook": "_nnunet_prune_hook" in sys.modules,
       "extTrainer": os.environ.get("nnUNet_extTrainer", "")}
from nnunet_prune.nnunet import names as class_names
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
import nnunetv2.experiment_planning.plan_and_preprocess_api as api
import nnunetv2.run.run_training
import io, contextlib
trainers = {}
for name in class_names.TRAINERS:
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            cls = recursive_find_trainer_class_by_name(name)
        trainers[name] = cls.__module__ + "." + cls.__name__
    except Exception as e:
        trainers[name] = "NOT FOUND: " + type(e).__name__
planners = {}
import nnunetv2
from os.path import join
for name in class_names.PLANNERS:
    try:
        cls = api.recursive_find_python_class(join(nnunetv2.__path__[0], "experiment_planning"), name,
                                              current_module="nnunetv2.experiment_planning")
        planners[name] = cls.__module__ + "." + cls.__name__
    except Exception as e:
        planners[name] = "NOT FOUND: " + type(e).__name__
out["trainers"], out["planners"] = trainers, planners
try:
    from nnunet_prune.nnunet.integration.patches import patch_status
    out["patches"] = patch_status()
except Exception as e:
    out["patches"] = [{"target": "?", "purpose": "", "state": "could not check: " + type(e).__name__}]
print("NNUNET_PRUNE_PROBE" + json.dumps(out))
"""


def add_parser(sub) -> None:
    """Register the ``nnunet-prune doctor`` subcommand on ``sub`` (an argparse subparsers object)."""
    p = sub.add_parser("doctor", help="show nnU-Net's set-up and whether the stock commands see this package",
                       description="Print the PyTorch build (CPU-only, CUDA or ROCm), nnU-Net's paths and "
                                   "environment (a misspelt NNUNET_PRUNE_* variable is a problem), the trainers and "
                                   "planners this package provides, and check in a fresh Python process (as the "
                                   "stock console scripts start) that nnU-Net finds each of them.")
    p.set_defaults(func=run)


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def torch_build() -> str:
    """Which PyTorch build is installed: ``CPU-only``, ``CUDA <x.y>`` or ``ROCm <x.y>`` (imports torch)."""
    import torch

    if getattr(torch.version, "hip", None):
        return f"ROCm {torch.version.hip}"
    if torch.version.cuda:
        return f"CUDA {torch.version.cuda}"
    return "CPU-only"


def nvidia_library_bytes() -> int:
    """Bytes of the NVIDIA libraries installed next to PyTorch (the ``nvidia`` package folder a CUDA build pulls in;
    0 without it)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("nvidia")
    except (ImportError, ValueError):
        spec = None
    total = 0
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        for root, _, files in os.walk(location):
            total += sum(os.path.getsize(os.path.join(root, f)) for f in files
                         if not os.path.islink(os.path.join(root, f)))
    return total


def torch_build_lines() -> list[str]:
    """Doctor's lines on the PyTorch build: which one, whether it sees a GPU, and a note when a GPU build sits on a
    machine without a GPU driver (its NVIDIA libraries cost gigabytes a CPU build does not need)."""
    import torch

    build = torch_build()
    sees = torch.cuda.is_available()
    lines = [f"  {'PyTorch build':<30} {build}" + ("" if build == "CPU-only" else
                                                  f" ({'sees a GPU' if sees else 'sees no GPU'})")]
    if build != "CPU-only" and not sees and not gpu_driver_present():
        size = nvidia_library_bytes()
        lines.append(f"  Note: a {build} build of PyTorch on a machine without a GPU: it runs on the CPU, but its GPU "
                     f"libraries" + (f" take {size / 1e9:.1f} GB" if size else " are dead weight") + ". For a CPU-only "
                     f"server install the CPU build first: pip install torch --index-url {CPU_WHEEL_INDEX} "
                     f"(README: CPU-only servers).")
    return lines


def _print_variables() -> list[str]:
    """Print nnU-Net's and this package's variables with their values; returns the problems of the
    ``NNUNET_PRUNE_*`` names that are set (:func:`nnunet_prune.nnunet.settings.variable_problems`)."""
    for title, table in (("nnU-Net's variables", NNUNET_VARIABLES),
                         ("Variables of this package (every one it reads)", all_variables())):
        print(f"\n{title}:")
        for var, what in table.items():
            value = os.environ.get(var)
            print(f"  {var:<30} {value if value is not None else '(not set)'}")
            print(f"  {'':<30}   {what}")
    problems = variable_problems()
    if problems:
        print("  Set but not read (every command and trainer of this package refuses to start with them):")
        for line in problems:
            print(f"  NO  {line}")
    return [f"{line}: rename or unset it" for line in problems]


def _print_cluster() -> None:
    """submitit and Slurm's sbatch, for ``--executor slurm``."""
    import shutil

    print("\nCluster execution (--executor slurm; optional: pip install \"nnunet-prune[slurm]\"):")
    print(f"  {'submitit':<30} {_version('submitit')}")
    print(f"  {'sbatch':<30} {shutil.which('sbatch') or 'not on PATH'}  (Slurm's commands on this machine)")


def run(args) -> int:
    """Print versions, nnU-Net's and this package's environment variables and the start-up hook's state, then check in
    a fresh interpreter that nnU-Net finds every trainer and planner of this package and that every patch applies.

    Returns:
        the exit code: 0 when everything is found and patched, 1 when a problem is listed (an unknown or renamed
        ``NNUNET_PRUNE_*`` variable among them) or the check in a fresh interpreter could not run.
    """
    import json

    from nnunet_prune import __version__

    print(f"nnunet-prune {__version__}  (python {sys.version.split()[0]}, {sys.executable})")
    for dist in ("nnunetv2", "torch", "dynamic-network-architectures", "batchgenerators"):
        print(f"  {dist:<30} {_version(dist)}")
    print("\n".join(torch_build_lines()))
    from nnunet_prune.networks.runtime import RUNTIMES, is_available

    print("\nDeployment runtimes (nnunet-prune export --runtime; optional: pip install \"nnunet-prune[deploy]\"):")
    for name, spec in RUNTIMES.items():
        state = "not installed"
        if is_available(name):  # (onnxruntime-gpu provides the module onnxruntime)
            state = next((v for v in (_version(spec.package), _version(spec.package + "-gpu")) if v != state), "?")
        print(f"  {name:<30} {state}  ({spec.description})")
    int8 = _version("nncf") if is_available("openvino") else "needs openvino"
    print(f"  {'openvino --int8 (NNCF)':<30} {int8}  (INT8 export with a Dice bound; pip install "
          f"\"nnunet-prune[int8]\")")
    _print_cluster()
    problems = _print_variables()
    try:
        import _nnunet_prune_hook as hook
    except ImportError:
        hook = None
    print("\nStart-up hook (nnunet_prune.pth):")
    if hook is None or "_nnunet_prune_hook" not in sys.modules:
        problems.append("the start-up hook is not installed; reinstall the package with pip")
    print(f"  shim folder for nnUNet_extTrainer: {hook.shim_folder() if hook else '?'}")

    env = dict(os.environ)
    result = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, env=env)
    probe = None
    for line in result.stdout.splitlines():
        if line.startswith("NNUNET_PRUNE_PROBE"):
            probe = json.loads(line[len("NNUNET_PRUNE_PROBE"):])
    if probe is None:
        print("  could not run the check in a fresh interpreter:\n" + (result.stderr or result.stdout)[-2000:])
        return 1
    print(f"  active in a fresh interpreter: {'yes' if probe['hook'] else 'NO'}")
    if not probe["hook"]:
        problems.append("a fresh Python process does not run the start-up hook (is NNUNET_PRUNE_DISABLE_HOOK set, "
                        "or was the package installed with --target?)")

    for kind, table in (("Trainers (-tr)", probe["trainers"]), ("Planners (-pl)", probe["planners"])):
        print(f"\n{kind}: found by nnU-Net?")
        for name, where in table.items():
            ok = not where.startswith("NOT FOUND")
            print(f"  {'ok ' if ok else 'NO '} {name:<38} {where}")
            if not ok:
                problems.append(f"nnU-Net does not find {name}")
    print("\nnnU-Net functions this package wraps (all of a module or none; checked against nnU-Net's signatures):")
    for p in probe.get("patches", []):
        ok = p["state"] == "patched"
        print(f"  {'ok ' if ok else 'NO '} {p['target']:<84} {p['state']}")
        if not ok:
            problems.append(f"{p['target']} is not patched ({p['state']}): {p['purpose']} does not work")
    unset = [v for v in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results") if not os.environ.get(v)]
    if unset:
        print(f"Note: {', '.join(unset)} not set; nnU-Net needs them to plan, train and predict "
              f"(see nnU-Net's documentation/setting_up_paths.md).")
    print()
    if problems:
        print("Problems:\n" + "\n".join(f"  - {p}" for p in dict.fromkeys(problems)))
        return 1
    print("All good: the stock nnU-Net commands see every trainer and planner of this package, and every patch of "
          "nnU-Net applies.")
    return 0
