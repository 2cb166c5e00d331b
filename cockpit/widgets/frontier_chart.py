"""The compression frontier as a scatter: accuracy against file size (or CPU latency), the points
no other beats drawn in their own colour and marker, and named."""

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
                                          (True, FRONTIER_COLOUR, "\u25c6", "frontier")):
            chosen = [d for d in self.drawn if d[3] == on]
            if chosen:
                plt.scatter([d[0] for d in chosen], [d[1] for d in chosen], color=colour, marker=marker, label=label)
        spans = [1.0, 1.0]
        if self.drawn:  # room around the points for their labels
            for i, axis in enumerate((plt.xlim, plt.ylim)):
                values = [d[i] for d in self.drawn]
                lo, hi = min(values), max(values)
                pad = (hi - lo) * 0.12 or abs(hi) * 0.05 or 1.0
                axis(lo - pad, hi + pad)
                spans[i] = hi - lo + 2 * pad
        middle = sum(d[0] for d in self.drawn) / len(self.drawn) if self.drawn else 0.0
        for xv, yv, name, on in self.drawn:
            if on:  # named just above the point (not over it), towards the middle of the chart
                left = xv <= middle
                plt.text(name, xv, yv + 0.06 * spans[1], color=FRONTIER_COLOUR, alignment="left" if left else "right")
        self.refresh()
