"""Per-class Dice in words and cells, for every table of the tools (demo, benchmark): a foreground mean hides a class
a model did not learn (0.60 can be 0.90, 0.90 and 0.00), so each table shows a column per class and these notes say
it in plain words.

Nothing here imports PyTorch or nnU-Net.
"""

from __future__ import annotations

from collections.abc import Mapping

#: a class below this Dice counts as not learnt (the notes say so)
UNLEARNT_DICE = 0.1
#: a model this much below the reference model on a class gets a note (when the caller names a reference)
LOST_DICE = 0.1


def format_dice(mean: float | None, spread: float | None = None, digits: int = 3, missing: str = "-") -> str:
    """A Dice cell: ``0.612``, or ``0.612 ± 0.020`` with a spread (e.g. the standard deviation over seeds);
    ``missing`` for None."""
    if mean is None:
        return missing
    text = f"{mean:.{digits}f}"
    return text if spread is None else f"{text} ± {spread:.{digits}f}"


def class_notes(dice: Mapping[str, Mapping[str, float | None]], reference: str | None = None,
                advice: str = "train longer (--epochs)") -> list[str]:
    """Plain-words notes on per-class Dice: ``dice`` maps a model's label to {class name: Dice} (None: not
    measured), in table order.

    * a class every measured model has below :data:`UNLEARNT_DICE`: one note (no model learnt it; ``advice`` says
      what to do);
    * otherwise each model below it on that class: one note naming the best model's Dice there;
    * with ``reference`` (a key of ``dice``): each other model more than :data:`LOST_DICE` below the reference on
      a class the reference learnt.
    """
    models = list(dice)
    classes = list(dict.fromkeys(c for m in models for c in dice[m]))
    out = []
    for c in classes:
        values = {m: dice[m].get(c) for m in models if dice[m].get(c) is not None}
        if not values:
            continue
        if all(v < UNLEARNT_DICE for v in values.values()):
            who = "the only model" if len(values) == 1 else f"all {len(values)} models"
            out.append(f"No model learnt '{c}' (Dice below {UNLEARNT_DICE:g} for {who}): its numbers say nothing "
                       f"about pruning, and the foreground mean hides it; {advice} to see it.")
            continue
        best = max(values, key=values.get)
        for m, v in values.items():
            if v < UNLEARNT_DICE:
                out.append(f"{m} did not learn '{c}' (Dice {v:.2f}; {best} reaches {values[best]:.2f}): its "
                           f"foreground mean hides a missing class.")
        ref = values.get(reference) if reference is not None else None
        if ref is None or ref < UNLEARNT_DICE:
            continue
        for m, v in values.items():
            if m != reference and v >= UNLEARNT_DICE and ref - v > LOST_DICE:
                out.append(f"{m} reaches Dice {v:.2f} on '{c}' against {ref:.2f} for {reference}: it lost accuracy "
                           f"on this class.")
    return out
