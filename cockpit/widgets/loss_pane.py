"""Loss: train per step, smoothed, and validation per epoch."""

from __future__ import annotations

from cockpit.history import RunHistory
from cockpit.widgets.chart import ChartPane


class LossPane(ChartPane):
    """The loss chart."""

    TITLE = "loss"

    def show(self, h: RunHistory) -> None:
        train, smooth, val = h.loss.points(), h.smooth.points(), h.val_loss.points()
        color = self.chart.theme_color
        self.chart.draw("loss", [
            (train[0], train[1], "train", color("loss-train", "gray")),
            (smooth[0], smooth[1], "smoothed", color("loss-smooth", "cyan")),
            (val[0], val[1], "validation", color("loss-val", "orange")),
        ])
