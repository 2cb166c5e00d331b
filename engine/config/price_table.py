"""The shipped table of common GPU instances' on-demand prices (instance_prices.toml), standard library only."""

from __future__ import annotations

import calendar
import datetime as dt
import tomllib
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from pathlib import Path

TABLE_FILE = Path(__file__).with_name("instance_prices.toml")


@dataclass(frozen=True)
class Instance:
    """One row: an instance type, its on-demand price per hour, its GPU model and count."""

    instance_type: str
    per_hour: Decimal
    gpu: str
    gpus: int


@dataclass(frozen=True)
class PriceTable:
    """The rows, the date the prices were taken from AWS, their region and currency."""

    as_of: dt.date
    region: str
    currency: str
    instances: dict[str, Instance]

    @property
    def as_of_unix(self) -> float:
        """Midnight UTC of the table's date, as Unix seconds (a price's age counts from it)."""
        return float(calendar.timegm(self.as_of.timetuple()))

    @property
    def source(self) -> str:
        return f"price table {self.as_of.isoformat()}"

    def get(self, instance_type: str) -> Instance | None:
        return self.instances.get(instance_type)


@lru_cache(maxsize=4)
def load_table(path: Path = TABLE_FILE) -> PriceTable:
    """Parse the table (cached); prices are strings in the file, so they become exact Decimals."""
    doc = tomllib.loads(path.read_text(encoding="utf-8"))
    rows = {name: Instance(name, Decimal(str(row["price_per_hour"])), str(row["gpu"]), int(row["gpus"]))
            for name, row in doc["instances"].items()}
    return PriceTable(doc["as_of"], str(doc["region"]), str(doc["currency"]), rows)
