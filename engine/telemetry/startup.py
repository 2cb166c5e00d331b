"""Where this process's start-up went, from the interpreter's start to the first training step.

Importing it costs next to nothing (the standard library and contracts), so the command line
imports it first and its import time marks the interpreter's own start-up.

The phases, in order (seconds each; each ends where the next begins):

* interpreter: from the process's creation (engine.telemetry.cost.process_start) to this
  module's import by engine.cli: Python itself, site-packages, the command line's first lines.
* imports: from there to the session module being imported (torch, the engine, pydantic).
* build: from there to the training loop's start: the config's checks, the run directory, the
  data set, the model, telemetry sinks, the optimizer (which imports TorchDynamo) and every
  source; what a resume loads from its checkpoint too.
* first_step: from the loop's start to the first step boundary (the first step's data, forward,
  backward and optimizer step; torch.compile's warm-up when train.compile = true).

`phases()` returns those reached so far; call it at the first logging step and every phase is
there. A forked engine (tests/warm.py) was created after the imports, so its phases are short.
"""

from __future__ import annotations

import time

_IMPORTED = time.time()  # engine.cli imports this module first: the interpreter's part ends here

from typing import Any, Callable

from contracts.stops import Plan, Source

PHASES = ("interpreter", "imports", "build", "first_step")

#: Unix time at which each phase ended (set once each; the first mark wins).
_ENDS: dict[str, float] = {"interpreter": _IMPORTED}
_STARTED: list[float] = []  # the process's creation time, looked up once


def process_start() -> float:
    """When this process was created (Unix seconds)."""
    if not _STARTED:
        _STARTED.append(_created())
    return _STARTED[0]


def _created() -> float:
    """The ledger's own clock for it (engine.telemetry.cost.process_start: /proc, else psutil), so
    that the phases add up to the ledger's start-up; imported late, when torch is in already."""
    try:
        from engine.telemetry.cost import process_start as created

        return created()
    except Exception:  # noqa: BLE001 - no start time known: from this module's import
        return _ENDS["interpreter"]


def mark(phase: str, at: float | None = None) -> None:
    """Phase `phase` ended now (or at `at`); a phase already marked keeps its first mark."""
    if phase not in PHASES:
        raise ValueError(f"unknown start-up phase {phase!r}: expected one of {PHASES}")
    _ENDS.setdefault(phase, time.time() if at is None else at)


def phases() -> dict[str, float]:
    """{phase: seconds} for the phases reached so far, in order, each from the previous one's end
    (the first from the process's creation); "total" is their sum: the process's start to the last
    phase reached. A phase not marked is left out, and the next one reached covers it."""
    out: dict[str, float] = {}
    before = process_start()
    for phase in PHASES:
        end = _ENDS.get(phase)
        if end is None:
            continue
        out[phase] = max(0.0, end - before)
        before = max(before, end)
    out["total"] = sum(out.values())
    return out


def describe(p: dict[str, float]) -> str:
    """One line for the run's log: "startup: 6.1 s to the first step (interpreter 0.1 s, ...)"."""
    parts = ", ".join(f"{k} {v:.2f} s" for k, v in p.items() if k != "total")
    to = "the first step" if "first_step" in p else "now"
    return f"startup: {p.get('total', 0.0):.2f} s to {to} ({parts})"


class StartupMarks(Source):
    """A boundary source that only watches: the loop's start ends "build", the first step
    boundary ends "first_step" and emits, once, a `log` event with the phases (a `phases` field
    beside the message). Its plan is always empty."""

    def __init__(self, emit: Callable[..., Any] | None = None):
        self.emit, self.done = emit, False

    def start(self) -> None:
        mark("build")

    def poll(self) -> Plan:
        if not self.done:
            self.done = True
            mark("first_step")
            if self.emit is not None:
                p = phases()
                self.emit("log", level="info", message=describe(p), phases={k: round(v, 3) for k, v in p.items()})
        return Plan()
