"""``nnunet-prune doctor``: nnU-Net's paths and environment, this package's classes, and whether nnU-Net sees them."""

from __future__ import annotations

import os
import subprocess
import sys

from nnunet_prune.variables import NNUNET_VARIABLES, all_variables

# run in a fresh interpreter, started the way the stock console scripts start
_PROBE = r"""
import json, os, sys
out = {"hook": "_nnunet_prune_hook" in sys.modules,
       "extTrainer": os.environ.get("nnUNet_extTrainer", "")}
from nnunet_prune import registry
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
import nnunetv2.experiment_planning.plan_and_preprocess_api as api
import nnunetv2.run.run_training
import io, contextlib
trainers = {}
for name in registry.TRAINERS:
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            cls = recursive_find_trainer_class_by_name(name)
        trainers[name] = cls.__module__ + "." + cls.__name__
    except Exception as e:
        trainers[name] = "NOT FOUND: " + type(e).__name__
planners = {}
import nnunetv2
from os.path import join
for name in registry.PLANNERS:
    try:
        cls = api.recursive_find_python_class(join(nnunetv2.__path__[0], "experiment_planning"), name,
                                              current_module="nnunetv2.experiment_planning")
        planners[name] = cls.__module__ + "." + cls.__name__
    except Exception as e:
        planners[name] = "NOT FOUND: " + type(e).__name__
out["trainers"], out["planners"] = trainers, planners
try:
    from nnunet_prune.integration.patches import patch_status
    out["patches"] = patch_status()
except Exception as e:
    out["patches"] = [{"target": "?", "purpose": "", "state": "could not check: " + type(e).__name__}]
print("NNUNET_PRUNE_PROBE" + json.dumps(out))
"""


def add_parser(sub) -> None:
    """Register the ``nnunet-prune doctor`` subcommand on ``sub`` (an argparse subparsers object)."""
    p = sub.add_parser("doctor", help="show nnU-Net's set-up and whether the stock commands see this package",
                       description="Print nnU-Net's paths and environment, the trainers and planners this package "
                                   "provides, and check in a fresh Python process (as the stock console scripts "
                                   "start) that nnU-Net finds each of them.")
    p.set_defaults(func=run)


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def run(args) -> int:
    """Print versions, nnU-Net's and this package's environment variables and the start-up hook's state, then check in
    a fresh interpreter that nnU-Net finds every trainer and planner of this package and that every patch applies.

    Returns:
        the exit code: 0 when everything is found and patched, 1 when a problem is listed or the check in a fresh
        interpreter could not run.
    """
    import json

    from nnunet_prune import __version__

    print(f"nnunet-prune {__version__}  (python {sys.version.split()[0]}, {sys.executable})")
    for dist in ("nnunetv2", "torch", "dynamic-network-architectures", "batchgenerators"):
        print(f"  {dist:<30} {_version(dist)}")
    from nnunet_prune.runtimes import RUNTIMES, is_available

    print("\nDeployment runtimes (nnunet-prune export --runtime; optional: pip install \"nnunet-prune[deploy]\"):")
    for name, spec in RUNTIMES.items():
        state = "not installed"
        if is_available(name):  # (onnxruntime-gpu provides the module onnxruntime)
            state = next((v for v in (_version(spec.package), _version(spec.package + "-gpu")) if v != state), "?")
        print(f"  {name:<30} {state}  ({spec.description})")
    for title, table in (("nnU-Net's variables", NNUNET_VARIABLES),
                         ("Variables of this package (every one it reads)", all_variables())):
        print(f"\n{title}:")
        for var, what in table.items():
            value = os.environ.get(var)
            print(f"  {var:<30} {value if value is not None else '(not set)'}")
            print(f"  {'':<30}   {what}")

    problems = []
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
