"""Checkpoints as often as they pay: the Young-Daly interval.

With a checkpoint costing C seconds of stalled training and interruptions arriving every M
seconds on average, checkpointing every sqrt(2 C M) seconds minimises the expected time lost
(the stalls plus the work redone after an interruption, on average half an interval): Young
(1974), refined by Daly (2006), whose higher-order terms matter only when C is not much smaller
than M. C is measured (the loop's stall in each save, smoothed); M comes from
`spot.interruptions_per_hour`, else the capacity's interruption-frequency band as AWS's Spot
Instance Advisor publishes it (`spot.interruption_band`, or looked up for this instance's type
and region in the advisor's data file, `spot.advisor_data`), else a conservative default by where
the run is: spot capacity (a notice every few hours at worst) or anything else (a day).

A band is the share of instances of that type and region that AWS reclaimed during the past
month ("<5%", "5-10%", ...). Taken at its upper edge p (">20%" has none: taken as 50%) and as a
constant rate over a month of 730 hours, M = 730 h / -ln(1 - p): about 14,000 h for "<5%", 1,050 h
for ">20%". The advisor's figure is an average over a month and a fleet; interruptions come in
bursts, so an explicit `spot.interruptions_per_hour` wins over it.
"""

from __future__ import annotations

import math

from engine.config.spot_advisor import BANDS

#: Mean time between interruptions when nothing says otherwise (seconds).
DEFAULT_MTBI_S = {"spot": 2 * 3600.0, "other": 24 * 3600.0}
#: The stall assumed before the first checkpoint is measured.
ASSUMED_STALL_S = 1.0
#: A new interval is announced when it moves by more than this share.
CHANGE = 0.1


def young_daly(stall_s: float, mtbi_s: float) -> float:
    """The checkpoint interval in seconds: sqrt(2 C M)."""
    return math.sqrt(2.0 * max(stall_s, 1e-6) * mtbi_s)


MONTH_H = 730.0


def mtbi_of_band(band: str) -> float:
    """M in seconds for an advisor band (module docstring)."""
    return MONTH_H * 3600.0 / -math.log(1.0 - BANDS[band])


def mtbi_for(interruptions_per_hour: float | None, spot: bool, band: str | None = None,
             band_source: str = "spot.interruption_band") -> tuple[float, str]:
    """(M in seconds, where it came from)."""
    if interruptions_per_hour:
        return 3600.0 / interruptions_per_hour, f"spot.interruptions_per_hour = {interruptions_per_hour:g}"
    if band is not None:
        m = mtbi_of_band(band)
        return m, (f"{band_source}: interrupted {band} a month (Spot Instance Advisor), taken as "
                   f"{BANDS[band]:.0%}: one in {m / 3600:,.0f} h")
    kind = "spot" if spot else "other"
    return DEFAULT_MTBI_S[kind], (f"default for spot capacity ({DEFAULT_MTBI_S['spot'] / 3600:g} h)" if spot
                                  else f"default ({DEFAULT_MTBI_S['other'] / 3600:g} h)")


class AutoInterval:
    """checkpoint.every_steps = "auto": the interval in steps, from the measured stall and step time."""

    def __init__(self, mtbi_s: float, source: str):
        self.mtbi_s, self.source = mtbi_s, source
        self.stall_s: float | None = None
        self.every: int | None = None
        self.interval_s: float | None = None

    def set_mtbi(self, mtbi_s: float, source: str) -> None:
        """A new M (the instance's band, learnt once the metadata service answered): the next
        update announces the interval it gives."""
        self.mtbi_s, self.source, self.every = mtbi_s, source, None

    def stalled(self, seconds: float) -> None:
        """One save's stall (an exponential average: a slow first save weighs less over time)."""
        self.stall_s = seconds if self.stall_s is None else 0.7 * self.stall_s + 0.3 * seconds

    def update(self, step_s: float) -> dict | None:
        """Recompute from the step time; the `checkpoint_interval` event's fields when it changed."""
        if step_s <= 0:
            return None
        stall = self.stall_s if self.stall_s is not None else ASSUMED_STALL_S
        interval_s = young_daly(stall, self.mtbi_s)
        every = max(1, round(interval_s / step_s))
        if self.every is not None and abs(every - self.every) <= CHANGE * self.every:
            return None
        self.every, self.interval_s = every, interval_s
        return {"every_steps": every, "interval_s": interval_s, "stall_s": stall, "stall_measured":
                self.stall_s is not None, "mtbi_s": self.mtbi_s, "source": self.source, "step_s": step_s,
                "expected_lost_s": every * step_s / 2}
