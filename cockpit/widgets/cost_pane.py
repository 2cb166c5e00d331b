"""Spot status and accumulated cost, from the engine's spot and cost events."""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widgets import Static

from cockpit.history import RunHistory
from cockpit.sanitize import clean


class CostPane(Static):
    """Spot lifecycle and money."""

    text: reactive[Text] = reactive(Text("not on a cloud instance\nno price set (cost.price_per_hour)"), layout=True)

    def show(self, h: RunHistory, configured_price: float | None = None) -> None:
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
        elif configured_price is not None:
            t.append(f"price {configured_price:.3f}/h (configured)")
        else:
            t.append("no price set (cost.price_per_hour)")
        self.text = t

    def render(self) -> Text:
        return self.text
