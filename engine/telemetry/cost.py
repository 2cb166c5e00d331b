"""What the run costs: a sink that turns step events into cost events, fed by a price source.

The meter reacts to each step event (which carries the training seconds so far and the ETA)
by emitting a `cost` event through the same telemetry, which is why `Telemetry.emit` must be
re-entrant. The price comes from a source: the config's `cost.price_per_hour` is the first;
the spot issue adds the EC2 price list and the spot price history.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol


@dataclass
class Price:
    """A price per hour, where it came from, and its currency."""

    per_hour: float
    source: str
    currency: str = "USD"


class PriceSource(Protocol):
    """Anything that can say what this machine costs now (None: not known)."""

    def price(self) -> Price | None: ...


class ConfigPrice:
    """The price written in the config (`cost.price_per_hour`, `cost.currency`)."""

    def __init__(self, per_hour: float | None, currency: str = "USD"):
        self.per_hour, self.currency = per_hour, currency

    def price(self) -> Price | None:
        return None if self.per_hour is None else Price(self.per_hour, "config", self.currency)


class CostMeter:
    """A telemetry sink: after every step event, a cost event (spent so far, and projected)."""

    def __init__(self, source: PriceSource, emit: Callable[..., Any]):
        self.source, self.emit_event = source, emit

    def emit(self, event: dict[str, Any]) -> None:
        if event["type"] != "step" or not isinstance(event.get("train_s"), (int, float)):
            return
        price = self.source.price()
        if price is None:
            return
        spent = price.per_hour * event["train_s"] / 3600
        projected = spent + price.per_hour * (event.get("eta_s") or 0) / 3600
        self.emit_event("cost", price_per_hour=price.per_hour, source=price.source, accumulated=spent,
                        projected=projected, currency=price.currency)

    def close(self) -> None:
        pass
