"""Every environment variable this package reads, in one table (``nnunet-prune doctor`` prints them all).

Configuration goes nnU-Net's way first (a trainer variant class sets attributes, or a plans entry
``plans['nnunet_prune'][<method>]``); a variable per method is for experiments. Only the glue (trainers, planners,
tools) reads these; surgery, criteria and methods never read the environment (``tests/test_layers.py``).
"""

from __future__ import annotations

#: name -> what it does, for the variables that belong to no method (each method's one variable comes from its
#: settings class: :func:`method_variables`); the documentation and `doctor` print them
PACKAGE_VARIABLES: dict[str, str] = {
    "NNUNET_PRUNE_DENSE_MODEL": "model folder a dense start reads fold_F/checkpoint_final.pth from (default: the "
                                "stock nnUNetTrainer folder, else nnUNetTrainerBudget; the slimming trainers look "
                                "for nnUNetTrainerSlimmingSparsity first)",
    "NNUNET_PRUNE_EPOCHS": "number of epochs of every trainer of this package (a short budget)",
    "NNUNET_PRUNE_ITERS_PER_EPOCH": "training iterations per epoch",
    "NNUNET_PRUNE_VAL_ITERS": "validation iterations per epoch",
    "NNUNET_PRUNE_SAVE_EVERY": "checkpoint_latest.pth every this many epochs (nnU-Net: 50), for --c in short runs",
    "NNUNET_PRUNE_NO_REUSE": "1: LUnet planners preprocess again instead of reusing the default plans' data",
    "NNUNET_PRUNE_CACHE": "download cache of `nnunet-prune dataset lits117` (default ~/.cache/nnunet-prune)",
    "NNUNET_PRUNE_TRACEBACK": "1: the command line prints the full traceback of an error",
    "NNUNET_PRUNE_DISABLE_HOOK": "1: the start-up hook does nothing (nnU-Net no longer finds this package's classes)",
}

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


def method_variables() -> dict[str, str]:
    """Each method's one variable (``MethodSettings.ENV_VAR``), found through the method classes of this package's
    trainers, with an example value: a new method's variable is listed without an edit here."""
    from nnunet_prune import trainers

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
