"""Step time: how much of each step waits for data and how much computes."""

from __future__ import annotations

from rich.text import Text

from cockpit.diagnosis import diagnose, split
from cockpit.history import RunHistory
from cockpit.sanitize import clean
from cockpit.widgets.pane import TextPane


class StepTimePane(TextPane):
    """The split of one step's time, and a one-line diagnosis."""

    TITLE = "step time"
    PLACEHOLDER = "waiting for step timings"

    def show(self, h: RunHistory) -> None:
        s = split(h.last_step) if h.last_step else None
        if s is None:
            return
        width = 32
        t = Text()
        for label, share, style in (("data", s.data, "yellow"), ("compute", s.compute, "green"),
                                    ("optim", s.optim, "blue"), ("comm", s.comm, "magenta")):
            t.append(("█" * round(width * share))[:width], style=style)
        t.append("\n")
        t.append(f"data {s.data:.0%} compute {s.compute:.0%} optim {s.optim:.0%}"
                 + (f" comm {s.comm:.0%}" if s.comm >= 0.005 else ""), style="dim")
        verdict = h.doctor
        if verdict.get("bound") and verdict.get("field"):
            t.append(f"\n{clean(str(verdict['bound']))}-bound: {float(verdict.get('share', 0)):.0%}; "
                     f"change {clean(str(verdict['field']))}")
        else:
            t.append("\n" + diagnose(s))
        self.text = t
