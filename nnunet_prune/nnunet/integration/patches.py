"""Adjustments applied to nnU-Net modules right after nnU-Net imports them (see ``_nnunet_prune_hook``).

* ``plan_and_preprocess_api``: the planner lookup (``-pl``) also finds this package's planners, an unknown name
  gets an error listing what exists, and preprocessing is skipped for LUnet configurations whose data the default
  plans already hold (:mod:`nnunet_prune.nnunet.planners.reuse`).
* ``find_objects``: an unknown trainer name (``-tr``) gets an error listing what exists. Finding this package's
  trainers needs no patch: nnU-Net's own ``nnUNet_extTrainer`` search path does that.
* ``run_training``: ``nnUNetv2_train`` with an unknown dataset (one line listing the datasets that exist), plans
  (``-p``) that were never planned, or a configuration (``-c``) the plans do not define, gets an error naming the
  planner command to run and the plans that exist, instead of a traceback from inside nnU-Net (any trainer, stock
  ones included).
* ``predict_from_raw_data``: before ``nnUNetPredictor`` reads a model folder, a checkpoint (``-chk``) a fold lacks
  is one line naming the checkpoints the folds have, and ``-device cuda`` without a GPU one line naming
  ``-device cpu`` (for runtime folders: where the runtime runs), instead of tracebacks after start-up
  (:mod:`nnunet_prune.nnunet.integration.prediction`; any model folder, stock ones included).
* the default experiment planner's thread count: ``nnUNet_n_proc_DA=0`` (data augmentation in the main process,
  the usual CPU setting) no longer crashes planning (``torch.set_num_threads(0)``); one thread is used instead.

Nothing here is written to disk and nnU-Net's behaviour for its own classes is unchanged.
"""

from __future__ import annotations

import contextvars
import difflib
import functools
import inspect
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass

from nnunet_prune import NnUNetPruneError, install_excepthook  # noqa: F401 (re-exported)
from nnunet_prune.nnunet import names as class_names

PLAN_API = "nnunetv2.experiment_planning.plan_and_preprocess_api"
FIND_OBJECTS = "nnunetv2.utilities.find_objects"
RUN_TRAINING = "nnunetv2.run.run_training"
DEFAULT_PLANNER = "nnunetv2.experiment_planning.experiment_planners.default_experiment_planner"
PREDICT = "nnunetv2.inference.predict_from_raw_data"


@dataclass(frozen=True)
class Patch:
    """One nnU-Net function this package wraps: where it lives, the wrapper factory, the parameters the wrapper
    relies on (checked before anything is patched), and why."""

    module: str
    function: str
    wrap: Callable
    needs: tuple[str, ...]
    purpose: str

    @property
    def target(self) -> str:
        """Dotted name of the wrapped function (``module.function``)."""
        return f"{self.module}.{self.function}"


def _wrap_preprocess(original):
    from nnunet_prune.nnunet.planners.reuse import wrap_preprocess_dataset

    return wrap_preprocess_dataset(original)


#: trigger module (the nnU-Net module whose import applies the group) -> its patches, applied all or none
PATCHES: dict[str, tuple[Patch, ...]] = {}


def _original(function):
    return getattr(function, "_nnunet_prune_original", function)


def _owner(patch: Patch):
    """(object holding the function, attribute name): the module, or the class of a ``Class.method`` patch (None
    where the module or class is missing)."""
    owner = sys.modules.get(patch.module)
    *path, name = patch.function.split(".")
    for part in path:
        owner = getattr(owner, part, None)
    return owner, name


def check_patch(patch: Patch) -> str | None:
    """None if ``patch`` can be applied now (module imported, function present, the parameters it relies on
    present), else why not."""
    if sys.modules.get(patch.module) is None:
        return "module not imported"
    owner, name = _owner(patch)
    function = getattr(owner, name, None)
    if not callable(function):
        return "function not found"
    try:
        parameters = inspect.signature(_original(function)).parameters
    except (TypeError, ValueError):
        return "signature unreadable"
    missing = [n for n in patch.needs if n not in parameters]
    return f"signature changed (no parameter {', '.join(missing)})" if missing else None


