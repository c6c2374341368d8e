"""One spelling of true and false for settings and switches (core/flags.py), read by settings.flag and the hook."""

from __future__ import annotations

import pytest

from nnunet_prune.core.flags import parse_flag
from nnunet_prune.nnunet.settings import flag


@pytest.mark.parametrize(("value", "expected"), [
    ("1", True), ("TRUE", True), (" yes ", True), ("on", True), (True, True),
    ("0", False), ("false", False), ("", False), (None, False), (False, False), ("off", False),
    ("maybe", None), ("2", None),
])
def test_parse_flag(value, expected):
    assert parse_flag(value) is expected


def test_a_switch_is_on_only_for_a_true_word():
    assert flag("NNUNET_PRUNE_NO_REUSE", {"NNUNET_PRUNE_NO_REUSE": "yes"})
    assert not flag("NNUNET_PRUNE_NO_REUSE", {"NNUNET_PRUNE_NO_REUSE": "0"})
    assert not flag("NNUNET_PRUNE_NO_REUSE", {})
