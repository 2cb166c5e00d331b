"""Throughput: samples/s, steps/s, epoch progress, ETA and, with train.target, the projection to reach it;
achieved TFLOP/s and MFU where counted."""

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


def fmt_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h" if seconds < 172800 else f"{seconds / 86400:.1f} days"


def fmt_projection(p: dict) -> str:
    """The projection's line: "target val_accuracy 0.98: ~step 4,100 (3,800-4,600), 12 min, $0.41",
    "... reached at step 3,900", or the engine's words (not reached, not yet fitted)."""
    if not p:
        return ""
    metric, target, at = p.get("metric", ""), p.get("target"), p.get("projected_step")
    name = f"target {metric} {target:g}" if isinstance(target, (int, float)) else f"target {metric}"
    if p.get("reached") and isinstance(at, (int, float)):
        return f"{name}: reached at step {int(at):,}"
    message = p.get("message", "")
    if not isinstance(at, (int, float)) or "not reached" in message:
        return message
    low, high = p.get("low"), p.get("high")
    text = f"{name}: ~step {int(at):,}"
    if isinstance(low, (int, float)) and (high is None or high != low):
        text += f" ({int(low):,}-{f'{int(high):,}' if isinstance(high, (int, float)) else 'never'})"
    if isinstance(p.get("projected_s"), (int, float)):
        text += f", {fmt_duration(p['projected_s'])}"
    if isinstance(p.get("projected_dollars"), (int, float)):
        text += f", ${p['projected_dollars']:.2f}"
    return text


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
        projection = fmt_projection(h.projection)
        if projection:  # train.target: beside the ETA, what reaching the target will take
            t.append(projection + "\n", style="bold" if h.projection.get("reached") else "")
        elif h.target.get("metric"):  # set live before the first evaluation
            t.append(f"target {h.target['metric']} {h.target['value']:g}: projected from the evaluations\n")
        t.append(spark(h.throughput.points()[1], 32), style="dim")
        tflops, mfu = e.get("tflops"), e.get("mfu")
        if tflops:  # torch's FLOP counter; MFU where the device's peak is known (train.peak_tflops)
            rate = f"{tflops:,.1f} TFLOP/s" if tflops >= 1 else f"{tflops * 1000:,.1f} GFLOP/s"
            t.append(f"\n{rate}" + (f" · MFU {mfu:.0%}" if isinstance(mfu, (int, float)) else ""))
        self.text = t
