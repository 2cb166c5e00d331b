"""Learning rate per step."""

from __future__ import annotations

from cockpit.history import RunHistory
from cockpit.widgets.chart import ChartPane


class LrPane(ChartPane):
    """The learning-rate chart."""

    TITLE = "learning rate"

    def show(self, h: RunHistory) -> None:
        xs, ys = h.lr.points()
        self.chart.draw("learning rate", [(xs, ys, "lr", "magenta")])
