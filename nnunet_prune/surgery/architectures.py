"""The architecture registry: per network class, how to build it, resize it to a state dict, and its coupling graph.

Each supported architecture is one :class:`Architecture` entry, found by the dotted class name nnU-Net plans use
(``configuration['architecture']['network_class_name']``), by the adaptive class name, or by a network's type:

* **build**: ``adaptive_class`` is the width-adaptive subclass (:mod:`nnunet_prune.networks`) that nnU-Net's
  ``get_network_from_plans`` instantiates with the plans' ``arch_kwargs`` -- what every trainer of this package,
  the predictor and every tool build;
* **resize**: ``resize(network, state_dict)`` gives a network the widths and block counts of a state dict;
* **graph**: ``build_graph(network)`` returns its :class:`~nnunet_prune.surgery.graph.ChannelGraph`;
* **blocks**: what the surgery may remove from it (``removes``), and its block operations (remove, mask/restore,
  the block map): U-Nets remove whole blocks of a stack (:mod:`~nnunet_prune.surgery.blocks`), PSP-Seg's network
  masks, restores and deletes parallel branches (:mod:`~nnunet_prune.surgery.branches`).

A new architecture (e.g. PSP-Seg's) calls :func:`register` in the module that defines it; since plans name the
class by its dotted path, importing it (which nnU-Net does to build it) registers it. Tools look architectures up
here and never name a class. This is the only door: :func:`build_channel_graph` and
:func:`~nnunet_prune.surgery.removal.apply_removal` refuse a network whose class (or a base class) is not registered,
so a new architecture works fully or not at all.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from nnunet_prune.core.stats import unwrap
from nnunet_prune.surgery.blocks import removable_blocks, remove_blocks
from nnunet_prune.surgery.graph import ChannelGraph, UnsupportedNetworkError
from nnunet_prune.surgery.resize import match_block_counts, resize_to_state_dict
from nnunet_prune.surgery.unet_graph import build_unet_graph


@dataclass(frozen=True)
class Architecture:
    """One supported network class (see the module docstring)."""

    stock_class: str  # dotted path, as plans name it
    adaptive_class: str  # dotted path of the width-adaptive subclass
    build_graph: Callable[[nn.Module], ChannelGraph]
    resize: Callable[[nn.Module, Mapping[str, torch.Tensor]], bool] = resize_to_state_dict
    #: ``match_structure(network, state_dict)``: only the modules a state dict has (block counts, branches), no
    #: tensor shapes (what a checkpoint check needs before comparing keys)
    match_structure: Callable[[nn.Module, Mapping[str, torch.Tensor]], bool] = match_block_counts
    #: what the surgery can remove from it: "channels" (coupling groups), "weights" (unstructured masks),
    #: "blocks" (whole blocks of a stack), "branches" (PSP-Seg's parallel branches)
    removes: tuple[str, ...] = ("channels", "weights", "blocks")
    #: (network) -> paths of the blocks that may be removed now
    removable_blocks: Callable[[nn.Module], list[str]] = removable_blocks
    #: (network, paths, optimizer) -> BlockRemovalResult: remove whole blocks / branches
    remove_blocks: Callable = remove_blocks
    #: (network, paths, active) -> paths changed: mask (False) or restore (True) blocks; None: not supported
    mask_blocks: Callable[[nn.Module, list[str], bool], list[str]] | None = None
    #: (network) -> {block path: "active" | "masked" | "deleted"} (None: an architecture without block states)
    block_states: Callable[[nn.Module], dict[str, str]] | None = None


ARCHITECTURES: list[Architecture] = []


def register(architecture: Architecture) -> Architecture:
    """Add (or replace, by stock class) an architecture; returns it."""
    ARCHITECTURES[:] = [a for a in ARCHITECTURES if a.stock_class != architecture.stock_class]
    ARCHITECTURES.append(architecture)
    return architecture


def _dotted(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _find(name: str) -> Architecture | None:
    return next((a for a in ARCHITECTURES if name in (a.stock_class, a.adaptive_class)), None)


def for_class_name(name: str) -> Architecture:
    """The entry of the class a plans file names: ``name`` (a dotted path) is the stock or adaptive class of an
    entry, or a class (imported, so that architectures defined elsewhere register themselves) whose nearest
    registered base class is; names of earlier versions kept as aliases of moved classes resolve too.

    Raises:
        UnsupportedNetworkError: no such architecture, naming the supported ones.
    """
    found = _find(name)
    if found is not None:
        return found
    module, _, class_name = name.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), class_name, None) if module else None
    except ImportError:
        cls = None
    for base in cls.__mro__ if isinstance(cls, type) else ():
        found = _find(_dotted(base))
        if found is not None:
            return found
    raise UnsupportedNetworkError(
        f"Architecture {name} is not supported by nnunet-prune (supported: "
        f"{', '.join(a.stock_class for a in ARCHITECTURES)}). Plan the dataset with a planner that builds one of "
        f"them.")


def of(network: nn.Module) -> Architecture:
    """The entry of a network (its class or the nearest registered base class).

    Raises:
        UnsupportedNetworkError: no registered architecture.
    """
    for cls in type(network).__mro__:
        found = _find(_dotted(cls))
        if found is not None:
            return found
    raise UnsupportedNetworkError(
        f"{type(network).__name__} is not a supported architecture (supported: "
        f"{', '.join(a.stock_class for a in ARCHITECTURES)}). To add one, call "
        f"nnunet_prune.surgery.architectures.register(Architecture(...)) in the module that defines the class.")


def build_channel_graph(network: nn.Module) -> ChannelGraph:
    """Coupling groups of a network of a registered architecture (also when wrapped by DDP / torch.compile): the
    builder of its entry (:func:`of`).

    Raises:
        UnsupportedNetworkError: an architecture that is not registered (naming the supported ones and how to
            register), or a structure its builder cannot slice.
    """
    net = unwrap(network)
    return of(net).build_graph(net)


def masked_blocks(network: nn.Module) -> list[str]:
    """Paths of the blocks of ``network`` that are masked now (PSP-Seg's branches); [] for a network whose
    architecture has no block states or is not registered."""
    try:
        states = of(network).block_states
    except UnsupportedNetworkError:
        return []
    return [] if states is None else [path for path, state in states(network).items() if state == "masked"]


for _cls in ("PlainConvUNet", "ResidualEncoderUNet"):
    register(Architecture(f"dynamic_network_architectures.architectures.unet.{_cls}",
                          f"nnunet_prune.networks.Adaptive{_cls}", build_unet_graph))
