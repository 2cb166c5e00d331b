"""What the machine is, as EC2's instance metadata tells it: shared by the spot watcher
(engine.cloud.spot), the price sources (engine.telemetry.prices) and the cockpit's spot pane."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class InstanceFacts:
    """One EC2 instance: its lifecycle ("spot" or "on-demand"), type, availability zone and
    region (the zone without its letter: us-east-1a -> us-east-1)."""

    lifecycle: str
    instance_type: str
    zone: str

    @property
    def region(self) -> str:
        return self.zone[:-1] if self.zone and self.zone[-1].isalpha() else self.zone

    @property
    def spot(self) -> bool:
        return self.lifecycle == "spot"
