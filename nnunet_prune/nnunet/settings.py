"""Every environment variable this package reads, in one table (``nnunet-prune doctor`` prints them all).

Configuration goes nnU-Net's way first (a trainer variant class sets attributes, or a plans entry
``plans['nnunet_prune'][<method>]``); a variable per method is for experiments. Only the glue (trainers, planners,
tools) reads these; surgery, criteria and methods never read the environment (``tests/contract/test_layers.py``).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping

from nnunet_prune import NnUNetPruneError
from nnunet_prune.core.flags import parse_flag

#: name -> what it does, for the variables that belong to no method (each method's one variable comes from its
#: settings class: :func:`method_variables`); the documentation and `doctor` print them
PACKAGE_VARIABLES: dict[str, str] = {
    "NNUNET_PRUNE_DENSE_MODEL": "model folder a dense start reads fold_F/checkpoint_final.pth from (default: the "
                                "stock nnUNetTrainer folder, else nnUNetTrainerBudget; the slimming trainers look "
                                "for nnUNetTrainerSlimmingSparsity first)",
    "NNUNET_PRUNE_DISTILL": "distillation for every trainer of this package: 1 / 0, or key=value,... (keys: enabled, "
                            "weight, temperature, folds), e.g. 'weight=0.3,temperature=3,folds=0+1+2+3+4'; "
                            "docs/distillation.md",
    "NNUNET_PRUNE_TEACHER": "model folder of the distillation teacher (default: NNUNET_PRUNE_DENSE_MODEL, else the "
                            "stock nnUNetTrainer / nnUNetTrainerBudget folder of the student's plans, then of "
                            "nnUNetPlans)",
    "NNUNET_PRUNE_EPOCHS": "number of epochs of every trainer of this package (a short budget)",
    "NNUNET_PRUNE_ITERS_PER_EPOCH": "training iterations per epoch",
    "NNUNET_PRUNE_VAL_ITERS": "validation iterations per epoch",
    "NNUNET_PRUNE_SAVE_EVERY": "checkpoint_latest.pth every this many epochs (nnU-Net: 50), for --c in short runs",
    "NNUNET_PRUNE_SEED": "seed of every trainer of this package (a whole number; default: the trainer class's `seed`, "
                         "else unseeded as nnU-Net); recorded in pruning_config.json; with nnUNet_n_proc_DA=0 "
                         "two CPU runs with one seed are identical",
    "NNUNET_PRUNE_NO_REUSE": "1: LUnet planners preprocess again instead of reusing the default plans' data",
    "NNUNET_PRUNE_CACHE": "download cache of `nnunet-prune dataset lits117` (default ~/.cache/nnunet-prune)",
    "NNUNET_PRUNE_TRACEBACK": "1: the command line prints the full traceback of an error",
    "NNUNET_PRUNE_DISABLE_HOOK": "1: the start-up hook does nothing (nnU-Net no longer finds this package's classes)",
    "NNUNET_PRUNE_CI_VENV": "virtual environment folder of the repository's test script .ci/run (default .venv-ci)",
}

#: each method's one variable, named here too so that :func:`check_variables` needs no import of the trainers (torch,
#: nnU-Net); ``tests/unit/nnunet/test_variables.py`` checks it against :func:`method_variables`, which derives them
METHOD_VARIABLE_NAMES: tuple[str, ...] = (
    "NNUNET_PRUNE_MAGNITUDE", "NNUNET_PRUNE_PSPSEG", "NNUNET_PRUNE_SAURON", "NNUNET_PRUNE_SLIMMING",
    "NNUNET_PRUNE_STAMP", "NNUNET_PRUNE_STRUCTURED",
)

#: variables of earlier versions, and what replaced them (setting one stops every entry point with this advice)
RENAMED_VARIABLES: dict[str, str] = {
    "NNUNET_PRUNE_MAGNITUDE_TAU": "NNUNET_PRUNE_MAGNITUDE='tau=<value>'",
    "NNUNET_PRUNE_MAGNITUDE_BIAS": "NNUNET_PRUNE_MAGNITUDE='tau=<value>,prune_bias=1'",
}

#: every variable of this package starts with this (compared case-insensitively: a lower-case spelling is refused too)
PREFIX = "NNUNET_PRUNE_"

#: nnU-Net's own variables this package reads or sets
NNUNET_VARIABLES: dict[str, str] = {
    "nnUNet_raw": "nnU-Net's raw data folder",
    "nnUNet_preprocessed": "nnU-Net's preprocessed data folder",
    "nnUNet_results": "nnU-Net's trained models folder",
    "nnUNet_extTrainer": "nnU-Net's extra trainer search path (the start-up hook appends this package's)",
    "nnUNet_compile": "nnU-Net's torch.compile switch",
    "nnUNet_n_proc_DA": "nnU-Net's data-augmentation processes (0 on a CPU)",
    "nnUNet_def_n_proc": "nnU-Net's default number of processes",
}


def flag(name: str, environ: Mapping[str, str] | None = None) -> bool:
    """An on/off variable of this package (``NNUNET_PRUNE_NO_REUSE``, ``NNUNET_PRUNE_TRACEBACK``, ...): true for the
    words of :data:`nnunet_prune.core.flags.TRUE_WORDS` (1, true, yes, on, ...), false when unset or anything else.
    The one reader of such switches (the start-up hook parses ``NNUNET_PRUNE_DISABLE_HOOK`` with the same words)."""
    return bool(parse_flag((os.environ if environ is None else environ).get(name)))


def nnunet_folders() -> dict[str, str | None]:
    """nnU-Net's three folders as nnU-Net itself reads them (``nnunetv2.paths``): ``nnUNet_raw``,
    ``nnUNet_preprocessed`` and ``nnUNet_results`` -> the path, or None where it is not set (or empty). The one place
    the tools read them (:mod:`nnunet_prune.nnunet.prechecks`, which must not import nnU-Net, reads the environment
    itself)."""
    from nnunetv2 import paths

    out = {}
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        value = getattr(paths, name, None)
        out[name] = (str(value) or None) if value else None
    return out


def method_variables() -> dict[str, str]:
    """Each method's one variable (``MethodSettings.ENV_VAR``), found through the method classes of this package's
    trainers, with an example value: a new method's variable is listed without an edit here."""
    from nnunet_prune.nnunet import trainers

    out = {}
    for name in trainers.__all__:
        method = getattr(getattr(trainers, name), "method_class", None)
        settings = getattr(method, "settings_class", None)
        if settings is not None and settings.ENV_VAR:
            out[settings.ENV_VAR] = (f"{settings.NAME}'s settings (key=value,...; keys: {', '.join(settings.keys())}), "
                                     f"e.g. '{settings.EXAMPLE}'")
    return dict(sorted(out.items()))