def patch_module(module) -> None:
    """Apply the patches belonging to ``module`` (an nnU-Net module that was just executed): every one of them, or
    none if any target is missing or its signature no longer has the parameters the wrapper relies on (then a
    one-line warning, and nnU-Net runs unpatched)."""
    group = PATCHES.get(module.__name__)
    if group is None or getattr(module, "_nnunet_prune_patched", False):
        return
    problems = [f"{p.target}: {why}" for p in group if (why := check_patch(p)) is not None]
    if problems:
        sys.stderr.write(f"nnunet-prune: nnU-Net changed, {module.__name__} is left unpatched "
                         f"({'; '.join(problems)}); run `nnunet-prune doctor`.\n")
        return
    for p in group:
        owner, name = _owner(p)
        setattr(owner, name, p.wrap(_original(getattr(owner, name))))
    module._nnunet_prune_patched = True
    install_excepthook()


def patch_status() -> list[dict]:
    """For ``nnunet-prune doctor``: every patch with its target, purpose and state ("patched", "module not imported",
    "signature changed (...)", ...)."""
    out = []
    for trigger, group in PATCHES.items():
        applied = getattr(sys.modules.get(trigger), "_nnunet_prune_patched", False)
        for p in group:
            why = check_patch(p)
            state = "patched" if applied and why is None else why or "not patched"
            out.append({"target": p.target, "purpose": p.purpose, "state": state})
    return out


#: what the class lookup of plan_and_preprocess_api is looking for right now (it serves -pl and -fpe alike;
#: direct calls, e.g. from `nnunet-prune doctor`, are planner lookups)
_LOOKING_FOR: contextvars.ContextVar[str | None] = contextvars.ContextVar("nnunet_prune_looking_for",
                                                                     default="planner")


def _looking_up(kind: str, function):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        token = _LOOKING_FOR.set(kind)
        try:
            return function(*args, **kwargs)
        finally:
            _LOOKING_FOR.reset(token)

    wrapper._nnunet_prune_original = function
    return wrapper


def _planner_lookup(original):
    @functools.wraps(original)
    def lookup(folder, class_name, current_module, *args, **kwargs):
        found = original(folder, class_name, current_module, *args, **kwargs)
        kind = _LOOKING_FOR.get()
        if found is not None or current_module != "nnunetv2.experiment_planning":
            return found
        if kind == "planner":
            ours = class_names.load_planner(class_name)
            if ours is not None:
                return ours
            raise NnUNetPruneError(unknown_name_message("experiment planner (-pl)", class_name,
                                                        available_planners()))
        raise NnUNetPruneError(unknown_name_message(f"{kind} (-fpe)", class_name, available_extractors()))

    lookup._nnunet_prune_original = original
    return lookup


def _trainer_lookup(original):
    @functools.wraps(original)
    def lookup(trainer_name: str):
        try:
            return original(trainer_name)
        except RuntimeError as e:
            if "Could not find requested nnunet trainer" not in str(e):
                raise
            raise NnUNetPruneError(unknown_name_message("trainer (-tr)", trainer_name, available_trainers())) from None

    lookup._nnunet_prune_original = original
    return lookup


def _at_least_one(original):
    """nnU-Net's planner sets torch's thread count to the number of data-augmentation processes, which fails with
    nnUNet_n_proc_DA=0 (the usual CPU setting); planning then uses one thread instead of crashing."""
    @functools.wraps(original)
    def get_allowed_n_proc_DA():
        return max(1, original())

    get_allowed_n_proc_DA._nnunet_prune_original = original
    return get_allowed_n_proc_DA


def _plans_check(original):
    signature = inspect.signature(original)

    @functools.wraps(original)
    def get_trainer_from_args(*args, **kwargs):
        try:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            arguments = bound.arguments
            dataset, plans = arguments["dataset_name_or_id"], arguments["plans_identifier"]
            configuration = arguments["configuration"]
        except (TypeError, KeyError):  # another nnU-Net version: leave its checks alone
            return original(*args, **kwargs)
        check_plans(str(dataset), plans, configuration)
        return original(*args, **kwargs)

    get_trainer_from_args._nnunet_prune_original = original
    return get_trainer_from_args


