"""Where the price per hour comes from: the config, EC2 (spot price history or the Pricing API), or the shipped table.

Sources are tried in that order. The live look-ups run on a background thread (`PriceFeed`),
so `price()` never waits on the network: the training loop and the cockpit only ever read
the newest price found. A look-up that fails falls back to the next source and says so once
(a `log` warning event). The spot price is looked up again every few minutes, as it changes.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from dataclasses import dataclass, replace
from decimal import Decimal, InvalidOperation
from typing import Any, Callable, Protocol

from engine.cloud.facts import InstanceFacts
from engine.config.price_table import PriceTable, load_table

#: The Pricing API is served only from these regions (any of them answers for every region).
PRICING_REGIONS = ("us-east-1", "ap-south-1", "eu-central-1")
PRICING_REGION = PRICING_REGIONS[0]
#: How often the spot price is looked up again (it changes at most a few times a day).
SPOT_REFRESH_S = 300.0
#: Spot price history pages followed at most (one type in one zone needs one or two).
MAX_PAGES = 20


@dataclass(frozen=True)
class Price:
    """A price per hour (exact), where it came from, and when it was last known to be true.

    `checked_at` is a Unix time (None: the config's price, true by definition); the price's
    age is counted from it. On spot, `on_demand` is the same instance's on-demand price (None
    where unknown), against which the savings are counted.
    """

    per_hour: Decimal
    source: str
    currency: str = "USD"
    checked_at: float | None = None
    lifecycle: str | None = None
    instance_type: str | None = None
    on_demand: Decimal | None = None

    def age_s(self, now: float) -> float | None:
        return None if self.checked_at is None else max(0.0, now - self.checked_at)


class PriceSource(Protocol):
    """Anything that can say what this machine costs now (None: not known, or not yet)."""

    def price(self) -> Price | None: ...


class LookupFailed(Exception):
    """A price look-up that answered nothing usable (the message says what came back)."""


def to_decimal(text: Any, what: str) -> Decimal:
    """A price as AWS writes it ("0.0000000000", "3.06") as an exact, positive Decimal."""
    try:
        value = Decimal(str(text))
    except InvalidOperation:
        raise LookupFailed(f"{what}: {text!r} is not a number") from None
    if not value.is_finite() or value <= 0:
        raise LookupFailed(f"{what}: {text!r} is not a positive price")
    return value


class ConfigPrice:
    """The price written in the config or on the command line (`cost.price_per_hour`, `cost.currency`)."""

    def __init__(self, per_hour: float | str | Decimal | None, currency: str = "USD"):
        self.fixed = None if per_hour is None else Price(Decimal(str(per_hour)), "config", currency)

    def price(self) -> Price | None:
        return self.fixed


# ---- EC2: spot price history and the Pricing API -------------------------------------------------


def spot_price(ec2: Any, instance_type: str, zone: str, now: dt.datetime | None = None) -> tuple[Decimal, dt.datetime]:
    """The newest Linux/UNIX spot price of this type in this zone, and since when it holds.

    Every page is followed (NextToken); entries for other zones or types are ignored, and the
    newest by timestamp wins whatever order they come in.
    """
    now = now or dt.datetime.now(dt.timezone.utc)
    args: dict[str, Any] = {"InstanceTypes": [instance_type], "ProductDescriptions": ["Linux/UNIX"],
                            "AvailabilityZone": zone, "StartTime": now}
    best: tuple[dt.datetime, Decimal] | None = None
    for _ in range(MAX_PAGES):
        page = ec2.describe_spot_price_history(**args)
        for entry in page.get("SpotPriceHistory", []):
            if entry.get("AvailabilityZone") != zone or entry.get("InstanceType") != instance_type:
                continue
            stamp = entry["Timestamp"]
            if best is None or stamp > best[0]:
                best = (stamp, to_decimal(entry.get("SpotPrice"), f"spot price of {instance_type} in {zone}"))
        token = page.get("NextToken")
        if not token:
            break
        args["NextToken"] = token
    if best is None:
        raise LookupFailed(f"no Linux/UNIX spot price for {instance_type} in {zone}")
    return best[1], best[0]


PRICING_FILTERS = (("operatingSystem", "Linux"), ("tenancy", "Shared"), ("capacitystatus", "Used"),
                   ("preInstalledSw", "NA"))


def on_demand_price(pricing: Any, instance_type: str, region: str) -> Decimal:
    """The Linux, shared-tenancy on-demand price per hour of this type in this region (Pricing API).

    Exactly one product must match; its OnDemand terms must hold exactly one hourly price.
    """
    filters = [{"Type": "TERM_MATCH", "Field": "instanceType", "Value": instance_type},
               {"Type": "TERM_MATCH", "Field": "regionCode", "Value": region}]
    filters += [{"Type": "TERM_MATCH", "Field": f, "Value": v} for f, v in PRICING_FILTERS]
    args: dict[str, Any] = {"ServiceCode": "AmazonEC2", "Filters": filters, "FormatVersion": "aws_v1"}
    products: list[str] = []
    for _ in range(MAX_PAGES):
        page = pricing.get_products(**args)
        products += page.get("PriceList", [])
        if not page.get("NextToken"):
            break
        args["NextToken"] = page["NextToken"]
    what = f"on-demand price of {instance_type} in {region}"
    if len(products) != 1:
        raise LookupFailed(f"{what}: expected exactly one product, the Pricing API returned {len(products)}")
    doc = json.loads(products[0]) if isinstance(products[0], str) else products[0]
    hourly = [d for offer in (doc.get("terms", {}).get("OnDemand") or {}).values()
              for d in (offer.get("priceDimensions") or {}).values() if d.get("unit") == "Hrs"]
    if len(hourly) != 1:
        raise LookupFailed(f"{what}: expected one hourly OnDemand price dimension, found {len(hourly)}")
    return to_decimal(hourly[0].get("pricePerUnit", {}).get("USD"), what)


def boto_client(service: str, region: str) -> Any:
    """A boto3 client with short timeouts and few retries (credentials: boto3's standard chain)."""
    import boto3
    from botocore.config import Config

    return boto3.client(service, region_name=region, config=Config(
        connect_timeout=3, read_timeout=10, retries={"max_attempts": 3, "mode": "standard"}))


# ---- the chain ---------------------------------------------------------------------------------


@dataclass
class Lookup:
    """One step of the chain: a name for messages, the look-up, and whether it is followed over time."""

    name: str
    fetch: Callable[[], Price | None]
    live: bool = False


def ec2_lookups(facts: InstanceFacts, clients: Callable[[str, str], Any] = boto_client,
                table: PriceTable | None = None, clock: Callable[[], float] = time.time) -> list[Lookup]:
    """The look-ups for this instance: spot history or the Pricing API, then the table."""
    table = table or load_table()
    cached: dict[str, Decimal | None] = {}

    def on_demand() -> Decimal:
        if "od" not in cached:
            cached["od"] = on_demand_price(clients("pricing", PRICING_REGION), facts.instance_type, facts.region)
        return cached["od"]

    def table_on_demand() -> Decimal | None:
        row = table.get(facts.instance_type)
        return row.per_hour if row else None

    def spot() -> Price:
        per_hour, _since = spot_price(clients("ec2", facts.region), facts.instance_type, facts.zone)
        try:
            od = on_demand()
        except Exception:  # noqa: BLE001 - savings then count against the table's price
            od = table_on_demand()
        return Price(per_hour, "ec2 spot price history", "USD", clock(), facts.lifecycle, facts.instance_type, od)

    def pricing() -> Price:
        return Price(on_demand(), "aws pricing api", "USD", clock(), facts.lifecycle, facts.instance_type)

    def from_table() -> Price | None:
        found = table_price(table, facts.instance_type)
        return found and replace(found, lifecycle=facts.lifecycle)

    first = Lookup("the EC2 spot price history", spot, live=True) if facts.spot else Lookup(
        "the AWS Pricing API", pricing)
    return [first, Lookup(f"the {table.source}", from_table)]


def table_price(table: PriceTable, instance_type: str) -> Price | None:
    """The table's on-demand price of this type (None: not in the table)."""
    row = table.get(instance_type)
    if row is None:
        return None
    return Price(row.per_hour, table.source, table.currency, table.as_of_unix, None, instance_type, row.per_hour)


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]


