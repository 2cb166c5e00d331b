"""Goodput: where the run's time (and dollars) went, from the engine's newest `ledger` event."""

from __future__ import annotations

from rich.text import Text

from cockpit.goodput import cells, shares
from cockpit.history import RunHistory
from cockpit.widgets.pane import TextPane

#: The bar's width in cells (the side column's pane, less its border and padding).
WIDTH = 32
#: Each class's colour (productive green; every loss its own); a class the engine adds later is grey.
COLOURS = {"productive": "green", "startup": "cyan", "data": "yellow", "communication": "magenta",
           "bubble": "red", "checkpoint": "blue", "evaluation": "bright_blue", "paused": "bright_black",
           "lost": "bright_red", "other": "white"}
FALLBACK = "grey50"
#: Between two entries of the legend.
SEP = " · "


class GoodputPane(TextPane):
    """Shown once the run has a ledger event: goodput, the stacked bar of the classes (productive
    first, then the losses largest first), the largest loss's remedy, dollars, the checkpoint interval."""

    TITLE = "goodput"

    def on_mount(self) -> None:
        super().on_mount()
        self.display = False

    def show(self, h: RunHistory) -> None:
        led = h.ledger
        self.display = bool(led)
        if not led:
            return
        t = Text()
        goodput = led.get("goodput")
        total = led.get("total_s")
        t.append(f"goodput {goodput:.1%}" if goodput is not None else "goodput ?", style="bold")
        if total is not None:
            sessions = int(led.get("sessions") or 1)
            t.append(f" of {_duration(total)}" + (f", {sessions} sessions" if sessions > 1 else ""))
        if led.get("queued_s"):
            t.append(f" (+{_duration(led['queued_s'])} queued)", style="dim")
        t.append("\n")
        parts = shares(led)
        for (name, _), n in zip(parts, cells(parts, WIDTH)):
            t.append("█" * n, style=COLOURS.get(name, FALLBACK))
        losses = [(name, share) for name, share in parts if name != "productive" and share >= 0.0005]
        used = WIDTH  # the legend: the losses in the bar's order, lines no wider than the bar
        for name, share in losses:
            entry = f"{name} {share:.1%}"
            if used + len(SEP) + len(entry) > WIDTH:
                t.append("\n")
                used = 0
            elif used:
                t.append(SEP, style="dim")
                used += len(SEP)
            t.append(entry, style=COLOURS.get(name, FALLBACK))
            used += len(entry)
        worst = led.get("worst")
        if worst:
            seconds = worst.get("seconds")
            t.append(f"\nlargest loss: {worst['class']}" + (f" {_duration(seconds)}" if seconds is not None else ""),
                     style="yellow")
            if worst.get("remedy"):
                t.append(f"\n→ {worst['remedy']}")
        if led.get("dollars") is not None:
            self._dollars(t, led)
        interval = led.get("checkpoint_interval")
        if interval:
            t.append("\n" + interval_line(interval), style="dim")
        self.text = t

    @staticmethod
    def _dollars(t: Text, led: dict) -> None:
        """The run's dollars, and how many of them paid for anything but productive training."""
        total = led["dollars"]
        productive = (led.get("classes") or {}).get("productive", {}).get("dollars")
        t.append(f"\n${total:.4f} in all")
        if productive is not None:
            t.append(f", ${max(0.0, total - productive):.4f} not training", style="yellow" if total > productive else "")


def interval_line(c: dict) -> str:
    """'checkpoint every 120 steps (auto: √(2·C·M), C 0.4 s, M 24 h): ~48 s of work lost per interruption'."""
    why = ["auto: √(2·C·M)"]
    if c.get("stall_s") is not None:
        why.append(f"C {c['stall_s']:.1f} s" + ("" if c.get("stall_measured", True) else " assumed"))
    if c.get("mtbi_s") is not None:
        why.append(f"M {_duration(c['mtbi_s'])}")
    line = f"checkpoint every {int(c['every_steps'])} steps ({', '.join(why)})"
    if c.get("expected_lost_s") is not None:
        line += f": ~{_duration(c['expected_lost_s'])} of work lost per interruption"
    if c.get("source"):
        line += f"; M: {c['source']}"
    return line


def _duration(seconds: float) -> str:
    """0.4 s, 48 s, 3 min 40 s, 24 h, 1 h 30 min, 3.2 d."""
    if seconds < 10:
        return f"{seconds:.2g} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        m, s = divmod(round(seconds), 60)
        return f"{m} min" + (f" {s} s" if s else "")
    if seconds < 2 * 86400:
        h, m = divmod(round(seconds / 60), 60)
        return f"{h} h" + (f" {m} min" if m else "")
    return f"{seconds / 86400:.1f} d"