def _prediction_check(original):
    """Before the predictor reads a model folder: the checkpoint every fold needs and a usable device
    (:func:`nnunet_prune.nnunet.integration.prediction.check_prediction`)."""
    signature = inspect.signature(original)

    @functools.wraps(original)
    def initialize_from_trained_model_folder(self, *args, **kwargs):
        from nnunet_prune.nnunet.integration.prediction import check_prediction

        try:
            bound = signature.bind(self, *args, **kwargs)
            bound.apply_defaults()
            arguments = bound.arguments
            folder, folds = arguments["model_training_output_dir"], arguments["use_folds"]
            checkpoint = arguments["checkpoint_name"]
        except (TypeError, KeyError):  # another nnU-Net version: leave its checks alone
            return original(self, *args, **kwargs)
        check_prediction(folder, folds, checkpoint, getattr(self, "device", "cpu"))
        return original(self, *args, **kwargs)

    initialize_from_trained_model_folder._nnunet_prune_original = original
    return initialize_from_trained_model_folder


PATCHES.update({
    PLAN_API: (
        Patch(PLAN_API, "recursive_find_python_class", _planner_lookup,
              ("folder", "class_name", "current_module"), "-pl finds this package's planners; unknown names listed"),
        Patch(PLAN_API, "plan_experiments", lambda f: _looking_up("planner", f), ("dataset_ids",),
              "tells the lookup it is looking for a planner"),
        Patch(PLAN_API, "extract_fingerprints", lambda f: _looking_up("fingerprint extractor", f), ("dataset_ids",),
              "tells the lookup it is looking for a fingerprint extractor"),
        Patch(PLAN_API, "preprocess_dataset", _wrap_preprocess, ("dataset_id", "plans_identifier", "configurations"),
              "LUnet plans reuse the default plans' preprocessed data"),
        Patch(DEFAULT_PLANNER, "get_allowed_n_proc_DA", _at_least_one, (),
              "nnUNet_n_proc_DA=0 no longer crashes planning"),
    ),
    FIND_OBJECTS: (
        Patch(FIND_OBJECTS, "recursive_find_trainer_class_by_name", _trainer_lookup, ("trainer_name",),
              "an unknown -tr lists the trainers that exist"),
    ),
    RUN_TRAINING: (
        Patch(RUN_TRAINING, "get_trainer_from_args", _plans_check,
              ("dataset_name_or_id", "configuration", "plans_identifier"),
              "nnUNetv2_train with unplanned plans names the planner command"),
    ),
    PREDICT: (
        Patch(PREDICT, "nnUNetPredictor.initialize_from_trained_model_folder", _prediction_check,
              ("model_training_output_dir", "use_folds", "checkpoint_name"),
              "nnUNetv2_predict: a checkpoint a fold lacks, or -device cuda without a GPU, is one line before any "
              "work"),
    ),
})


def planner_command(dataset: str, plans: str) -> str:
    """The nnU-Net command that writes plans ``plans`` for ``dataset``."""
    commands = {"nnUNetPlans": "", "nnUNetResEncUNetMPlans": "nnUNetPlannerResEncM",
                "nnUNetResEncUNetLPlans": "nnUNetPlannerResEncL", "nnUNetResEncUNetXLPlans": "nnUNetPlannerResEncXL"}
    for name in class_names.PLANNERS:
        planner = class_names.load_planner(name)
        commands.setdefault(getattr(planner, "default_plans_name", ""), name)
    base = f"nnUNetv2_plan_and_preprocess -d {dataset}"
    if plans not in commands:
        return f"{base} -pl PLANNER (the planner that writes {plans}.json)"
    return base + (f" -pl {commands[plans]}" if commands[plans] else "") + \
        (" (the default planner, needed first: the other planners reuse its preprocessed data)"
         if plans == "nnUNetPlans" else "")


