"""Every rank in view: one row per rank (busy time, its trend, its split, memory, GPU), the slowest marked.

Over LIST_ALL ranks the pane summarises instead: min, median and max of each metric and the
WORST slowest ranks, worst first; `R` opens every rank in a table (cockpit/screens/ranks_screen.py).
Shown only once the run sent a `ranks` event (several processes): a single process keeps the layout.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text

from cockpit.history import RunHistory
from cockpit.ranks import LIST_ALL, RanksFold, ms, percent, size, spread_cell, spreads, worst
from cockpit.sanitize import clean
from cockpit.sparkline import spark
from cockpit.widgets.pane import TextPane

#: What marks the slowest rank's row (tests look for it too).
SLOWEST = "▶"
SPARK_WIDTH = 8
#: The columns: mark, rank, host, busy ms, its trend, data/compute/comm/optim ms, peak memory, GPU util.
HEADER = f"  {'rank':>4} {'host':<10} {'busy ms':>7} {'trend':<{SPARK_WIDTH}} {'d/c/comm/opt ms':<16} {'mem':>5} {'gpu':>4}"


def split_cell(rec: dict[str, Any]) -> str:
    """A rank's data/compute/comm/optim milliseconds per micro-batch."""
    return "/".join(ms(rec.get(k)) for k in ("data_s", "compute_s", "comm_s", "optim_s"))


def row(rec: dict[str, Any], busy: Any, slowest: int | None) -> tuple[str, bool]:
    """One rank as a line of the pane, and whether it is the slowest."""
    rank = rec.get("rank")
    mark = rank == slowest and rank is not None
    trend = spark(list(busy or ()), SPARK_WIDTH)
    host = clean(str(rec.get("host", "?")))[:10]
    line = (f"{SLOWEST if mark else ' '} {str(rank):>4} {host:<10} {ms(rec.get('busy_s')):>7} {trend:<{SPARK_WIDTH}} "
            f"{split_cell(rec):<16} {size(rec.get('mem_peak_bytes')):>5} {percent(rec.get('gpu_util')):>4}")
    return line, mark


def summary_lines(fold: RanksFold) -> list[str]:
    """The ranks' min, median and max per metric, as aligned lines under a header."""
    lines = [f"{'':<10} {'min':>8} {'median':>8} {'max':>8}"]
    for s in spreads(fold.records):
        unit = " ms" if s.key.endswith("_s") else ""
        low, mid, high = spread_cell(s)
        lines.append(f"{s.label + unit:<10} {low:>8} {mid:>8} {high:>8}")
    return lines


class RanksPane(TextPane):
    """The ranks of a run trained by several processes (from its newest `ranks` event)."""

    TITLE = "ranks"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.shown_version: tuple[int, int] | None = None
        #: The rank marked slowest in the newest draw (None before one).
        self.slowest: int | None = None

    def on_mount(self) -> None:
        super().on_mount()
        self.display = False

    def show(self, h: RunHistory) -> None:
        fold = h.ranks
        self.display = bool(fold.records)
        if not fold.records or fold.mark == self.shown_version:
            return  # nothing new: the newest event is drawn already
        self.shown_version = fold.mark
        self.slowest = fold.slowest
        self.text = self.draw(fold)

    def draw(self, fold: RanksFold) -> Text:
        """Every rank's row, or over LIST_ALL the summary and the worst ranks."""
        records, n = fold.records, len(fold.records)
        hot = "bold " + self.app.theme_variables.get("warning", "yellow")
        step = "" if fold.step is None else f" at step {fold.step:.0f}"
        self.border_title = f"{self.TITLE}: {n}{step}" + ("  (R: every rank)" if n > LIST_ALL else "")
        t = Text(no_wrap=True, overflow="crop")
        if n > LIST_ALL:
            t.append("\n".join(summary_lines(fold)) + "\n", style="")
            t.append(f"{len(worst(records))} worst (longest busy time), worst first:\n", style="dim")
            records = worst(records)
        t.append(HEADER + "\n", style="dim")
        for rec in records:
            line, mark = row(rec, fold.busy.get(rec.get("rank")), fold.slowest)
            t.append(line + "\n", style=hot if mark else "")
        t.rstrip()
        return t
