"""Make untrusted text (events, logs) safe to show: no escapes, no control characters."""

from __future__ import annotations

import re

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(\x07|\x1b\\)|\x1b[@-_]")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def clean(text: str) -> str:
    """Strip ANSI escape sequences and control characters. Rich markup stays literal
    because every pane builds `rich.text.Text` objects, which never parse markup."""
    return _CONTROL.sub("?", _ANSI.sub("", text))
