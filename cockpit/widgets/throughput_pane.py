"""Throughput: samples/s, steps/s, epoch progress, ETA; achieved TFLOP/s and MFU where counted."""

from __future__ import annotations

from rich.text import Text

from cockpit.history import RunHistory
from cockpit.sparkline import spark
from cockpit.widgets.pane import TextPane


def fmt_eta(seconds: object) -> str:
    if not isinstance(seconds, (int, float)):
        return "?"
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class ThroughputPane(TextPane):
    """How fast the run goes."""

    TITLE = "throughput"
    PLACEHOLDER = "waiting for the first step"

    def show(self, h: RunHistory) -> None:
        e = h.last_step
        if not e:
            return
        done, total = e.get("batch", 0), e.get("batches_per_epoch") or 1
        bar_w = 10
        filled = int(bar_w * max(0.0, min(1.0, done / total)))
        t = Text()
        ranks = e.get("world_size")
        t.append(f"{e.get('samples_per_s', 0):,.0f} samples/s {e.get('steps_per_s', 0):.1f} steps/s"
                 + (f" · {ranks} ranks" if isinstance(ranks, int) and ranks > 1 else "") + "\n")
        t.append(f"ep {int(e.get('epoch', 0)) + 1} ")
        t.append("█" * filled + "░" * (bar_w - filled))
        t.append(f" {done}/{total} ETA {fmt_eta(e.get('eta_s'))}\n")
        t.append(spark(h.throughput.points()[1], 32), style="dim")
        tflops, mfu = e.get("tflops"), e.get("mfu")
        if tflops:  # torch's FLOP counter; MFU where the device's peak is known (train.peak_tflops)
            rate = f"{tflops:,.1f} TFLOP/s" if tflops >= 1 else f"{tflops * 1000:,.1f} GFLOP/s"
            t.append(f"\n{rate}" + (f" · MFU {mfu:.0%}" if isinstance(mfu, (int, float)) else ""))
        self.text = t
