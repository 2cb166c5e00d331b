"""Each sweep trial's newest `projection` event (train.target reaches every trial), read cheaply:
a trial's events file is read once from its end (contracts.events.newest_event), then only what
was appended since, and only the lines that are projections are decoded."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from contracts.events import decode_event, newest_event


def cell(p: dict[str, Any] | None) -> str:
    """A projection in a few characters: "reached @ 450", "~step 1,234, $0.12", "levels off 0.962"."""
    if not p:
        return ""
    at = p.get("projected_step")
    if p.get("reached") is True and isinstance(at, (int, float)):
        return f"reached @ {int(at):,}"
    if isinstance(at, (int, float)) and "not reached" not in str(p.get("message", "")):
        cost = p.get("projected_dollars")
        when = p.get("projected_s")
        tail = (f", ${cost:.2f}" if isinstance(cost, (int, float)) else
                f", {when / 60:.0f} min" if isinstance(when, (int, float)) else "")
        return f"~step {int(at):,}{tail}"
    asymptote = p.get("asymptote")
    if isinstance(asymptote, (int, float)):
        return f"levels off {asymptote:.4g}"
    return f"{p.get('points', '?')} evals: too few"


class TrialProjections:
    """The newest projection of each run directory, kept up to date by reading appended bytes."""

    def __init__(self) -> None:
        self.seen: dict[str, tuple[int, int, dict[str, Any] | None]] = {}  # path: (inode, offset, newest)

    def newest(self, run_dir: str | None) -> dict[str, Any] | None:
        if not run_dir:
            return None
        path = os.path.join(run_dir, "events.jsonl")
        try:
            st = os.stat(path)
        except OSError:
            return None
        inode, offset, found = self.seen.get(path, (st.st_ino, 0, None))
        if inode != st.st_ino or st.st_size < offset:  # replaced or cut: start again
            offset, found = 0, None
        if st.st_size == offset:
            return found
        if offset == 0:  # the first look: the newest one from the file's end
            found, offset = newest_event(Path(path), "projection"), st.st_size
        else:
            try:
                with open(path, "rb") as f:
                    f.seek(offset)
                    data = f.read(st.st_size - offset)
            except OSError:
                return found
            cut = data.rfind(b"\n") + 1  # whole lines only
            for line in data[:cut].splitlines():
                if b'"projection"' in line:
                    event = decode_event(line)
                    if event is not None and event.get("type") == "projection":
                        found = event
            offset += cut
        self.seen[path] = (st.st_ino, offset, found)
        return found
