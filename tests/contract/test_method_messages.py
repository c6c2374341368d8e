"""Every method's lines reach the training log once: the drain is implemented once, in the protocol's base."""

from __future__ import annotations

import importlib
import pkgutil

import nnunet_prune.methods as methods_pkg
from nnunet_prune.methods.base import MethodSettings, PruningMethod


def _all_methods() -> list[type[PruningMethod]]:
    for info in pkgutil.iter_modules(methods_pkg.__path__):
        importlib.import_module(f"{methods_pkg.__name__}.{info.name}")
    out, todo = [], [PruningMethod]
    while todo:
        cls = todo.pop()
        out.append(cls)
        todo.extend(cls.__subclasses__())
    return out


def test_messages_drain():
    method = PruningMethod(MethodSettings())
    method.say("first")
    method.say("second")
    assert method.messages() == ["first", "second"]
    assert method.messages() == []  # asked again in the same epoch: nothing repeats
    method.say("third")
    assert method.messages() == ["third"]


def test_no_method_overrides_the_drain():
    found = _all_methods()
    assert len(found) >= 6  # Sauron, STAMP (+ variants), structured, slimming, magnitude, PSP-Seg
    own = [cls.__name__ for cls in found if cls.messages is not PruningMethod.messages]
    assert not own, f"these methods return their own messages() instead of queueing lines with say(): {own}"