class PriceFeed:
    """The price of this machine, found off the training thread: `price()` never blocks.

    The look-ups are tried in order on a daemon thread; the first that answers is kept, and
    one that is `live` (the spot price) is asked again every `refresh_s`. A failure is said
    once per look-up through `warn`: a first failure falls back to the next look-up, a failed
    refresh keeps the price found before (its age shows how old it is).
    """

    def __init__(self, lookups: list[Lookup] | Callable[[], list[Lookup]], warn: Callable[[str], None],
                 refresh_s: float = SPOT_REFRESH_S):
        self.lookups, self.warn, self.refresh_s = lookups, warn, refresh_s
        self.current: Price | None = None
        self.stopped = threading.Event()
        self.resolved = threading.Event()  # the chain has been walked once (tests wait on it)
        self.warned: set[str] = set()
        self.thread: threading.Thread | None = None

    def price(self) -> Price | None:
        return self.current

    def start(self) -> "PriceFeed":
        self.thread = threading.Thread(target=self._run, name="price-feed", daemon=True)
        self.thread.start()
        return self

    def _say(self, key: str, message: str) -> None:
        if key in self.warned or self.stopped.is_set():
            return
        self.warned.add(key)
        try:
            self.warn(message)
        except Exception:  # noqa: BLE001 - telemetry closing under us: nothing to tell
            pass

    def _run(self) -> None:
        try:
            lookups = self.lookups() if callable(self.lookups) else list(self.lookups)
        except Exception as exc:  # noqa: BLE001 - the metadata service failing: no EC2 price
            self._say("chain", f"price look-up failed ({_short(exc)}); no price is known")
            lookups = []
        found: Lookup | None = None
        for i, lookup in enumerate(lookups):
            if self.stopped.is_set():
                break
            try:
                price = lookup.fetch()
            except Exception as exc:  # noqa: BLE001 - any failure falls back
                rest = lookups[i + 1:]
                then = f"falling back to {rest[0].name}" if rest else "no price is known"
                self._say(lookup.name, f"price look-up from {lookup.name} failed ({_short(exc)}); {then}")
                continue
            if price is not None:
                self.current, found = price, lookup
                break
        if found is None and lookups:
            self._say("none", f"no price is known for this machine ({', '.join(lk.name for lk in lookups)} "
                      "gave none); set cost.price_per_hour")
        self.resolved.set()
        while found is not None and found.live and not self.stopped.wait(self.refresh_s):
            try:
                price = found.fetch()
            except Exception as exc:  # noqa: BLE001 - keep the last price; its age grows
                self._say("refresh " + found.name, f"price refresh from {found.name} failed ({_short(exc)}); "
                          "keeping the price found before")
                continue
            if price is not None:
                self.current = price

    def close(self) -> None:
        self.stopped.set()


