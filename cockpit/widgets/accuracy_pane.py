"""Accuracy: training accuracy at logging steps and validation accuracy per epoch; a language
model's validation perplexity in the title."""

from __future__ import annotations

import math

from cockpit.history import RunHistory
from cockpit.widgets.chart import ChartPane
from cockpit.widgets.loss_pane import VAL_MARKER


class AccuracyPane(ChartPane):
    """The accuracy chart (runs from engines without training accuracy show validation only)."""

    TITLE = "accuracy"

    def show(self, h: RunHistory) -> None:
        metrics = h.last_eval.get("metrics")
        ppl = metrics.get("perplexity") if isinstance(metrics, dict) else None
        known = isinstance(ppl, (int, float)) and not isinstance(ppl, bool) and math.isfinite(ppl)
        self.border_title = f"{self.TITLE} · val perplexity {ppl:,.2f}" if known else self.TITLE
        train, val = h.accuracy.points(), h.val_accuracy.points()
        color = self.chart.theme_color
        self.chart.draw("accuracy", [
            (train[0], train[1], "train", color("acc-train", "green")),
            (val[0], val[1], "validation", color("loss-val", "orange"), VAL_MARKER),
        ])
