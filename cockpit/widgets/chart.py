"""A line chart with axes, drawn by plotext (through textual-plotext), and the pane that holds one."""

from __future__ import annotations

from textual.app import ComposeResult
from textual_plotext import PlotextPlot

from cockpit.widgets.pane import Pane

Line = tuple[list[float], list[float], str, str]  # xs, ys, label, colour


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
        for xs, ys, label, color in lines:
            if xs:
                plt.plot(xs, ys, label=label, color=color, marker="braille")
                drawn = True
        if log_y and drawn:
            plt.yscale("log")
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
