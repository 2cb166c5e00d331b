"""The trials of a multi-objective study as a scatter on two of its objectives, the Pareto front highlighted."""

from __future__ import annotations

from cockpit.sanitize import clean
from cockpit.sweeps import StudyView, fmt_value
from cockpit.widgets.chart import ChartPane

#: Point markers: plotext draws these characters (ASCII-safe widths).
FRONT_MARK, OTHER_MARK = "o", "."


def axis_pairs(n: int) -> list[tuple[int, int]]:
    """The (x, y) objective pairs `a` cycles through: (0, 1), (0, 2), ..., (1, 2), ..."""
    return [(i, j) for i in range(n) for j in range(i + 1, n)]


class ParetoPane(ChartPane):
    """Complete trials at (objective x, objective y); the front's points in their own colour and
    joined in order, the others dim. The screen sets `axes` (default the first two objectives)."""

    TITLE = "Pareto front"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        #: The objectives on the x and y axes (indices into the study's objectives).
        self.axes: tuple[int, int] = (0, 1)
        #: What the last draw put on the chart: (trial number, x, y, on the front) per point.
        self.points: list[tuple[int, float, float, bool]] = []

    def show_study(self, view: StudyView | None, axes: tuple[int, int] | None = None) -> None:
        """Draw the study's complete trials (nothing for a study of one objective)."""
        if axes is not None:
            self.axes = axes
        plt = self.chart.plt
        plt.clear_data()
        plt.clear_figure()
        self.points = []
        if view is None or not view.multi:
            self.chart.refresh()
            return
        i, j = self.axes
        (mx, dx), (my, dy) = view.objectives[i], view.objectives[j]
        for r in view.trials:
            if r.values is not None and r.state == "complete":
                self.points.append((r.number, r.values[i], r.values[j], r.best))
        front = sorted((p for p in self.points if p[3]), key=lambda p: p[1])
        others = [p for p in self.points if not p[3]]
        if others:
            plt.scatter([p[1] for p in others], [p[2] for p in others], marker=OTHER_MARK,
                        color=self.chart.theme_color("loss-train", "gray"), label="dominated")
        if front:
            color = self.chart.theme_color("loss-val", "orange")
            if len(front) > 1:
                plt.plot([p[1] for p in front], [p[2] for p in front], color=color, marker="braille")
            plt.scatter([p[1] for p in front], [p[2] for p in front], marker=FRONT_MARK, color=color,
                        label=f"front ({len(front)})")
        plt.xlabel(clean(f"{mx} ({dx[:3]})"))
        plt.ylabel(clean(f"{my} ({dy[:3]})"))
        self.border_title = clean(f"{self.TITLE}: {my} vs {mx} · a: axes")
        self.chart.refresh()

    def describe(self) -> str:
        """The points drawn, as text (the front first): what a test or a screen reader reads."""
        ordered = sorted(self.points, key=lambda p: (not p[3], p[0]))
        return "; ".join(f"trial {n}{' (front)' if f else ''}: {fmt_value(x)}, {fmt_value(y)}" for n, x, y, f in ordered)
