"""A line chart with axes, drawn by plotext (through textual-plotext)."""

from __future__ import annotations

from textual_plotext import PlotextPlot

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
