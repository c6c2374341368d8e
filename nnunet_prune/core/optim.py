"""Optimizer bookkeeping when parameters leave a network: one loop, used by every surgery that deletes modules."""

from __future__ import annotations

from collections.abc import Iterable

import torch


def optimizers_of(optimizer: torch.optim.Optimizer | Iterable[torch.optim.Optimizer] | None
                  ) -> list[torch.optim.Optimizer]:
    """``optimizer`` as a list: [] for None, [optimizer] for one, else the optimizers it holds."""
    if optimizer is None:
        return []
    if isinstance(optimizer, torch.optim.Optimizer):
        return [optimizer]
    return list(optimizer)


def drop_parameters(optimizer: torch.optim.Optimizer | Iterable[torch.optim.Optimizer] | None,
                    parameters: Iterable[torch.nn.Parameter]) -> None:
    """Remove ``parameters`` from every param group and from the state of ``optimizer`` (one, several or None), in
    place; the other parameters, their order, the groups' settings and their state stay as they were."""
    gone = list(parameters)
    gone_ids = {id(p) for p in gone}
    for opt in optimizers_of(optimizer):
        for group in opt.param_groups:
            group["params"] = [p for p in group["params"] if id(p) not in gone_ids]
        for p in gone:
            opt.state.pop(p, None)
