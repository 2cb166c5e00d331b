"""Spot status and accumulated cost, from the engine's spot and cost events."""

from __future__ import annotations

from rich.text import Text

from cockpit.history import RunHistory
from cockpit.sanitize import clean
from cockpit.widgets.pane import TextPane


class CostPane(TextPane):
    """Spot lifecycle and money."""

    TITLE = "spot & cost"
    PLACEHOLDER = "not on a cloud instance\nno price set (cost.price_per_hour)"

    def show(self, h: RunHistory) -> None:
        t = Text()
        spot = h.spot
        if spot:
            t.append(clean(f"{spot.get('lifecycle', '?')} {spot.get('instance_type', '')}")[:80] + "\n")
            if spot.get("notice"):
                t.append(f"interruption notice: {clean(str(spot['notice']))[:200]}\n", style="bold red")
        else:
            t.append("not on a cloud instance\n")
        c = h.cost
        if c:
            cur = clean(str(c.get("currency", "USD")))[:8]
            t.append(f"{c.get('accumulated', 0):.4f} {cur} so far\n")
            t.append(f"{c.get('projected', 0):.4f} {cur} projected\n")
            t.append(f"at {c.get('price_per_hour', 0):.3f} {cur}/h ({clean(str(c.get('source', '?')))[:20]})")
        else:
            t.append("no price set (cost.price_per_hour)")
        self.text = t