class FixedPrice:
    """A source that always answers one price (the config's, or none)."""

    def __init__(self, price: Price | None):
        self.fixed = price

    def price(self) -> Price | None:
        return self.fixed

    def close(self) -> None:
        pass


def price_source_for(cfg: Any, warn: Callable[[str], None], facts: Callable[[], InstanceFacts | None] | None = None,
                     clients: Callable[[str, str], Any] = boto_client, refresh_s: float = SPOT_REFRESH_S) -> Any:
    """This run's price source, in order: the config; on EC2 (only where the metadata service may
    be asked), spot history or the Pricing API; then the table (by the instance's type, or
    `cost.instance_type`). Nothing is looked up when the config names a price; nothing at all
    (no thread) when there is nothing to look up."""
    if cfg.cost.price_per_hour is not None:
        return FixedPrice(ConfigPrice(cfg.cost.price_per_hour, cfg.cost.currency).price())
    ask = facts if facts is not None else (lambda: ec2_facts(cfg))
    configured = cfg.cost.instance_type

    def chain() -> list[Lookup]:  # runs on the feed's thread: the metadata is asked there
        table = load_table()
        found = ask()
        lookups = ec2_lookups(found, clients, table) if found is not None else []
        if configured and (found is None or found.instance_type != configured):
            lookups.append(Lookup(f"the {table.source} ({configured}, cost.instance_type)",
                                  lambda: table_price(table, configured)))
        return lookups

    return PriceFeed(chain, warn, refresh_s).start()


def ec2_facts(cfg: Any) -> InstanceFacts | None:
    """This instance's lifecycle, type and zone, or None off EC2 (nothing is sent where the
    metadata service may not be asked: see engine.cloud.detect)."""
    try:
        from engine.cloud.detect import client_for
        from engine.cloud.imds import instance_facts
    except ImportError:
        return None
    client = client_for(cfg)
    return instance_facts(client) if client is not None else None
