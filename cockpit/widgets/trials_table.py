"""The trials of one study as a table, the best-so-far chart and the parameter importances."""

from __future__ import annotations

import math

from rich.text import Text
from textual.widgets import DataTable

from cockpit.sanitize import clean
from cockpit.sweeps import StudyView, TrialRow, fmt_duration, fmt_value
from cockpit.trial_projection import TrialProjections, cell as projection_cell
from cockpit.widgets.chart import ChartPane
from cockpit.widgets.pane import TextPane

#: The sort orders `o` cycles through, before one per parameter.
SORTS = ("number", "metric", "state", "epochs", "duration")
BEST_MARK = "*"  # ASCII: a star is of ambiguous width, and terminals disagree
#: Trial states, most interesting first (for sorting by state).
STATE_ORDER = {"running": 0, "waiting": 1, "complete": 2, "pruned": 3, "fail": 4}


def sort_keys(view: StudyView) -> list[str]:
    return [*SORTS, *(f"param:{p}" for p in view.param_names)]


def sort_rows(view: StudyView, key: str) -> list[TrialRow]:
    """The trials in `key` order: the metric best first (trials without one last), numbers and
    epochs ascending, durations longest first, parameters ascending (numbers before text)."""
    rows = list(view.trials)
    if key == "metric":
        sign = -1 if view.direction == "maximize" else 1
        return sorted(rows, key=lambda r: (r.value is None or not math.isfinite(r.value),
                                           sign * r.value if r.value is not None and math.isfinite(r.value) else 0,
                                           r.number))
    if key == "state":
        return sorted(rows, key=lambda r: (STATE_ORDER.get(r.state, 9), r.number))
    if key == "epochs":
        return sorted(rows, key=lambda r: (r.epochs, r.number))
    if key == "duration":
        return sorted(rows, key=lambda r: (-(r.duration_s or 0), r.number))
    if key.startswith("param:"):
        name = key[len("param:"):]

        def by_param(r: TrialRow):
            v = r.params.get(name)
            if v is None:
                return (2, 0, "", r.number)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                return (0, v, "", r.number)
            return (1, 0, str(v), r.number)

        return sorted(rows, key=by_param)
    return sorted(rows, key=lambda r: r.number)


def short_names(params: list[str]) -> list[str]:
    """Column headers for dotted parameter names: the last part where that is unambiguous."""
    lasts = [p.rsplit(".", 1)[-1] for p in params]
    return [last if lasts.count(last) == 1 else p for p, last in zip(params, lasts)]


def metric_columns(view: StudyView | None) -> list[str]:
    """The value columns: one per objective (several), else the study's metric."""
    if view is not None and view.multi:
        return [m for m, _ in view.objectives]
    return [view.metric if view else "value"]


def value_cells(view: StudyView, r: TrialRow) -> list[str]:
    if view.multi:
        return [fmt_value(v) for v in r.values] if r.values else [""] * len(view.objectives)
    return [fmt_value(r.value) if r.value is not None else ""]


class TrialsTable(DataTable):
    """One row per trial (key: the trial number); the best trial (or, with several objectives,
    each trial of the Pareto front) marked with a star. The cursor stays on the trial it was on
    across refreshes and re-sorts."""

    def __init__(self, **kwargs) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        self.columns_shown: tuple = ()
        self.projections = TrialProjections()  # each trial's newest projection (train.target)

    def show(self, view: StudyView | None, sort: str = "number") -> None:
        metrics = metric_columns(view)
        params = view.param_names if view else []
        projected = {r.number: projection_cell(self.projections.newest(r.run_dir)) for r in view.trials} if view else {}
        extra = ("projection",) if any(projected.values()) else ()  # only where a trial has a target
        header = ("trial", "state", *short_names(params), *metrics, "epochs", "duration", *extra)
        selected = self.highlighted_number()
        if (header, sort) != self.columns_shown:
            self.clear(columns=True)
            labels = [*header]
            if sort != "number":  # say which column orders the rows
                for i, name in enumerate(header):
                    param = params[i - 2] if 2 <= i < 2 + len(params) else None
                    if (sort == "metric" and i == 2 + len(params)) or (sort == name and param is None) \
                            or (param is not None and sort == f"param:{param}"):
                        labels[i] = f"{name} ▼"
            self.add_columns(*(Text(clean(str(h))[:24]) for h in labels))
            self.columns_shown = (header, sort)
        else:
            self.clear()
        if view is None:
            return
        for r in sort_rows(view, sort):
            mark = f"{r.number} {BEST_MARK}" if r.best else str(r.number)
            state = r.state if r.same_as is None else f"{r.state}: same as {r.same_as}"  # its value reused
            cells = [mark, state, *(fmt_value(r.params.get(p, "")) for p in view.param_names),
                     *value_cells(view, r), str(r.epochs), fmt_duration(r.duration_s),
                     *((projected[r.number],) if extra else ())]
            style = "bold" if r.best else ""
            self.add_row(*(Text(clean(c)[:40], style=style) for c in cells), key=str(r.number))
        if selected is not None and str(selected) in self.rows:
            self.move_cursor(row=self.get_row_index(str(selected)), animate=False)

    def highlighted_number(self) -> int | None:
        if not self.row_count or not self.is_valid_row_index(self.cursor_row):
            return None
        return int(str(self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value))


class BestChartPane(ChartPane):
    """The best value so far, trial after trial."""

    TITLE = "best so far"

    def show_study(self, view: StudyView | None) -> None:
        xs, ys = view.best_so_far if view else ([], [])
        self.chart.draw("best", [(xs, ys, view.metric if view else "", self.chart.theme_color("loss-val", "orange"))])
        if len(xs) > 1:
            self.chart.plt.xlim(xs[0], xs[-1])  # the line ends at the last complete trial, inside the frame


class ImportancePane(TextPane):
    """Optuna's parameter importances (fANOVA), as bars."""

    TITLE = "parameter importances"
    PLACEHOLDER = "no study yet"
    BAR = 16

    def show_study(self, view: StudyView | None) -> None:
        if view is None:
            self.text = Text(self.PLACEHOLDER)
            return
        if not view.importances:
            self.text = Text(clean(view.note or "not computed yet")[:200])
            return
        avail = self.content_size.width or 46
        width = min(max(len(n) for n in view.importances), 24, max(6, avail - 11))
        bar = max(4, min(self.BAR, avail - width - 7))
        text = Text()
        for name, share in sorted(view.importances.items(), key=lambda kv: -kv[1]):
            filled = max(0, min(bar, round(share * bar)))
            if text:
                text.append("\n")
            text.append(f"{clean(name)[:width]:<{width}} ")
            text.append("█" * filled, style="bold")
            text.append("░" * (bar - filled))
            text.append(f" {share:.2f}")
        self.text = text
