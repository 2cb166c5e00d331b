"""Price sources: the spot price history and the Pricing API (botocore Stubber, realistic documents),
the shipped table, and the chain config > EC2 > table with a failing look-up that falls back and says so."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import boto3
import pytest
from botocore.stub import ANY, Stubber

from engine.cloud.facts import InstanceFacts
from engine.config.loading import validate
from engine.config.price_table import load_table
from contracts.errors import BadInput
from engine.telemetry.flops import peak_tflops
from engine.telemetry.prices import (
    LookupFailed, PriceFeed, ec2_lookups, on_demand_price, price_source_for, spot_price)

UTC = dt.timezone.utc
SPOT = InstanceFacts("spot", "g5.xlarge", "us-east-1b")
ON_DEMAND = InstanceFacts("on-demand", "p4d.24xlarge", "us-west-2a")


def entry(zone: str, price: str, hour: int, kind: str = "g5.xlarge") -> dict:
    return {"AvailabilityZone": zone, "InstanceType": kind, "ProductDescription": "Linux/UNIX",
            "SpotPrice": price, "Timestamp": dt.datetime(2025, 3, 1, hour, 0, tzinfo=UTC)}


SPOT_PAGES = [  # several zones, out of order, over two pages
    {"SpotPriceHistory": [entry("us-east-1a", "0.301000", 9), entry("us-east-1b", "0.412300", 7),
                          entry("us-east-1c", "0.299900", 11)], "NextToken": "page-2"},
    {"SpotPriceHistory": [entry("us-east-1b", "0.455100", 10), entry("us-east-1b", "0.433000", 8),
                          entry("us-east-1d", "0.100000", 12)], "NextToken": ""},
]


def product(instance_type: str, region: str, usd: str) -> str:
    """One PriceList entry as the Pricing API returns it: a JSON string."""
    sku = "8XJ2V4FNCKXJ5G7T"
    return json.dumps({
        "product": {"productFamily": "Compute Instance", "sku": sku, "attributes": {
            "instanceType": instance_type, "regionCode": region, "location": "US West (Oregon)",
            "operatingSystem": "Linux", "tenancy": "Shared", "capacitystatus": "Used", "preInstalledSw": "NA",
            "licenseModel": "No License required", "gpu": "8", "vcpu": "96", "servicecode": "AmazonEC2"}},
        "serviceCode": "AmazonEC2",
        "terms": {
            "OnDemand": {f"{sku}.JRTCKXETXF": {
                "offerTermCode": "JRTCKXETXF", "sku": sku, "effectiveDate": "2025-02-01T00:00:00Z",
                "termAttributes": {},
                "priceDimensions": {f"{sku}.JRTCKXETXF.6YS6EN2CT7": {
                    "rateCode": f"{sku}.JRTCKXETXF.6YS6EN2CT7", "unit": "Hrs", "beginRange": "0", "endRange": "Inf",
                    "description": f"${usd} per On Demand Linux {instance_type} Instance Hour",
                    "appliesTo": [], "pricePerUnit": {"USD": usd}}}}},
            "Reserved": {f"{sku}.38NPMPTW36": {"priceDimensions": {f"{sku}.38NPMPTW36.2TG2D8R56U": {
                "unit": "Quantity", "pricePerUnit": {"USD": "150000"}}}}}},
        "version": "20250301000000", "publicationDate": "2025-03-01T00:00:00Z"})


def pricing_filters(instance_type: str, region: str) -> list[dict]:
    pairs = [("instanceType", instance_type), ("regionCode", region), ("operatingSystem", "Linux"),
             ("tenancy", "Shared"), ("capacitystatus", "Used"), ("preInstalledSw", "NA")]
    return [{"Type": "TERM_MATCH", "Field": f, "Value": v} for f, v in pairs]


def stubbed(service: str, region: str):
    client = boto3.client(service, region_name=region)
    return client, Stubber(client)


def test_spot_price_follows_every_page_and_takes_the_newest_in_its_zone():
    ec2, stub = stubbed("ec2", "us-east-1")
    base = {"InstanceTypes": ["g5.xlarge"], "ProductDescriptions": ["Linux/UNIX"], "AvailabilityZone": "us-east-1b",
            "StartTime": ANY}
    stub.add_response("describe_spot_price_history", SPOT_PAGES[0], base)
    stub.add_response("describe_spot_price_history", SPOT_PAGES[1], {**base, "NextToken": "page-2"})
    with stub:
        price, since = spot_price(ec2, "g5.xlarge", "us-east-1b")
    stub.assert_no_pending_responses()
    assert price == Decimal("0.455100") and isinstance(price, Decimal)
    assert since == dt.datetime(2025, 3, 1, 10, tzinfo=UTC)


def test_spot_price_with_no_entry_for_the_zone_fails():
    ec2, stub = stubbed("ec2", "us-east-1")
    stub.add_response("describe_spot_price_history", {"SpotPriceHistory": [entry("us-east-1a", "0.3", 9)]})
    with stub, pytest.raises(LookupFailed, match="us-east-1b"):
        spot_price(ec2, "g5.xlarge", "us-east-1b")


def test_on_demand_price_from_one_product_in_a_pinned_region():
    pricing, stub = stubbed("pricing", "us-east-1")
    stub.add_response("get_products", {"FormatVersion": "aws_v1", "PriceList": [product("p4d.24xlarge", "us-west-2", "21.9576000000")]},
                      {"ServiceCode": "AmazonEC2", "Filters": pricing_filters("p4d.24xlarge", "us-west-2"),
                       "FormatVersion": "aws_v1"})
    with stub:
        assert on_demand_price(pricing, "p4d.24xlarge", "us-west-2") == Decimal("21.9576000000")
    two = [product("p4d.24xlarge", "us-west-2", "1"), product("p4d.24xlarge", "us-west-2", "2")]
    stub.add_response("get_products", {"FormatVersion": "aws_v1", "PriceList": two})
    stub.add_response("get_products", {"FormatVersion": "aws_v1", "PriceList": []})
    with stub:
        with pytest.raises(LookupFailed, match="exactly one product.*2"):
            on_demand_price(pricing, "p4d.24xlarge", "us-west-2")
        with pytest.raises(LookupFailed, match="exactly one product.*0"):
            on_demand_price(pricing, "p4d.24xlarge", "us-west-2")


class Clients:
    """boto3 clients with Stubbers, as `clients(service, region)` hands them out (regions recorded)."""

    def __init__(self):
        self.made: dict[tuple[str, str], tuple] = {}

    def __call__(self, service: str, region: str):
        if (service, region) not in self.made:
            self.made[(service, region)] = stubbed(service, region)
            self.made[(service, region)][1].activate()
        return self.made[(service, region)][0]

    def stub(self, service: str, region: str) -> Stubber:
        self(service, region)
        return self.made[(service, region)][1]


def resolved(feed: PriceFeed) -> PriceFeed:
    assert feed.resolved.wait(30), "the feed never finished its look-ups"
    return feed


def test_spot_instance_gets_the_spot_price_and_savings_against_the_pricing_api():
    clients = Clients()
    clients.stub("ec2", "us-east-1").add_response("describe_spot_price_history", SPOT_PAGES[1])
    clients.stub("pricing", "us-east-1").add_response(
        "get_products", {"FormatVersion": "aws_v1", "PriceList": [product("g5.xlarge", "us-east-1", "1.0060000000")]})
    warnings: list[str] = []
    feed = resolved(PriceFeed(ec2_lookups(SPOT, clients, clock=lambda: 5000.0), warnings.append).start())
    p = feed.price()
    assert (p.per_hour, p.source, p.lifecycle, p.on_demand) == (Decimal("0.455100"), "ec2 spot price history", "spot",
                                                                Decimal("1.0060000000"))
    assert p.age_s(5060.0) == 60 and not warnings
    assert set(clients.made) == {("ec2", "us-east-1"), ("pricing", "us-east-1")}  # the zone's region; pricing pinned


def test_the_spot_price_is_followed_as_it_changes():
    clients = Clients()
    ec2 = clients.stub("ec2", "us-east-1")
    ec2.add_response("describe_spot_price_history", {"SpotPriceHistory": [entry("us-east-1b", "0.40", 9)]})
    ec2.add_client_error("describe_spot_price_history", "RequestLimitExceeded", "Request limit exceeded.")
    ec2.add_response("describe_spot_price_history", {"SpotPriceHistory": [entry("us-east-1b", "0.52", 10)]})
    clients.stub("pricing", "us-east-1").add_client_error("get_products", "AccessDeniedException", "no pricing:GetProducts")
    warnings: list[str] = []
    feed = resolved(PriceFeed(ec2_lookups(SPOT, clients), warnings.append, refresh_s=0.01).start())
    try:
        assert feed.price().per_hour == Decimal("0.40")
        assert feed.price().on_demand == Decimal("1.006"), "savings count against the table when Pricing is denied"
        from conftest import wait_for

        wait_for(lambda: feed.price().per_hour == Decimal("0.52"), timeout=30, what="the new spot price")
    finally:
        feed.close()
    assert len(warnings) == 1 and "refresh" in warnings[0] and "RequestLimitExceeded" in warnings[0]
    assert "keeping the price found before" in warnings[0]


def test_failing_pricing_api_falls_back_to_the_table_and_says_so_once():
    clients = Clients()
    clients.stub("pricing", "us-east-1").add_client_error(
        "get_products", "AccessDeniedException", "User is not authorized to perform: pricing:GetProducts")
    warnings: list[str] = []
    feed = resolved(PriceFeed(ec2_lookups(ON_DEMAND, clients), warnings.append).start())
    p = feed.price()
    table = load_table()
    assert p.per_hour == Decimal("32.7726") and p.source == f"price table {table.as_of.isoformat()}"
    assert p.lifecycle == "on-demand" and p.age_s(table.as_of_unix + 86400) == 86400
    (message,) = warnings
    assert "AWS Pricing API failed" in message and "AccessDenied" in message and "falling back to the price table" in message


def test_config_price_wins_and_nothing_is_looked_up():
    cfg = validate({"cost": {"price_per_hour": 2.5}})

    def never():
        raise AssertionError("the metadata must not be asked when the config names a price")

    source = price_source_for(cfg, print, facts=never, clients=never)
    p = source.price()
    assert p.per_hour == Decimal("2.5") and p.source == "config" and p.age_s(1e9) is None


def test_chain_on_ec2_then_the_configured_table_type_off_ec2():
    cfg = validate({"cost": {"instance_type": "g6.xlarge"}})
    clients = Clients()
    clients.stub("pricing", "us-east-1").add_response(
        "get_products", {"FormatVersion": "aws_v1", "PriceList": [product("p4d.24xlarge", "us-west-2", "21.9576")]})
    on_ec2 = resolved(price_source_for(cfg, print, facts=lambda: ON_DEMAND, clients=clients))
    assert (on_ec2.price().per_hour, on_ec2.price().source) == (Decimal("21.9576"), "aws pricing api")
    warnings: list[str] = []
    off_ec2 = resolved(price_source_for(cfg, warnings.append, facts=lambda: None, clients=clients))
    assert off_ec2.price().per_hour == Decimal("0.8048") and off_ec2.price().instance_type == "g6.xlarge"
    assert not warnings
    nothing = resolved(price_source_for(validate({}), warnings.append, facts=lambda: None, clients=clients))
    assert nothing.price() is None and not warnings, "off EC2 with no price: silence, no look-ups"


def test_the_table_is_dated_exact_and_every_gpu_has_a_peak():
    table = load_table()
    assert table.as_of.year >= 2024 and table.currency == "USD" and table.region == "us-east-1"
    for name in ("p5.48xlarge", "p4d.24xlarge", "g5.xlarge", "g5.48xlarge", "g6.xlarge", "g4dn.xlarge", "p3.2xlarge"):
        row = table.get(name)
        assert row is not None and isinstance(row.per_hour, Decimal) and row.gpus >= 1
    assert all(peak_tflops(row.gpu) for row in table.instances.values())


def test_an_unknown_instance_type_is_refused_naming_the_field():
    with pytest.raises(BadInput, match=r"cost.instance_type='p5.48xlarg'.*did you mean 'p5.48xlarge'"):
        validate({"cost": {"instance_type": "p5.48xlarg"}})
