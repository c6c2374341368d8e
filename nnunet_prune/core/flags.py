"""The one spelling of true and false for every switch of this package: method settings (``prune_bias=yes``) and
the on/off variables (``NNUNET_PRUNE_NO_REUSE``, ``NNUNET_PRUNE_TRACEBACK``, ``NNUNET_PRUNE_DISABLE_HOOK``).
Standard library only (the start-up hook uses it)."""

from __future__ import annotations

#: words read as true and as false (compared after strip() and lower())
TRUE_WORDS = ("1", "true", "t", "yes", "y", "on")
FALSE_WORDS = ("0", "false", "f", "no", "n", "off", "")


def parse_flag(value: object) -> bool | None:
    """True / False for a word of :data:`TRUE_WORDS` / :data:`FALSE_WORDS` (a bool is itself; None is False), None
    for anything else (the caller says what is wrong)."""
    if isinstance(value, bool):
        return value
    text = "" if value is None else str(value).strip().lower()
    if text in TRUE_WORDS:
        return True
    return False if text in FALSE_WORDS else None
