"""Every rank as a row of a DataTable, updated in place: only the cells that changed are written."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.widgets import DataTable

from cockpit.ranks import RanksFold, ms, percent, size
from cockpit.sanitize import clean
from cockpit.sparkline import spark
from cockpit.widgets.ranks_pane import SLOWEST, SPARK_WIDTH

#: (column key, label, width): the table's columns in order.
COLUMNS = (("mark", "", 1), ("rank", "rank", 5), ("host", "host", 16), ("local", "local", 5), ("busy", "busy ms", 8),
           ("trend", "trend", SPARK_WIDTH), ("data", "data", 7), ("compute", "compute", 7), ("comm", "comm", 7),
           ("optim", "optim", 7), ("mem", "mem peak", 8), ("gpu", "gpu", 4), ("gpu_mem", "gpu mem", 8),
           ("temp", "temp", 5), ("power", "power", 6))


def _number_cell(value: Any, unit: str) -> str:
    return "-" if not isinstance(value, (int, float)) or isinstance(value, bool) else f"{value:.0f}{unit}"


def cells(rec: dict[str, Any], busy: Any) -> tuple[str, ...]:
    """One rank's row, as strings in COLUMNS order (without the mark)."""
    return (str(rec.get("rank", "?")), clean(str(rec.get("host", "?")))[:32], str(rec.get("local_rank", "?")),
            ms(rec.get("busy_s")), spark(list(busy or ()), SPARK_WIDTH), ms(rec.get("data_s")),
            ms(rec.get("compute_s")), ms(rec.get("comm_s")), ms(rec.get("optim_s")),
            size(rec.get("mem_peak_bytes")), percent(rec.get("gpu_util")), size(rec.get("gpu_mem_bytes")),
            _number_cell(rec.get("gpu_temp_c"), "°C"), _number_cell(rec.get("gpu_power_w"), "W"))


def _styled(value: str, style: str) -> Text | str:
    return Text(value, style=style) if style else value


def busy_key(cell: Any) -> float:
    """The busy column's sort key (unknown sorts last)."""
    try:
        return float(str(cell))
    except ValueError:
        return -1.0


class RanksTable(DataTable):
    """One row per rank, keyed by rank; the slowest rank's row is marked and bold.

    Virtualised twice: DataTable paints only the rows in view, and a new event rewrites only the
    cells of the rows in view (the others are marked stale and brought up to date when scrolled
    to), so an update costs the screen's height, not the number of ranks."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, cursor_type="row", zebra_stripes=True, **kwargs)
        #: Each row's cells as shown (the mark first, the style last).
        self.shown: dict[str, tuple[str, ...]] = {}
        #: The newest event's (record, busy history, mark style) per row, and the rows not yet shown so.
        self.latest: dict[str, tuple[dict[str, Any], tuple[float, ...], str]] = {}
        self.stale: set[str] = set()
        self.shown_version: tuple[int, int] | None = None
        #: The rank marked slowest in the newest update.
        self.slowest: int | None = None
        self.by_busy = False

    def on_mount(self) -> None:
        for key, label, width in COLUMNS:
            self.add_column(label, width=width, key=key)

    def show(self, fold: RanksFold, style: str = "bold") -> None:
        """Take the fold's newest event (call with the history locked) and update the rows in view."""
        if fold.mark == self.shown_version:
            return
        self.shown_version, self.slowest = fold.mark, fold.slowest
        self.latest = {str(rec.get("rank")): (rec, tuple(fold.busy.get(rec.get("rank"), ())),
                                              style if rec.get("rank") == fold.slowest else "")
                       for rec in fold.records}
        if set(self.latest) != set(self.shown):  # the first event, or another world: the rows anew
            self.clear()
            self.shown = {}
            for row_key in self.latest:
                values = self.values(row_key)
                self.add_row(*(_styled(v, values[-1]) for v in values[:-1]), key=row_key)
                self.shown[row_key] = values
            self.stale = set()
        else:
            self.stale = set(self.latest)
            self.update_rows(self.latest if self.by_busy else self.in_view())
        if self.by_busy:
            self.sort("busy", key=busy_key, reverse=True)

    def values(self, row_key: str) -> tuple[str, ...]:
        rec, busy, style = self.latest[row_key]
        return (SLOWEST if style else "", *cells(rec, busy), style)

    def in_view(self) -> list[str]:
        """The keys of the rows on screen (and a screenful either side)."""
        height = max(self.size.height, 1)
        first = max(int(self.scroll_y) - height, 0)
        return [row.key.value for row in self.ordered_rows[first:first + 3 * height] if row.key.value is not None]

    def update_rows(self, keys) -> None:
        """Rewrite the changed cells of these rows, if stale."""
        columns = [k for k, _, _ in COLUMNS]
        for row_key in [k for k in keys if k in self.stale]:
            self.stale.discard(row_key)
            values, before = self.values(row_key), self.shown[row_key]
            for i, key in enumerate(columns):
                if values[i] != before[i] or values[-1] != before[-1]:
                    self.update_cell(row_key, key, _styled(values[i], values[-1]))
            self.shown[row_key] = values

    def watch_scroll_y(self, old_value: float, new_value: float) -> None:
        super().watch_scroll_y(old_value, new_value)
        if self.stale:
            self.update_rows(self.in_view())

    def toggle_sort(self) -> None:
        """Rows by busy time, longest first (every row brought up to date first), or back to rank order."""
        self.by_busy = not self.by_busy
        if self.by_busy:
            self.update_rows(list(self.stale))
            self.sort("busy", key=busy_key, reverse=True)
        else:
            self.sort("rank", key=busy_key)
