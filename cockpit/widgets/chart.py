"""A line chart with axes, drawn by plotext (through textual-plotext), and the pane that holds one."""

from __future__ import annotations

import math

from textual.app import ComposeResult
from textual_plotext import PlotextPlot

from cockpit.widgets.pane import Pane

Line = tuple  # (xs, ys, label, colour), or (xs, ys, label, colour, marker): points only, drawn with that marker


def step_ticks(lo: float, hi: float, most: int = 5) -> list[int]:
    """At most `most` whole-number ticks from lo to hi, 1, 2 or 5 times a power of ten apart
    (steps are integers: no "292.5" on an axis)."""
    lo, hi = math.floor(lo), math.ceil(hi)
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(1, most - 1)
    power = 10 ** math.floor(math.log10(raw)) if raw >= 1 else 1
    gap = next((m * power for m in (1, 2, 5, 10) if m * power >= raw), 10 * power)
    first = math.ceil(lo / gap) * gap
    return list(range(first, hi + 1, gap)) or [lo]


class Chart(PlotextPlot):
    """Redraws from a list of lines; the caller decides what they are."""

    def theme_color(self, variable: str, fallback: str) -> str | tuple[int, int, int]:
        """A colour the theme names (e.g. $loss-train), as plotext's (r, g, b)."""
        try:
            value = self.app.current_theme.variables.get(variable, "")
        except Exception:  # noqa: BLE001 - no app or theme yet
            value = ""
        if len(value) == 7 and value.startswith("#"):
            return tuple(int(value[i:i + 2], 16) for i in (1, 3, 5))
        return fallback

    def draw(self, title: str, lines: list[Line], ylabel: str = "", log_y: bool = False) -> None:
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        if ylabel:
            plt.ylabel(ylabel)
        drawn = False
        logged: list[float] = []
        for xs, ys, label, color, *marker in lines:
            if log_y:  # plotted as log10 (plotext's own log scale re-applies itself at every
                # render of the same data); a log axis has no place for zero or less
                kept = [(x, math.log10(y)) for x, y in zip(xs, ys) if y > 0]
                xs, ys = [p[0] for p in kept], [p[1] for p in kept]
                logged += ys
            if xs and marker:  # a marker of its own: points only (few of them: one an epoch)
                plt.scatter(xs, ys, label=label, color=color, marker=marker[0])
                drawn = True
            elif xs:
                plt.plot(xs, ys, label=label, color=color, marker="braille")
                drawn = True
        if drawn:
            every = [x for line in lines for x in line[0]]
            ticks = step_ticks(min(every), max(every))
            plt.xticks(ticks, [str(t) for t in ticks])
        if logged:
            lo, hi = min(logged), max(logged)
            ticks = [lo + (hi - lo) * i / 4 for i in range(5)] if hi > lo else [lo]
            plt.yticks(ticks, [f"{10 ** t:.3g}" for t in ticks])
        self.refresh()


class ChartPane(Pane):
    """A pane that is one chart filling its box."""

    #: plotext redraws its whole canvas: at most once a second.
    INTERVAL_S = 1.0

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.chart = Chart()

    def compose(self) -> ComposeResult:
        yield self.chart
