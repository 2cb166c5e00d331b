"""A run's cost meter, assembled: its price source, what earlier sessions spent, and the telemetry it reports to."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.telemetry.cost import Carried, CostMeter, RunShape, process_start
from engine.telemetry.cost_ledger import carried
from engine.telemetry.prices import price_source_for


def meter_for(cfg: Any, events: Path, resume_step: int | None, tele: Any) -> CostMeter:
    """The meter for this session: billed from the process's start, carrying on from the events
    file's last cost on a resume (read before this session writes anything)."""
    before = carried(events, resume_step) if resume_step is not None else Carried()
    source = price_source_for(cfg, lambda message: tele.emit("log", level="warning", message=message))
    return CostMeter(source, tele.emit, RunShape.of(cfg), before, since=process_start(), lock=tele.lock)
