"""Whole parallel branches of PSP-Seg's Parallel Redundant Modules: mask, restore, delete, and read them from a
state dict (PSP-Seg §3.3, "masked-then-pruned").

A branch is addressed by its module path, ``<prm path>.branches.<i>`` (``i``: its index when the module was built,
kept after deletions), e.g. ``encoder.stages.2.prm.branches.5``. Three states:

* active: computes and contributes ``w_i * EB_i(x)``;
* masked (:func:`set_branches_active` with False): computes nothing, contributes 0, its weights are untouched (no
  gradient reaches them, so the optimizer skips them) -- a restore puts back exactly what was masked;
* deleted (:func:`remove_branches`): gone from the module and from the optimizer's param groups and state.

Oracle (``tests/unit/methods/test_pspseg.py``): the network with a set of branches masked equals the network with them
deleted
(max abs diff <= 1e-5, float32). Networks are duck-typed (a module holding ``ALL_BRANCHES`` is a PRM), so this module
does not import the architecture.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn

from nnunet_prune.core.optim import drop_parameters
from nnunet_prune.core.stats import count_parameters, unwrap
from nnunet_prune.surgery.blocks import BlockRemovalResult
from nnunet_prune.surgery.graph import ChannelGraph, UnsupportedNetworkError

#: attribute (in a PRM's ``__dict__``) holding every branch the module was built with, by index string
ALL_BRANCHES = "_nnunet_prune_all_branches"
ACTIVE, MASKED, DELETED = "active", "masked", "deleted"


def prm_modules(network: nn.Module) -> dict[str, nn.Module]:
    """Every Parallel Redundant Module of a network by path, in registration order (encoder, then decoder)."""
    return {name: m for name, m in unwrap(network).named_modules() if ALL_BRANCHES in m.__dict__}


def branch_states(network: nn.Module) -> dict[str, list[str]]:
    """{prm path: [state of branch 0 .. m-1]} with states ``active``, ``masked``, ``deleted`` (the branch map of
    PSP-Seg's Fig. 4)."""
    out = {}
    for path, prm in prm_modules(network).items():
        present = prm.branches
        out[path] = [DELETED if str(i) not in present else ACTIVE if present[str(i)].is_active else MASKED
                     for i in range(len(prm.__dict__[ALL_BRANCHES]))]
    return out


def block_states(network: nn.Module) -> dict[str, str]:
    """{branch path: state} of every branch the network was built with (the architecture registry's
    ``block_states``)."""
    return {f"{path}.branches.{i}": state for path, row in branch_states(network).items()
            for i, state in enumerate(row)}


def removable_branches(network: nn.Module) -> list[str]:
    """Paths of every branch still present (active or masked)."""
    return [f"{path}.branches.{i}" for path, prm in prm_modules(network).items() for i in prm.branches]


def _resolve(network: nn.Module, paths: Iterable[str]) -> list[tuple[nn.Module, str]]:
    prms = prm_modules(network)
    out, bad = [], []
    for p in dict.fromkeys(paths):
        prm_path, _, index = p.rpartition(".branches.")
        prm = prms.get(prm_path)
        if prm is None or index not in prm.branches:
            bad.append(p)
        else:
            out.append((prm, index))
    if bad:
        raise UnsupportedNetworkError(f"not branches of this network: {', '.join(bad)} (present: "
                                      f"{', '.join(removable_branches(network)) or 'none'})")
    return out


def set_branches_active(network: nn.Module, paths: Iterable[str], active: bool) -> list[str]:
    """Mask (``active=False``) or restore (True) branches in place; returns the paths changed.

    Raises:
        UnsupportedNetworkError: a path that is not a present branch (nothing is changed then).
    """
    paths = list(dict.fromkeys(paths))
    changed = []
    for (prm, index), path in zip(_resolve(network, paths), paths):
        branch = prm.branches[index]
        if branch.is_active != bool(active):
            branch.set_active(active)
            changed.append(path)
    return changed


def remove_branches(network: nn.Module, paths: Iterable[str],
                    optimizer: torch.optim.Optimizer | Sequence[torch.optim.Optimizer] | None = None
                    ) -> BlockRemovalResult:
    """Delete branches in place (their parameters leave the optimizer's param groups and state). Deleting a masked
    branch changes no output; deleting an active one removes its contribution ``w_i * EB_i(x)``.

    Raises:
        UnsupportedNetworkError: a path that is not a present branch (nothing is changed then).
    """
    net = unwrap(network)
    paths = list(dict.fromkeys(paths))
    targets = _resolve(net, paths)
    result = BlockRemovalResult(list(paths), params_before=count_parameters(net))
    gone = []
    for prm, index in targets:
        branch = prm.branches[index]
        gone += list(branch.parameters())
        del prm.branches[index]
        prm.present[int(index)] = False
        branch.to("cpu")  # kept (unregistered) only so that a later state dict may bring it back
    drop_parameters(optimizer, gone)
    result.params_after = count_parameters(net)
    return result


def match_branches(network: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> bool:
    """Give every PRM the branches ``state_dict`` holds (deleted ones leave the module, and come back from the
    module's own store when a later state dict has them) and their masked state (the ``active`` buffers; values
    are loaded by ``load_state_dict``). Returns whether the set of present branches changed.

    Raises:
        UnsupportedNetworkError: a state dict naming a branch index the module was never built with.
    """
    changed = False
    reference = next(network.parameters(), None)
    for path, prm in prm_modules(network).items():
        prefix = f"{path}.branches."
        built = prm.__dict__[ALL_BRANCHES]
        flags = state_dict.get(f"{path}.present")
        if torch.is_tensor(flags):  # the module's own record (also when every branch is deleted)
            if flags.numel() != len(built):
                raise UnsupportedNetworkError(f"{path}: the state dict has {flags.numel()} branches; this network "
                                              f"was built with {len(built)}")
            wanted = {str(i) for i, f in enumerate(flags.tolist()) if f}
        else:  # (a state dict without the record: the keys present)
            wanted = {k[len(prefix):].split(".", 1)[0] for k in state_dict if k.startswith(prefix)}
            if not wanted:
                continue  # a state dict of another structure: load_state_dict reports it
        unknown = sorted(wanted - set(built))
        if unknown:
            raise UnsupportedNetworkError(f"{path}: the state dict has branches {unknown}; this network was built "
                                          f"with {len(built)} (0..{len(built) - 1})")
        order = [i for i in built if i in wanted]
        if order != list(prm.branches.keys()):
            for i in set(prm.branches.keys()) - set(order):
                built[i].to("cpu")  # dropped: kept aside on the CPU
            to = {} if reference is None else {"device": reference.device, "dtype": reference.dtype}
            prm.branches = nn.ModuleDict({i: built[i].to(**to) for i in order})
            prm.branches.train(prm.training)
            changed = True
        for i in order:
            key = f"{prefix}{i}.active"
            if key in state_dict:
                built[i].set_active(bool(state_dict[key]))
    return changed


def empty_graph(network: nn.Module) -> ChannelGraph:
    """The coupling graph of an architecture whose channels are not pruned (PSP-Seg prunes branches): no groups."""
    return ChannelGraph(unwrap(network), [], {}, heads=[])
