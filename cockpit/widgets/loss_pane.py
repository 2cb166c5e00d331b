"""Loss: train per step, smoothed, and validation per epoch; `y` in the run screen toggles a log scale."""

from __future__ import annotations

import math

from textual.reactive import reactive

from cockpit.history import RunHistory
from cockpit.widgets.chart import ChartPane

#: Validation points are few (one an epoch): a marker of their own, so they differ from the train
#: curves by shape too, not only by colour (16-colour terminals, colour-blind readers).
VAL_MARKER = "◆"


class LossPane(ChartPane):
    """The loss chart."""

    TITLE = "loss"

    #: A logarithmic y axis (toggled by `y`).
    log_y: reactive[bool] = reactive(False)

    def watch_log_y(self, log_y: bool) -> None:
        self.border_title = "loss (log scale)" if log_y else self.TITLE
        self.drawn_at = -math.inf  # redraw at the screen's next refresh

    def show(self, h: RunHistory) -> None:
        train, smooth, val = h.loss.points(), h.smooth.points(), h.val_loss.points()
        color = self.chart.theme_color
        self.chart.draw("loss", [
            (train[0], train[1], "train", color("loss-train", "gray")),
            (smooth[0], smooth[1], "smoothed", color("loss-smooth", "cyan")),
            (val[0], val[1], "validation", color("loss-val", "orange"), VAL_MARKER),
        ], log_y=self.log_y)
