"""Learning rate per step."""

from __future__ import annotations

from cockpit.history import RunHistory
from cockpit.widgets.chart import Chart


class LrPane(Chart):
    """The learning-rate chart."""

    def show(self, h: RunHistory) -> None:
        xs, ys = h.lr.points()
        self.draw("learning rate", [(xs, ys, "lr", "magenta")])
