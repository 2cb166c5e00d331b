"""The spot pane: lifecycle, instance type, price and its source, and a notice's countdown."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Callable

from rich.text import Text

from cockpit.history import RunHistory
from cockpit.sanitize import clean
from cockpit.widgets.pane import TextPane


class SpotPane(TextPane):
    """Shown only once the engine sent a `spot` event (it does on EC2, and nowhere else)."""

    TITLE = "spot instance"

    def __init__(self, *args, clock: Callable[[], float] = time.time, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.clock = clock  # the countdown is by this clock (the tests fix it)

    def on_mount(self) -> None:
        super().on_mount()
        self.display = False

    def show(self, h: RunHistory) -> None:
        s = h.spot
        self.display = bool(s)
        if not s:
            return
        t = Text()
        t.append(f"{clean(str(s.get('lifecycle', '?')))[:12]} {clean(str(s.get('instance_type', '?')))[:20]}  "
                 f"{clean(str(s.get('zone', '')))[:16]}\n")
        c = h.cost
        if isinstance(c.get("price_per_hour"), (int, float)):
            cur = clean(str(c.get("currency", "USD")))[:8]
            age = c.get("price_age_s")
            aged = f", {_duration(age)} old" if isinstance(age, (int, float)) else ""
            t.append(f"{c['price_per_hour']:.4f} {cur}/h ({clean(str(c.get('source', '?')))[:24]}{aged})\n")
        else:
            t.append("price: not known yet\n", style="dim")
        if s.get("rebalance_time") and not s.get("notice_time"):
            t.append("rebalance recommended: checkpointed early\n", style="yellow")
        at = _unix(s.get("notice_time"))
        action = clean(str(s.get("action", "terminate")))[:12]
        if s.get("kind") == "preempted":
            left = s.get("seconds_left")
            spare = f", {left:.0f} s to spare" if isinstance(left, (int, float)) else ""
            t.append(f"preempted: saved{spare}\n", style="bold red")
        if at is not None:
            left = at - self.clock()
            when = f"in {_duration(left)}" if left > 0 else "now"
            t.append(f"interruption ({action}) {when}", style="bold red")
        t.rstrip()
        self.text = t


def _unix(text: object) -> float | None:
    """An IMDS time (2026-12-01T23:10:00Z) as unix seconds; None if absent or unreadable."""
    if not isinstance(text, str):
        return None
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp()


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds < 3600 else f"{seconds // 3600} h {seconds % 3600 // 60} min"