def all_variables() -> dict[str, str]:
    """Every variable of this package: the methods' and the others (imports the trainers, hence nnU-Net)."""
    return {**method_variables(), **PACKAGE_VARIABLES}


def _offending(environ: Mapping[str, str] | None) -> tuple[list[str], list[str]]:
    """(one line per variable of an earlier version, one line per unknown name) among ``NNUNET_PRUNE_*``."""
    environ = os.environ if environ is None else environ
    known = {*PACKAGE_VARIABLES, *METHOD_VARIABLE_NAMES}
    renamed, unknown = [], []
    for name in sorted(n for n in environ if n.upper().startswith(PREFIX) and n not in known):
        if name in RENAMED_VARIABLES:
            renamed.append(f"{name} is no longer read: set {RENAMED_VARIABLES[name]}")
            continue
        close = difflib.get_close_matches(name.upper(), known, n=1, cutoff=0.6)
        unknown.append(f"{name} is not a variable of this package" + (f" (did you mean {close[0]}?)" if close else ""))
    return renamed, unknown


def variable_problems(environ: Mapping[str, str] | None = None) -> list[str]:
    """What is wrong with the ``NNUNET_PRUNE_*`` variables of ``environ`` (default ``os.environ``; names compared
    case-insensitively with the prefix): one line per variable of an earlier version (naming what replaced it) and
    per name this package does not read (naming the closest known name, :func:`difflib.get_close_matches`); [] when
    all is well. Imports neither torch nor nnU-Net."""
    renamed, unknown = _offending(environ)
    return renamed + unknown


def check_variables(environ: Mapping[str, str] | None = None) -> None:
    """Refuse renamed and unknown ``NNUNET_PRUNE_*`` variables before any work (:func:`variable_problems`): a
    misspelt name would be ignored silently, e.g. a budget variable's typo leaves nnU-Net's 1000 epochs. Every entry
    point calls it first: the trainers and planners of this package and every ``nnunet-prune`` command (``doctor``
    lists the problems instead).

    Raises:
        NnUNetPruneError: naming each offending variable and what replaced it or the closest known name.
    """
    renamed, unknown = _offending(environ)
    if renamed:
        raise NnUNetPruneError("; ".join(renamed) + " (one variable per method; see `nnunet-prune doctor`).")
    if unknown:
        raise NnUNetPruneError("; ".join(unknown) + ". A misspelt variable is ignored, so this stops before any work: "
                               "rename or unset it (`nnunet-prune doctor` lists every variable).")
