"""Where every convolution of a U-Net sits: one vocabulary for stage, level and part.

* **part**: ``encoder``, ``bottleneck``, ``decoder`` or ``heads`` (the segmentation heads);
* **level**: resolution level, 0 = full resolution, ``n_levels - 1`` = the bottleneck (heads: the level of the
  decoder stage they read);
* **stage**: the label tools print and group by: ``enc<level>``, ``bottleneck``, ``dec<level>``, ``heads``.

The layout is read off the coupling graph (:func:`~nnunet_prune.surgery.architectures.build_channel_graph`), which
already knows every producer's level and part: no module-name patterns. Coupling groups are labelled by the same
vocabulary (:attr:`~nnunet_prune.surgery.graph.ChannelGroup.part` / ``level``).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from nnunet_prune.surgery.graph import ChannelGraph

PARTS = ("encoder", "bottleneck", "decoder", "heads")


@dataclass(frozen=True)
class Stage:
    """One place in the U-Net: ``part`` and ``level`` (see the module docstring)."""

    part: str
    level: int

    @property
    def label(self) -> str:
        """``enc<level>``, ``bottleneck``, ``dec<level>`` or ``heads``."""
        if self.part in ("bottleneck", "heads"):
            return self.part
        return f"{'enc' if self.part == 'encoder' else 'dec'}{self.level}"


def stage_labels(n_levels: int) -> list[str]:
    """Every stage label of a U-Net with ``n_levels`` resolution levels, in network order (encoder, bottleneck,
    decoder from the deepest level up, heads)."""
    return ([f"enc{i}" for i in range(n_levels - 1)] + ["bottleneck"] +
            [f"dec{i}" for i in reversed(range(n_levels - 1))] + ["heads"])


def number_of_levels(graph: ChannelGraph) -> int:
    """Resolution levels of the graph's network (the bottleneck's level + 1)."""
    return 1 + max(g.level for g in graph)


def conv_stages(graph: ChannelGraph) -> dict[nn.Module, Stage]:
    """Stage of every convolution and transposed convolution of the network (each module once).

    A producer takes its group's level and part from the block it belongs to (a residual group spanning levels,
    e.g. ``res2-3``, puts each producer at its own level); heads are ``Stage('heads', level)``.
    """
    n_levels = number_of_levels(graph)
    out: dict[nn.Module, Stage] = {}
    for g in graph:
        for p in g.producers:
            level = graph.producer_levels.get(p, g.level)
            part = "decoder" if g.part == "decoder" else ("bottleneck" if level == n_levels - 1 else "encoder")
            out[p] = Stage(part, level)
    for i, head in enumerate(graph.heads):
        out[head] = Stage("heads", n_levels - 2 - i if n_levels > 1 else 0)
    return out
