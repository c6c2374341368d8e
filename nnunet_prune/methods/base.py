"""The method protocol: what every pruning method of this package is, whatever its paper.

A method is a :class:`PruningMethod` subclass with a :class:`MethodSettings` dataclass. The trainers' generic driver
(:class:`nnunet_prune.nnunet.trainers.driver.SurgeryDriver`, run by the trainers) calls it at fixed points and applies
what it returns with :func:`nnunet_prune.surgery.removal.apply_removal`; a method never slices a tensor and never
reads the environment or nnU-Net's plans: the glue passes them in, the settings at construction and everything else
about the training in one :class:`TrainingContext` (:meth:`PruningMethod.attach`), never as attributes set from
outside::

    settings = SauronConfig.resolve(plans, environ, fixed=variant_values)   # validated
    method = SauronMethod(settings)                                         # (rng=... for reproducible draws)
    method.attach(TrainingContext(...))        # once: ignore label, regions, rank, calibration batches, ...
    method.bind(graph)                         # start; again after every surgery and after --c
    removal = method.start(network, graph, progress)  # once, after the weights are loaded (one-shot: decide here)
    for each epoch:
        method.epoch_start(epoch, graph)
        for each training step:
            method.step_start(step, steps_per_epoch)
            method.batch_start(data, target)            # the batch nnU-Net trains on

            loss = nnU-Net's loss + method.extra_loss()
            method.step_end()
        removal = method.decide(graph, progress)        # rank 0's answer is used under DDP
        log method.scalars(graph), method.messages()    # right after the decision, before the surgery
        result = apply_removal(...)                     # not when progress.pruning_allowed is False
        method.after_surgery(result, graph)             # every epoch, also when nothing was removed
        pruning_history.json += method.record(graph)
        checkpoint method.state()
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from nnunet_prune import NnUNetPruneError
from nnunet_prune.core.flags import parse_flag
from nnunet_prune.surgery.graph import ChannelGraph
from nnunet_prune.surgery.removal import Removal, SurgeryResult


@dataclass
class MethodSettings:
    """Base of every method's settings: a dataclass of numbers, flags and choices (``str`` fields listed in
    ``CHOICES``), validated, in one documented form.

    Sources, later ones win: the dataclass defaults (the paper's), the variant class's defaults, the plans entry
    ``plans['nnunet_prune'][NAME.lower()]``, then the method's variable ``ENV_VAR='key=value,...'``. The resolved
    values are recorded in the fold's ``pruning_config.json``.
    """

    NAME: ClassVar[str] = "method"
    ENV_VAR: ClassVar[str] = ""
    EXAMPLE: ClassVar[str] = ""
    #: public key -> field name (e.g. "lambda" -> "lambda_": a keyword cannot be a field)
    ALIASES: ClassVar[dict[str, str]] = {}
    #: field name -> the allowed values of a text setting (every ``str`` field has an entry)
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {}

    def problems(self) -> list[str]:
        """What is wrong with these values (empty: valid). Subclasses add their ranges."""
        out = [f"{self.public_name(f.name)} must be a finite number" for f in fields(self)
               if isinstance(getattr(self, f.name), float) and not math.isfinite(getattr(self, f.name))]
        out += [f"{self.public_name(name)} must be one of {', '.join(choices)} (got {getattr(self, name)!r})"
                for name, choices in self.CHOICES.items() if getattr(self, name) not in choices]
        return out

    def validate(self, pinned: Iterable[str] = ()) -> MethodSettings:
        """Return self if valid. ``pinned``: keys a trainer variant fixes (left out of the example in the message).

        Raises:
            NnUNetPruneError: listing every problem and the variable to set.
        """
        problems = self.problems()
        if problems:
            pinned = {self.ALIASES.get(k, k) for k in pinned}
            example = ",".join(kv for kv in self.EXAMPLE.split(",")
                               if self.ALIASES.get(kv.split("=")[0], kv.split("=")[0]) not in pinned)
            raise NnUNetPruneError(f"Invalid {self.NAME} settings: " + "; ".join(problems) +
                                   (f". Set them as {self.ENV_VAR}='{example}'." if self.ENV_VAR and example
                                    else "."))
        return self

    @classmethod
    def public_name(cls, field_name: str) -> str:
        """The public key of a field (``lambda_`` -> ``lambda``)."""
        return next((k for k, v in cls.ALIASES.items() if v == field_name), field_name)

    @classmethod
    def keys(cls) -> list[str]:
        """The public setting names, as the plans entry and the variable spell them."""
        return [cls.public_name(f.name) for f in fields(cls)]

    @classmethod
    def parse_env(cls, text: str) -> dict[str, str]:
        """``'a=1,b=2'`` (``;`` works too) -> {'a': '1', 'b': '2'}.

        Raises:
            NnUNetPruneError: not key=value pairs.
        """
        try:
            return dict((k.strip(), v.strip()) for k, v in (item.split("=", 1) for item in
                                                            text.replace(";", ",").split(",") if item.strip()))
        except ValueError:
            raise NnUNetPruneError(f"{cls.ENV_VAR}={text!r}: expected comma-separated key=value pairs, e.g. "
                                   f"'{cls.EXAMPLE}'.") from None

    @classmethod
    def resolve(cls, plans: Mapping | None = None, environ: Mapping[str, str] | None = None,
                fixed: Mapping[str, Any] | None = None, **defaults: Any) -> MethodSettings:
        """Defaults (``defaults`` by public or field name override the dataclass's), then
        ``plans['nnunet_prune'][NAME.lower()]``, then ``environ[ENV_VAR]``; validated. ``environ`` is given by the
        caller (the glue passes ``os.environ``); None means no environment. ``fixed`` values (a trainer variant
        whose name promises them, e.g. tau=0.005) are applied first and may not be changed by the plans or the
        variable.

        Raises:
            NnUNetPruneError: an unknown key, a value of the wrong type, one out of range, or one that contradicts
                a fixed value.
        """
        cfg = cls()
        fixed = dict(fixed or {})
        sources: list[tuple[str, Mapping]] = [("defaults", {**defaults, **fixed})]
        if plans is not None:
            entry = (plans.get("nnunet_prune") or {}).get(cls.NAME.lower()) or {}
            if not isinstance(entry, Mapping):
                raise NnUNetPruneError(f"plans['nnunet_prune']['{cls.NAME.lower()}'] must be a mapping of settings.")
            sources.append((f"plans['nnunet_prune']['{cls.NAME.lower()}']", dict(entry)))
        text = (environ or {}).get(cls.ENV_VAR, "") if cls.ENV_VAR else ""
        if text.strip():
            sources.append((cls.ENV_VAR, cls.parse_env(text)))
        types = {f.name: f.type for f in fields(cls)}
        for origin, values in sources:
            for key, value in values.items():
                name = cls.ALIASES.get(key.strip(), key.strip())
                if name not in types:
                    raise NnUNetPruneError(f"{origin}: unknown {cls.NAME} setting {key!r} (known: "
                                           f"{', '.join(cls.keys())}).")
                converted = _convert(origin, key, value, str(types[name]), cls.CHOICES.get(name))
                pinned = [v for k, v in fixed.items() if cls.ALIASES.get(k, k) == name]
                if origin != "defaults" and pinned and converted != _convert("fixed", key, pinned[0],
                                                                             str(types[name]), cls.CHOICES.get(name)):
                    raise NnUNetPruneError(
                        f"{origin}: {key}={value!r} contradicts {cls.public_name(name)}={pinned[0]!r}, which this "
                        f"trainer variant fixes (its name says so). Use the variant's base trainer to choose "
                        f"{cls.public_name(name)}, or leave it out.")
                setattr(cfg, name, converted)
        return cfg.validate(pinned=fixed)

    def as_dict(self) -> dict:
        """The values by public name (what ``pruning_config.json`` records)."""
        return {self.public_name(k): v for k, v in asdict(self).items()}


def _convert(origin: str, key: str, value: Any, type_name: str, choices: tuple[str, ...] | None = None) -> Any:
    if value is None and "None" in type_name:
        return None
    if type_name.startswith("str"):
        text = str(value).strip().lower()
        if choices is not None and text not in choices:
            raise NnUNetPruneError(f"{origin}: {key}={value!r} must be one of {', '.join(choices)}.")
        return text
    if "bool" in type_name:
        flag = parse_flag(value)
        if flag is not None:
            return flag
        raise NnUNetPruneError(f"{origin}: {key}={value!r} must be true or false (1/0).")
    try:
        number = float(value)
        if not math.isfinite(number) or isinstance(value, bool):
            raise ValueError
    except (TypeError, ValueError):
        raise NnUNetPruneError(f"{origin}: {key}={value!r} is not a number (finite numbers only).") from None
    if type_name.startswith("int"):
        if not number.is_integer():
            raise NnUNetPruneError(f"{origin}: {key}={value!r} must be a whole number.")
        return int(number)
    return number


@dataclass
class TrainingProgress:
    """What the driver tells a method after an epoch: the epoch (0-based), the budget, nnU-Net's losses so far
    (one value per finished epoch, the current one last), whether a surgery may follow this decision (False in
    the last ``final_epochs_without_pruning`` epochs: what :meth:`PruningMethod.decide` returns is then dropped),
    nnU-Net's smoothed validation pseudo Dice per epoch (its ``ema_fg_dice``), the network's size now and
    unpruned (parameters; MACs per patch; None where unknown), how many final epochs allow no surgery, and the
    patch size (voxels per axis) the MACs are counted for."""

    epoch: int
    num_epochs: int
    train_losses: Sequence[float]
    val_losses: Sequence[float]
    pruning_allowed: bool = True
    pseudo_dice: Sequence[float] = ()
    parameters: int | None = None
    macs: int | None = None
    initial_parameters: int | None = None
    initial_macs: int | None = None
    final_epochs_without_pruning: int = 1
    patch_size: tuple[int, ...] | None = None


@dataclass(frozen=True)
class TrainingContext:
    """What a method may know about the training it runs in, given once by the driver before the first
    :meth:`PruningMethod.bind` (:meth:`PruningMethod.attach`); the defaults describe a single process without nnU-Net
    (tests, benchmarks).

    * ``ignore_label``: nnU-Net's ignore label (None: none); targets carry it where the voxels are not annotated;
    * ``has_regions``: nnU-Net's region-based training (targets are 0/1 region channels, with an ignore label the
      ignore mask is the last channel); ``foreground_regions``: the regions (labels or tuples of labels) of the
      channels, in order (None without regions);
    * ``rank`` / ``world_size`` / ``is_ddp``: the DDP process (rank 0 decides; every rank applies its decision);
    * ``calibration_batches``: () -> an iterator of input batches (B, C, *patch) drawn from nnU-Net's training loader
      (with its augmentation), as many as the method takes (None: none available); draw only on rank 0 unless every
      rank must;
    * ``patch_size``: the patch (voxels per axis); ``device``: where the network trains.
    """

    ignore_label: int | None = None
    has_regions: bool = False
    foreground_regions: tuple | None = None
    rank: int = 0
    world_size: int = 1
    is_ddp: bool = False
    calibration_batches: Callable[[], Iterable[torch.Tensor]] | None = None
    patch_size: tuple[int, ...] | None = None
    device: torch.device | None = None

    @property
    def is_main(self) -> bool:
        """Whether this process decides (rank 0; the only one without DDP)."""
        return self.rank == 0


class PruningMethod:
    """One paper's algorithm behind the protocol of the module docstring. Every hook has a no-op default.

    Class attributes: ``settings_class`` (its :class:`MethodSettings`), ``log_keys`` (names of the per-epoch scalars
    :meth:`scalars` returns, logged in nnU-Net's logger and ``pruning_history.json``; keys not listed are added when
    first logged, listing them plots them from the first epoch on), ``holds_zero_pattern``
    (weights zeroed by :meth:`start` stay zero while training continues: the driver re-applies the zero pattern
    after every optimizer step).
    """

    settings_class: ClassVar[type[MethodSettings]] = MethodSettings
    #: what the method removes: "channels", "weights" or "branches" (the architecture registry says which
    #: networks can lose them; the trainer refuses plans whose network cannot)
    removes: ClassVar[str] = "channels"
    #: under DDP the driver gives every rank rank 0's :meth:`state` after each decision (a method whose decisions
    #: depend on statistics each rank gathers differently, e.g. PSP-Seg's loss history)
    state_from_rank0: ClassVar[bool] = False
    log_keys: ClassVar[tuple[str, ...]] = ()
    holds_zero_pattern: ClassVar[bool] = False

    def __init__(self, settings: MethodSettings, rng: np.random.Generator | None = None):
        """``rng``: the method's random generator (a fresh unseeded one by default; pass a seeded one, or take a
        seed from the settings, for reproducible draws)."""
        self.settings = settings
        self.rng = rng if rng is not None else np.random.default_rng()
        self.context = TrainingContext()
        self._pending_lines: list[str] = []

    # -- structure --------------------------------------------------------------------------------------
    def attach(self, context: TrainingContext) -> None:
        """The training this method runs in (once, before the first :meth:`bind`); kept as ``self.context``.
        Methods that need more than the context read it from there; overrides call ``super()``."""
        self.context = context

    def bind(self, graph: ChannelGraph) -> None:
        """The network's structure is ``graph`` now (at the start, after a surgery, after loading a checkpoint):
        (re-)attach taps, size per-group state."""

    def release(self) -> None:
        """Remove hooks (the training ended)."""

    # -- decisions ----------------------------------------------------------------------------------------
    def start(self, network: nn.Module, graph: ChannelGraph, progress: TrainingProgress | None = None) -> Removal:
        """Once before training, after the weights are loaded (a dense start included); ``progress`` gives the
        budget (epoch 0: nothing trained yet) where the caller knows it. One-shot methods decide here; others
        return nothing."""
        return Removal()

    def network_problems(self, network: nn.Module, graph: ChannelGraph, patch_size: Sequence[int]) -> list[str]:
        """Why these settings cannot work on this (unpruned) network, e.g. a target the caps make unreachable
        (empty: none). The driver asks before nnU-Net creates the fold folder, on a network built from the plans."""
        return []

    def decide(self, graph: ChannelGraph, progress: TrainingProgress) -> Removal:
        """After each epoch's validation: what to remove now."""
        return Removal()

    def after_surgery(self, result: SurgeryResult, graph: ChannelGraph) -> None:
        """After every :meth:`decide` (also when nothing was removed or surgery was not allowed)."""

    # -- training -------------------------------------------------------------------------------------------
    def epoch_start(self, epoch: int, graph: ChannelGraph) -> None:
        """Before the first training step of an epoch."""

    def step_start(self, step: int, steps_per_epoch: int) -> None:
        """Before training step ``step`` (0-based) of the epoch."""

    def batch_start(self, data: torch.Tensor, target) -> None:
        """The training step's batch before the forward: ``data`` (B, C, *patch) and ``target`` (a tensor, or
        nnU-Net's deep-supervision list of targets, highest resolution first), on any device."""

    def extra_loss(self) -> torch.Tensor | None:
        """A term added to nnU-Net's loss in the current training step (None: none)."""
        return None

    def step_end(self) -> None:
        """After a training step (also a failed one)."""

    # -- records ----------------------------------------------------------------------------------------------
    def scalars(self, graph: ChannelGraph) -> dict[str, Any]:
        """Per-epoch values to log (keys from ``log_keys``), asked right after :meth:`decide`; each is plotted in
        ``progress_pruning.png`` (a number, or a list with one number per group)."""
        return {}

    def record(self, graph: ChannelGraph) -> dict[str, Any]:
        """Per-epoch details for ``pruning_history.json`` only (not plotted: e.g. the channels removed and their
        scores), asked after :meth:`after_surgery`. JSON-serialisable."""
        return {}

    def say(self, line: str) -> None:
        """Queue ``line`` for the training log; :meth:`messages` hands it to the driver once."""
        self._pending_lines.append(line)

    def messages(self) -> list[str]:
        """The lines :meth:`say` queued since the last call, then none: each line reaches the training log once,
        however often the driver asks (after :meth:`start`, :meth:`decide` and :meth:`after_surgery`). Methods
        queue lines with :meth:`say` and do not override this."""
        lines, self._pending_lines = self._pending_lines, []
        return lines

    def state(self) -> dict:
        """JSON-serialisable state, saved in every checkpoint (nnU-Net's logger) and restored on ``--c``."""
        return {}

    def load_state(self, state: Mapping) -> None:
        """Restore what :meth:`state` returned."""

    def schedule_problems(self, num_epochs: int, final_epochs_without_pruning: int) -> list[str]:
        """Why a run of this budget would prune nothing or little (warnings at the start; empty: none)."""
        return []

    def end_advice(self, removed_any: bool, progress: TrainingProgress) -> list[str]:
        """Warnings at the end of training (e.g. why nothing was removed)."""
        return []
