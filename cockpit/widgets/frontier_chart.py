"""The compression frontier as a scatter: accuracy against file size (or CPU latency), the points
no other beats drawn large, in their own colour, and labelled."""

from __future__ import annotations

from typing import Any

from cockpit.frontier import X_AXES, scatter
from cockpit.widgets.chart import Chart

FRONTIER_COLOUR, OTHER_COLOUR = "green", "gray"


class FrontierChart(Chart):
    """`show(points, x)` redraws; `drawn` keeps what it drew: (x, y, name, on the frontier)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.drawn: list[tuple[float, float, str, bool]] = []

    def show(self, points: list[dict[str, Any]], x: str = "bytes") -> None:
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        self.drawn = scatter(points, x)
        plt.xlabel(X_AXES[x][0])
        plt.ylabel("val accuracy (%)")
        for on, colour, marker, label in ((False, OTHER_COLOUR, "dot", "dominated"),
                                          (True, FRONTIER_COLOUR, "hd", "frontier")):
            chosen = [d for d in self.drawn if d[3] == on]
            if chosen:
                plt.scatter([d[0] for d in chosen], [d[1] for d in chosen], color=colour, marker=marker, label=label)
        frontier = sorted((d for d in self.drawn if d[3]), key=lambda d: d[0])
        if len(frontier) > 1:  # the frontier as a line through its points, left to right
            plt.plot([d[0] for d in frontier], [d[1] for d in frontier], color=FRONTIER_COLOUR, marker="braille")
        for xv, yv, name, on in self.drawn:
            if on:
                plt.text(name, xv, yv, color=FRONTIER_COLOUR, alignment="left")
        self.refresh()
