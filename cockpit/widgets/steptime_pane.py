"""Step time: how much of each step waits for data and how much computes."""

from __future__ import annotations

from rich.text import Text

from cockpit.diagnosis import Split, diagnose, split
from cockpit.history import RunHistory
from cockpit.sanitize import clean
from cockpit.widgets.pane import TextPane

#: The bar's parts: label, the theme variable naming its colour, and the colour without one.
PARTS = (("data", "steptime-data", "yellow"), ("compute", "steptime-compute", "green"),
         ("optim", "steptime-optim", "blue"), ("comm", "steptime-comm", "magenta"),
         ("bubble", "steptime-bubble", "red"))


class StepTimePane(TextPane):
    """The split of one step's time, and a one-line diagnosis."""

    TITLE = "step time"
    PLACEHOLDER = "waiting for step timings"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.shown: tuple[Split, dict] | None = None

    def on_mount(self) -> None:
        self.app.theme_changed_signal.subscribe(self, lambda _theme: self.draw())

    def show(self, h: RunHistory) -> None:
        s = split(h.last_step) if h.last_step else None
        if s is not None:
            self.shown = (s, h.doctor)
            self.draw()

    def draw(self) -> None:
        """The bar in the theme's colours, the shares, and the verdict (again on a theme change)."""
        if self.shown is None:
            return
        s, verdict = self.shown
        width, colours = 32, self.app.theme_variables
        t = Text()
        for (label, variable, fallback), share in zip(PARTS, (s.data, s.compute, s.optim, s.comm, s.bubble)):
            t.append(("█" * round(width * share))[:width], style=colours.get(variable, fallback))
        t.append("\n")
        t.append(f"data {s.data:.0%} compute {s.compute:.0%} optim {s.optim:.0%}"
                 + (f" comm {s.comm:.0%}" if s.comm >= 0.005 else "")
                 + (f" bubble {s.bubble:.0%}" if s.bubble >= 0.005 else ""), style="dim")
        if verdict.get("bound") and (verdict.get("field") or verdict.get("message")):
            t.append("\n" + verdict_line(verdict))
        else:
            t.append("\n" + diagnose(s))
        self.text = t


def verdict_line(verdict: dict) -> str:
    """The doctor's verdict as the pane shows it and f repeats it: the value f sets, or the
    engine's own words for why there is none (an older engine's: the field to change)."""
    share = verdict.get("share")
    share = f"{share:.0%}" if isinstance(share, (int, float)) and not isinstance(share, bool) else "?"
    head = f"{clean(str(verdict.get('bound')))}-bound: {share}"
    value = verdict.get("value")
    if isinstance(verdict.get("field"), str) and value is not None and not isinstance(value, (dict, list)):
        return f"{head}; set {clean(verdict['field'])} = {clean(toml_text(value))} (f applies it)"
    if verdict.get("remedy"):
        return f"{head}; {clean(str(verdict['remedy']))}"
    return f"{head}; change {clean(str(verdict.get('field')))} (the doctor names no value)"


def toml_text(value) -> str:
    return str(value).lower() if isinstance(value, bool) else repr(value) if isinstance(value, str) else str(value)

