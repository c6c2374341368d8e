"""Start-up hook of nnunet-prune, imported by ``nnunet_prune.pth`` when Python starts.

It does two cheap things so that the stock nnU-Net commands find this package's classes with no extra step:

1. appends this package's trainer shim folder to ``nnUNet_extTrainer``, nnU-Net's own search path for trainers
   (inherited by every process nnU-Net spawns);
2. registers an import hook that acts only when nnU-Net itself imports its planner API, its trainer lookup, its
   training entry point or its predictor, and then lets those find this package's planners, list what exists when a
   name is unknown, name the planner to run when ``nnUNetv2_train -p`` names plans that do not exist, and stop
   ``nnUNetv2_predict`` with one line for a checkpoint a fold lacks or ``-device cuda`` without a GPU.

It imports neither torch nor nnU-Net and never raises: a broken hook must not break Python start-up. Set
``NNUNET_PRUNE_DISABLE_HOOK=1`` to switch it off.
"""

import os
import sys

_TARGETS = frozenset({
    "nnunetv2.experiment_planning.plan_and_preprocess_api",
    "nnunetv2.utilities.find_objects",
    "nnunetv2.run.run_training",
    "nnunetv2.inference.predict_from_raw_data",
})


def shim_folder():
    """The folder that holds only the trainer shim module (what nnUNet_extTrainer must point at)."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "nnunet_prune", "_ext_trainers")


def _add_trainer_search_path():
    shim = shim_folder()
    if not os.path.isdir(shim):
        return
    current = os.environ.get("nnUNet_extTrainer")
    parts = [p for p in current.split(os.pathsep) if p] if current else []
    if shim not in parts:
        os.environ["nnUNet_extTrainer"] = os.pathsep.join(parts + [shim])


class _PatchingLoader:
    """Runs the wrapped loader, then lets nnunet_prune adjust the freshly executed nnU-Net module."""

    def __init__(self, loader):
        self._loader = loader

    def __getattr__(self, name):
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        try:
            from nnunet_prune.nnunet.integration.patches import patch_module

            patch_module(module)
        except Exception as e:  # never break nnU-Net because of us
            sys.stderr.write(f"nnunet-prune: could not hook into {module.__name__} ({type(e).__name__}: {e}). "
                             f"This package's planners may not be found; run `nnunet-prune doctor`.\n")


class _NnUNetImportHook:
    """A meta path finder that only reacts to the nnU-Net modules named in _TARGETS."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in _TARGETS:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _PatchingLoader(spec.loader)
        return spec


def install():
    """Install the hook (idempotent)."""
    from nnunet_prune.core.flags import parse_flag

    if parse_flag(os.environ.get("NNUNET_PRUNE_DISABLE_HOOK")):
        return
    _add_trainer_search_path()
    if not any(isinstance(f, _NnUNetImportHook) for f in sys.meta_path):
        sys.meta_path.insert(0, _NnUNetImportHook())


try:
    install()
except Exception:  # pragma: no cover - defensive: start-up must survive anything
    pass
