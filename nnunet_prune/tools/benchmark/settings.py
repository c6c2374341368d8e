"""What a benchmark run is (:class:`BenchmarkSettings`) and every check of it that can be made before any work
(:func:`check_inputs`)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from nnunet_prune import NnUNetPruneError
from nnunet_prune.core.outputs import made_by
from nnunet_prune.nnunet.seeding import check_seed
from nnunet_prune.tools.benchmark.methods import DENSE, DISTILL_VAR, MethodSpec
from nnunet_prune.tools.benchmark.state import RunState

#: the manifest's name of the benchmark's files, its output folder's marker and its state file
TOOL = "benchmark"
STATE = "benchmark_state.json"
#: where a benchmark's cluster jobs keep their own step times (one state file per job), inside its output folder
JOB_STEPS = "jobs/steps"


@dataclass
class BenchmarkSettings:
    """What a benchmark run is: the dataset (name, e.g. ``Dataset117_LiTS117``), configuration, folds, methods, the
    budget (``epochs`` x ``iterations`` training iterations, ``val_iterations`` per epoch), the held-out images and
    labels (None: the folds' validation), the device, and the seeds: ``seeds`` trainings of every method, with seeds
    ``seed`` .. ``seed + seeds - 1``. Everything but ``methods``, ``jobs``, ``repeats``, ``runtimes`` and ``seeds``
    must match on a rerun in the same output folder (more seeds add runs; fewer use the first ones). ``executor``:
    where the steps run (``local``; ``slurm``, ``commands``: the device is the compute nodes', not checked here).
    ``int8``: every model is also quantized for OpenVINO (``nnunet-prune export --int8``, kept only within
    ``max_dice_drop`` of its float Dice on the validation cases), timed and scored as its own folder."""

    dataset: str
    configuration: str
    folds: list
    methods: list[str]
    epochs: int = 20
    iterations: int = 20
    val_iterations: int = 5
    test_images: str | None = None
    test_labels: str | None = None
    device: str = "cpu"
    sweep_taus: list[float] | None = None
    jobs: int = 1
    repeats: int = 10
    runtimes: list[str] | None = None
    seed: int = 0
    seeds: int = 1
    executor: str = "local"
    int8: bool = False
    max_dice_drop: float = 0.01

    def identity(self) -> dict:
        """The settings that define the results (a rerun must give the same)."""
        return {k: getattr(self, k) for k in ("dataset", "configuration", "folds", "epochs", "iterations",
                                              "val_iterations", "test_images", "test_labels", "device",
                                              "sweep_taus", "seed")}

    def seed_list(self) -> list[int]:
        """The seeds of the runs: ``seed``, ``seed + 1``, ... (``seeds`` of them)."""
        return [self.seed + i for i in range(self.seeds)]

    @property
    def dataset_id(self) -> str:
        """The dataset's ID as nnU-Net's commands take it (``Dataset117_LiTS117`` -> ``117``)."""
        return self.dataset.split("_")[0].replace("Dataset", "").lstrip("0") or "0"


def check_inputs(s: BenchmarkSettings, methods: Sequence[MethodSpec], out: Path, env: Mapping[str, str]) -> dict:
    """Every check that can be made before any work: nnU-Net's folders (in ``env``), the dataset, configuration,
    folds, the test images and labels, the output folder ``out`` (new, empty, or an earlier benchmark with the same
    settings). Normalises ``s.folds``, ``s.test_images``/``s.test_labels`` (absolute) and ``s.runtimes``. Returns
    the dataset's ``dataset.json``.

    Raises:
        NnUNetPruneError: with what to change.
    """
    from nnunet_prune.core.outputs import check_writable_files

    dataset_json = _check_dataset(s, env)
    _check_numbers(s)
    _check_folds_and_test_set(s, dataset_json)
    from nnunet_prune.tools.report.efficiency import check_runtimes

    s.runtimes = check_runtimes(s.runtimes)  # known and installed, before any work
    if any(m.magnitude for m in methods) and DENSE not in s.methods:
        raise NnUNetPruneError("The magnitude method prunes the benchmark's dense model: add 'dense' to --methods.")
    if any(m.from_dense for m in methods) and DENSE not in s.methods:
        names = ", ".join(m.name for m in methods if m.from_dense)
        raise NnUNetPruneError(f"{names} start from the benchmark's dense model: add 'dense' to --methods.")
    _check_distilled(s, methods, env)
    _check_plans(s, methods, Path(env["nnUNet_preprocessed"]) / s.dataset)
    _check_output(s, out)
    check_writable_files(out, ("benchmark.md", "benchmark.csv", "pareto.png"), TOOL)
    return dataset_json


def _check_dataset(s: BenchmarkSettings, env: Mapping[str, str]) -> dict:
    for var in ("nnUNet_raw", "nnUNet_preprocessed"):
        if not env.get(var):
            raise NnUNetPruneError(f"{var} is not set: the benchmark plans and trains with nnU-Net's folders (its "
                                   f"trained models go to OUT/seed_<S>/nnUNet_results, not to nnUNet_results).")
    raw = Path(env["nnUNet_raw"]) / s.dataset
    if not (raw / "dataset.json").is_file():
        from nnunet_prune.nnunet.prechecks import dataset_listing

        raise NnUNetPruneError(f"{raw / 'dataset.json'} does not exist: is -d the right dataset? The benchmark "
                               f"needs its raw data. {dataset_listing(env)}")
    return json.loads((raw / "dataset.json").read_text())


def _check_numbers(s: BenchmarkSettings) -> None:
    if s.epochs < 1 or s.iterations < 1 or s.val_iterations < 1:
        raise NnUNetPruneError("--epochs, --iters-per-epoch and --val-iters must be at least 1.")
    if s.jobs < 1 or s.repeats < 1:
        raise NnUNetPruneError("--jobs and --repeats must be at least 1.")
    if s.seeds < 1:
        raise NnUNetPruneError(f"--seeds {s.seeds}: give at least 1 (the number of trainings per method).")
    check_seed(s.seed, "--seed")
    check_seed(s.seed + s.seeds - 1, "--seed + --seeds - 1")
    if s.device not in ("cpu", "cuda"):
        raise NnUNetPruneError(f"--device must be cpu or cuda, not {s.device!r}.")
    if s.int8:
        from nnunet_prune.core.runtime_specs import is_available, require_nncf

        if not is_available("openvino"):
            raise NnUNetPruneError('--int8 runs the INT8 models through OpenVINO, which is not installed: pip install '
                                   '"nnunet-prune[int8]"')
        require_nncf()
        if not 0 <= s.max_dice_drop < 1:
            raise NnUNetPruneError(f"--max-dice-drop {s.max_dice_drop}: give a Dice drop in [0, 1).")
    if s.device == "cuda" and s.executor == "local":
        import torch

        if not torch.cuda.is_available():
            raise NnUNetPruneError("--device cuda: no CUDA device is available here. Use --device cpu.")


def _check_folds_and_test_set(s: BenchmarkSettings, dataset_json: dict) -> None:
    from nnunet_prune.nnunet.modelfolder import parse_fold

    try:
        s.folds = [parse_fold(f) for f in s.folds]
    except (ValueError, NnUNetPruneError) as e:
        raise NnUNetPruneError(f"-f: {e}") from None
    if "all" in s.folds and not s.test_images:
        raise NnUNetPruneError("Fold 'all' has no validation cases: give --test-images and --test-labels, or "
                               "train folds 0-4.")
    if bool(s.test_images) != bool(s.test_labels):
        raise NnUNetPruneError("Give both --test-images and --test-labels (nnU-Net's evaluation needs the labels), "
                               "or neither (the folds' validation is used).")
    if not s.test_images:
        return
    from nnunet_prune.tools.sweep.engine import check_labels, list_cases

    images = Path(s.test_images).expanduser().resolve()
    labels = Path(s.test_labels).expanduser().resolve()
    try:
        cases = list_cases(images, dataset_json)
        check_labels(labels, list(cases), dataset_json["file_ending"])
    except NnUNetPruneError as e:
        raise NnUNetPruneError(str(e).replace(f"-i {images}", f"--test-images {images}")
                               .replace("--labels", "--test-labels").replace("omit --test-labels",
                                                                              "omit both")) from None
    s.test_images, s.test_labels = str(images), str(labels)


def _check_distilled(s: BenchmarkSettings, methods: Sequence[MethodSpec], env: Mapping[str, str]) -> None:
    """The distilled rows need the dense model (their teacher) and a ``NNUNET_PRUNE_DISTILL`` they can use (their
    trainers fix distillation on: ``0`` is refused, as is any bad key or value)."""
    names = ", ".join(m.name for m in methods if m.distilled)
    if not names:
        return
    if DENSE not in s.methods:
        raise NnUNetPruneError(f"{names} learn from the benchmark's dense model (their teacher): add 'dense' to "
                               f"--methods.")
    if env.get(DISTILL_VAR, "").strip():
        from nnunet_prune.nnunet.teacher import DistillSettings

        try:
            DistillSettings.resolve(environ={DISTILL_VAR: env[DISTILL_VAR]}, fixed={"enabled": True})
        except NnUNetPruneError as e:
            raise NnUNetPruneError(f"{names} cannot train with your {DISTILL_VAR}={env[DISTILL_VAR]!r}: {e} Change "
                                   f"or unset it, or leave the distilled rows out (--distill, <method>_distill).") \
                from None


def _check_plans(s: BenchmarkSettings, methods: Sequence[MethodSpec], pre: Path) -> None:
    for m in methods:
        file = pre / f"{m.plans}.json"
        if file.is_file():
            configs = json.loads(file.read_text()).get("configurations", {})
            if s.configuration not in configs:
                raise NnUNetPruneError(
                    f"{file} exists but has no configuration {s.configuration!r} (it has {', '.join(configs)}). "
                    f"The benchmark does not overwrite plans: plan it yourself, e.g. nnUNetv2_plan_and_preprocess "
                    f"-d {s.dataset} -c {s.configuration}" + (f" -pl {m.planner}" if m.planner else "") + ".")


def _check_output(s: BenchmarkSettings, out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise NnUNetPruneError(f"-o {out} is a file; give a folder.")
    if not (out.is_dir() and any(out.iterdir())):
        return
    if not made_by(out, TOOL):
        raise NnUNetPruneError(f"-o {out} is not empty and holds no benchmark; choose a new or empty folder "
                               f"(nothing was touched).")
    old = RunState(out / STATE).load().get("settings", {})
    mine = json.loads(json.dumps(s.identity()))
    differ = [k for k in mine if old.get(k) != mine[k]]
    if differ:
        detail = "; ".join(f"{k}: {old.get(k)!r} there, {mine[k]!r} now" for k in differ)
        raise NnUNetPruneError(f"-o {out} holds a benchmark with other settings ({detail}). Rerun it with the same "
                               f"settings to continue it, or choose another -o.")
