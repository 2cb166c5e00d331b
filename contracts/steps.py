"""steps.f64's columns: one declaration for the engine that writes it and the cockpit that reads it.

`steps.json` names the columns once: {"version": 1, "columns": [...], "parts": [...]}. `steps.f64`
holds one record per step line written to events.jsonl: little-endian float64s, `start` and `end`
(the line's byte range in events.jsonl), then `COLUMNS`, then the named loss parts. A new step
series is added here (and to the cockpit's history, which folds every column it lists): a reader
that finds other columns in a file's header falls back to decoding events.jsonl.
"""

from __future__ import annotations

VERSION = 1
#: The step event's fields recorded per step line, in file order.
COLUMNS = ("step", "loss", "lr", "samples_per_s", "accuracy")
#: At most this many named loss parts are recorded (more: the file stops, readers decode lines).
MAX_PARTS = 16


def record_width(parts: int) -> int:
    """Float64 values in one record with `parts` loss parts."""
    return 2 + len(COLUMNS) + parts
