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


def busy_key(cell: Any) -> float:
    """The busy column's sort key (unknown sorts last)."""
    try:
        return float(str(cell))
    except ValueError:
        return -1.0


class RanksTable(DataTable):
    """One row per rank, keyed by rank; the slowest rank's row is marked and bold."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, cursor_type="row", zebra_stripes=True, **kwargs)
        self.shown: dict[str, tuple[str, ...]] = {}
        self.shown_version = -1
        #: The rank marked slowest in the newest update.
        self.slowest: int | None = None
        self.by_busy = False

    def on_mount(self) -> None:
        for key, label, width in COLUMNS:
            self.add_column(label, width=width, key=key)

    def show(self, fold: RanksFold, style: str = "bold") -> None:
        """Bring the rows to the fold's newest event: new ranks added, changed cells rewritten."""
        if fold.version == self.shown_version:
            return
        self.shown_version, self.slowest = fold.version, fold.slowest
        keys = [k for k, _, _ in COLUMNS]
        wanted = {}
        for rec in fold.records:
            mark = rec.get("rank") == fold.slowest
            wanted[str(rec.get("rank"))] = (SLOWEST if mark else "",
                                           *cells(rec, fold.busy.get(rec.get("rank"))), style if mark else "")
        for gone in [k for k in self.shown if k not in wanted]:
            self.remove_row(gone)
            del self.shown[gone]
        for row_key, values in wanted.items():
            before = self.shown.get(row_key)
            styled = [Text(v, style=values[-1]) if values[-1] else v for v in values[:-1]]
            if before is None:
                self.add_row(*styled, key=row_key)
            else:
                for i, (key, value) in enumerate(zip(keys, styled)):
                    if values[i] != before[i] or values[-1] != before[-1]:
                        self.update_cell(row_key, key, value)
            self.shown[row_key] = values
        if self.by_busy:
            self.sort("busy", key=busy_key, reverse=True)

    def toggle_sort(self) -> None:
        """Rows by busy time, longest first, or back to rank order."""
        self.by_busy = not self.by_busy
        if self.by_busy:
            self.sort("busy", key=busy_key, reverse=True)
        else:
            self.sort("rank", key=busy_key)
