"""Loss: train per step, smoothed, and validation per epoch."""

from __future__ import annotations

from cockpit.history import RunHistory
from cockpit.widgets.chart import Chart


class LossPane(Chart):
    """The loss chart."""

    def show(self, h: RunHistory) -> None:
        train, smooth, val = h.loss.points(), h.smooth.points(), h.val_loss.points()
        self.draw("loss", [
            (train[0], train[1], "train", self.theme_color("loss-train", "gray")),
            (smooth[0], smooth[1], "smoothed", self.theme_color("loss-smooth", "cyan")),
            (val[0], val[1], "validation", self.theme_color("loss-val", "orange")),
        ])
