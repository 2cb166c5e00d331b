"""The compress job's progress: one line per stage on stderr, and the same as JSON lines in
RUN/compress/progress.jsonl for the cockpit to follow.

Each record: `t`, `pid`, `stage` (1-based), `stages`, `name`, `state` (running, done, failed,
finished: the whole job, error: the job stopped), optional `step`, `total_steps`, `run` and
`message`. The file is appended to (one `write` per line), like events.jsonl.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

PROGRESS = "progress.jsonl"
#: Seconds between two step lines of one stage.
EVERY_S = 5.0


class Progress:
    def __init__(self, path: Path, stages: int, quiet: bool = False):
        self.path, self.stages, self.quiet = path, stages, quiet
        self.stage, self.name, self.last = 0, "", 0.0
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")

    def _record(self, state: str, **fields: Any) -> None:
        record = {"t": time.time(), "pid": os.getpid(), "stage": self.stage, "stages": self.stages,
                  "name": self.name, "state": state, **fields}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def say(self, text: str) -> None:
        if not self.quiet:
            print(f"compress: {text}", file=sys.stderr, flush=True)

    def begin(self, name: str, **fields: Any) -> None:
        self.stage += 1
        self.name, self.last = name, 0.0
        self._record("running", **fields)
        self.say(f"{self.stage}/{self.stages} {name}")

    def step(self, step: int, total: int | None, **fields: Any) -> None:
        """A step line, at most every EVERY_S seconds (and the last step always)."""
        now = time.monotonic()
        if now - self.last < EVERY_S and step != total:
            return
        self.last = now
        self._record("running", step=step, total_steps=total, **fields)
        of = f"/{total}" if total else ""
        self.say(f"{self.stage}/{self.stages} {self.name}: step {step}{of}")

    def done(self, message: str, **fields: Any) -> None:
        self._record("done", message=message, **fields)
        self.say(f"{self.stage}/{self.stages} {self.name}: {message}")

    def failed(self, message: str) -> None:
        self._record("failed", message=message)
        self.say(f"{self.stage}/{self.stages} {self.name} failed: {message}")

    def finished(self, message: str) -> None:
        self.name = "frontier"
        self._record("finished", message=message)
        self.say(message)
