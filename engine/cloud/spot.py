"""The spot watcher: a thread polls the interruption notice, the loop reads it as a boundary source.

The thread asks the metadata service every `spot.poll_s` seconds (5 s or faster, AWS's
advice), whatever the loop is doing (a step, an evaluation, a checkpoint write, a compile),
so no request ever blocks a step. The loop's side (`poll`, at each step boundary, and
`urgent`, between evaluation batches) only reads what the thread found: a notice becomes
`Plan(PREEMPTED)` (checkpoint, exit 3), a rebalance recommendation one early checkpoint.
Events go out from the loop's thread only: a `spot` event with `kind` status (lifecycle,
type, zone, once known), rebalance, notice, and preempted (after the last checkpoint).
"""

from __future__ import annotations

import threading
from typing import Any, Callable

from engine.cloud.detect import client_for
from engine.cloud.facts import InstanceFacts
from engine.cloud.imds import ImdsClient, MetadataUnavailable, Notice, instance_action, instance_facts, rebalance
from contracts.stops import Plan, Reason, Source

#: The longest wait between polls while the service keeps failing (back-off, doubled per failure).
MAX_BACKOFF_S = 30.0


class SpotWatcher(Source):
    """A boundary source fed by a background thread that polls the metadata service; also asked
    between evaluation batches, so a notice mid-evaluation does not wait for the epoch's end."""

    between_batches = True

    def __init__(self, client: ImdsClient, poll_s: float, emit: Callable[..., Any],
                 always: bool = False, step: Callable[[], int] = lambda: 0):
        # always: poll the notice even when the lifecycle is not spot (spot.enabled = true)
        self.client, self.poll_s, self.emit, self.always, self.step = client, poll_s, emit, always, step
        self.facts: InstanceFacts | None = None
        self.notice: Notice | None = None
        self.rebalance_time: str | None = None
        self.failures, self.polls, self.error = 0, 0, ""
        self.announced = self.notice_told = self.rebalance_done = self.failure_told = False
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="spot-watcher", daemon=True)

    # ---- the thread ---------------------------------------------------------------------

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=0.1)  # a request in flight ends on its own timeout (daemon)

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                self._poll_once()
                self.failures = 0
            except MetadataUnavailable as exc:
                self.failures, self.error = self.failures + 1, str(exc)
            self.polls += 1
            wait = self.poll_s if not self.failures else min(MAX_BACKOFF_S, self.poll_s * 2 ** self.failures)
            self.stopping.wait(wait)

    def _poll_once(self) -> None:
        if self.facts is None:
            self.facts = instance_facts(self.client)
            if self.facts is None and not self.always:
                raise MetadataUnavailable(f"{self.client.endpoint}: no instance facts")
        if not (self.always or (self.facts is not None and self.facts.spot)):
            self.stopping.set()  # on-demand: no notice will come; the status is all there is
            return
        notice = instance_action(self.client)
        if notice is not None and self.notice is None:
            self.notice = notice
        if self.rebalance_time is None:
            self.rebalance_time = rebalance(self.client)

    # ---- the loop's side ----------------------------------------------------------------

    def _fields(self) -> dict[str, Any]:
        f = self.facts
        return {"lifecycle": f.lifecycle, "instance_type": f.instance_type, "zone": f.zone,
                "region": f.region} if f else {}

    def _notice_fields(self) -> dict[str, Any]:
        n = self.notice
        left = n.seconds_left() if n else None
        return {"action": n.action, "notice_time": n.time,
                "seconds_left": None if left is None else round(left, 1)} if n else {}

    def urgent(self) -> Plan:
        """The notice alone (between evaluation batches): PREEMPTED or nothing."""
        if self.notice is None:
            return Plan()
        if not self.notice_told:
            self.notice_told = True
            fields = self._notice_fields()
            self.emit("spot", kind="notice", step=self.step(), **self._fields(), **fields)
            self.emit("log", level="warning", message=f"spot interruption notice: {self.notice.action} at "
                      f"{self.notice.time} ({fields['seconds_left']} s left); checkpointing and stopping")
        return Plan(Reason.PREEMPTED, why=f"spot interruption notice: {self.notice.action} at {self.notice.time}")

    def poll(self) -> Plan:
        """At a step boundary: announce the instance once, then the notice or a rebalance."""
        if self.facts is not None and not self.announced:
            self.announced = True
            self.emit("spot", kind="status", step=self.step(), **self._fields())
        if self.failures >= 3 and not self.failure_told:
            self.failure_told = True
            self.emit("log", level="warning", message=f"the instance metadata service does not answer "
                      f"({self.error}); still asking in the background, training goes on")
        plan = self.urgent()
        if plan.reason == Reason.PREEMPTED:
            return plan
        if self.rebalance_time is not None and not self.rebalance_done:
            self.rebalance_done = True
            self.emit("spot", kind="rebalance", step=self.step(), rebalance_time=self.rebalance_time,
                      **self._fields())
            return Plan(Reason.CHECKPOINT_DUE, why="rebalance")
        return Plan()

    def outcome(self, plan: Plan) -> dict[str, Any]:
        """A preempted run's final state event carries the notice's seconds left."""
        return self.preempted() if plan.reason == Reason.PREEMPTED else {}

    def preempted(self) -> dict[str, Any]:
        """After the last checkpoint of a preempted run: the final `spot` event; its fields."""
        fields = self._notice_fields()
        self.emit("spot", kind="preempted", step=self.step(), **self._fields(), **fields)
        return {"seconds_left": fields.get("seconds_left")}


def watcher_for(cfg: Any, emit: Callable[..., Any], step: Callable[[], int] = lambda: 0) -> SpotWatcher | None:
    """A spot watcher where the metadata service may be asked (engine.cloud.detect), else None."""
    client = client_for(cfg)
    return SpotWatcher(client, cfg.spot.poll_s, emit, cfg.spot.enabled, step) if client else None