def check_plans(dataset: str, plans: str, configuration: str) -> None:
    """Before nnU-Net builds a trainer: the dataset exists, the plans file exists and defines the configuration.

    Raises:
        NnUNetPruneError: an unknown dataset (listing those that exist), or naming the planner command to run and the
            plans / configurations that exist.
    """
    import json
    import os

    from nnunet_prune.nnunet.prechecks import resolve_dataset

    if not os.environ.get("nnUNet_preprocessed"):
        return  # nnU-Net explains this itself
    name = resolve_dataset(dataset)  # an unknown ID or name: one line listing the datasets that exist
    folder = os.path.join(os.environ["nnUNet_preprocessed"], name)
    file = os.path.join(folder, f"{plans}.json")
    if not os.path.isfile(file):
        other_json = ("dataset.json", "dataset_fingerprint.json", "splits_final.json")
        present = sorted(f[:-5] for f in os.listdir(folder) if f.endswith(".json") and f not in other_json) \
            if os.path.isdir(folder) else []
        raise NnUNetPruneError(
            f"No plans '{plans}' for {name}: {file} does not exist. Plan the dataset first:\n  "
            f"{planner_command(dataset, plans)}\n"
            + (f"Plans that exist for {name}: {', '.join(present)} (choose one with -p)." if present else
               f"Nothing was planned for {name} yet."))
    try:
        with open(file) as f:
            defined = list(json.load(f).get("configurations", {}))
    except (OSError, ValueError):
        return
    if configuration not in defined:
        raise NnUNetPruneError(f"The plans '{plans}' of {name} define no configuration '{configuration}' (they define "
                               f"{', '.join(defined)}). Choose one of those with -c, or plan it: "
                               f"{planner_command(dataset, plans)} -c {configuration}.")


def all_subclasses(cls) -> set[type]:
    """Every subclass of ``cls``, at any depth."""
    out, todo = set(), [cls]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub not in out:
                out.add(sub)
                todo.append(sub)
    return out


def available_trainers() -> dict[str, list[str]]:
    """Trainer names by origin: nnU-Net's own (all its modules are imported by a failed search) and ours."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    stock = sorted({c.__name__ for c in all_subclasses(nnUNetTrainer) | {nnUNetTrainer}
                    if c.__module__.startswith("nnunetv2.")})
    return {"nnunet-prune": sorted(class_names.TRAINERS), "nnU-Net": stock}


def available_planners() -> dict[str, list[str]]:
    """Planner names by origin: nnU-Net's own (``ExperimentPlanner`` and its imported subclasses from nnunetv2) and
    ours."""
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner

    stock = sorted({c.__name__ for c in all_subclasses(ExperimentPlanner) | {ExperimentPlanner}
                    if c.__module__.startswith("nnunetv2.")})
    return {"nnunet-prune": sorted(class_names.PLANNERS), "nnU-Net": stock}


def available_extractors() -> dict[str, list[str]]:
    """Fingerprint extractor names: ``DatasetFingerprintExtractor`` and every imported subclass, all listed under
    nnU-Net."""
    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor

    return {"nnU-Net": sorted({c.__name__ for c in all_subclasses(DatasetFingerprintExtractor)
                               | {DatasetFingerprintExtractor}})}


def unknown_name_message(kind: str, name: str, available: dict[str, list[str]]) -> str:
    """The error message for an unknown ``kind`` (e.g. "trainer") called ``name``: close matches, then every name in
    ``available`` (origin -> names, as :func:`available_trainers` returns them) and a hint."""
    everything = [n for names in available.values() for n in names]
    close = difflib.get_close_matches(name, everything, n=5, cutoff=0.6)
    lines = [f"There is no {kind} named '{name}'."]
    if close:
        lines.append(f"Did you mean: {', '.join(close)}?")
    for origin, names in available.items():
        lines.append(f"Available from {origin} ({len(names)}):")
        lines.append(textwrap.fill(", ".join(names), width=110, initial_indent="  ", subsequent_indent="  "))
    lines.append("Check the spelling (names are case-sensitive); `nnunet-prune doctor` shows whether nnU-Net sees "
                 "this package's classes.")
    return "\n".join(lines)
