"""Unicode sparklines for Text panes."""

from __future__ import annotations

BARS = " ▁▂▃▄▅▆▇█"


def spark(values: list[float], width: int) -> str:
    """The last `width` values as block characters scaled to their own range."""
    vals = [v for v in values[-width:] if isinstance(v, (int, float))]
    if not vals:
        return ""
    lo, hi = min(vals), max(vals)
    span = hi - lo or 1.0
    return "".join(BARS[1 + int((v - lo) / span * (len(BARS) - 2))] for v in vals)
