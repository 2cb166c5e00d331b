"""train.target and train.stop_at_target, and the `target` command that changes them live.

`StopAtTarget` is an evaluation hook that finishes the run at the evaluation that reaches the
target (state finished, exit 0). Rank 0 holds it: every rank computes the same reduced metrics,
and the hooks' verdict is agreed across ranks by maximum (engine.train.trainer.end_epoch), so
rank 0's verdict finishes every rank at the same evaluation, and a target set live on rank 0 (the
`target` command reaches rank 0 only) needs no broadcast.

`change(hook, request, data_name)` is the `target` command: it checks the request against the
run's task, changes the hook, and returns the `target` event's fields.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from contracts.stops import Reason
from engine.config.training import TARGET_METRICS, TargetConfig
from engine.train.evaluate import EvalVerdict


class StopAtTarget:
    """`hook(step, epoch, metrics)`: EvalVerdict(TARGET_REACHED) once the target's metric meets it
    (only with `stop`; `target` None: no target)."""

    def __init__(self, target: TargetConfig | None, stop: bool):
        self.target, self.stop = target, stop

    def __call__(self, step: int, epoch: int, metrics: dict[str, float]) -> EvalVerdict | None:
        if self.target is None or not self.stop:
            return None
        value = metrics.get(self.target.metric.removeprefix("val_"))
        if value is None or not self.target.met(value):
            return None
        sign = ">=" if self.target.up else "<="
        return EvalVerdict(Reason.TARGET_REACHED, f"target reached: {self.target.metric} {value:.4g} {sign} "
                                                   f"{self.target.value:g} at step {step}")


def metrics_for(data_name: str) -> tuple[str, ...]:
    """The target metrics a run's evaluation reports (perplexity: a language model's)."""
    return tuple(m for m in TARGET_METRICS if m != "val_perplexity" or data_name == "text")


def parse(request: dict[str, Any], current: TargetConfig | None, stop: bool, data_name: str
          ) -> tuple[TargetConfig | None, bool]:
    """The (target, stop) a `target` request asks for (ValueError naming the field, the value and
    what was expected). A missing metric keeps the current one (val_accuracy without one), a
    missing stop keeps the current flag; clear=true removes the target (and the stop with it)."""
    if request.get("clear"):
        return None, False
    metric = request.get("metric") or (current.metric if current else "val_accuracy")
    allowed = metrics_for(data_name)
    if metric not in allowed:
        raise ValueError(f"target: metric={metric!r}: expected one of {', '.join(allowed)} "
                         f"(what this run's evaluation reports, data.name = {data_name!r})")
    try:
        target = TargetConfig(metric=metric, value=float(request["value"]))
    except ValidationError as exc:
        words = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
        raise ValueError(f"target: {words}") from None
    return target, bool(request.get("stop", stop))


def change(hook: StopAtTarget, request: dict[str, Any], data_name: str) -> dict[str, Any]:
    """Apply a `target` request to the hook (nothing changes on a ValueError); the `target`
    event's fields: metric and value (null: cleared), stop, by."""
    target, stop = parse(request, hook.target, hook.stop, data_name)
    hook.target, hook.stop = target, stop
    return {"metric": target.metric if target else None, "value": target.value if target else None,
            "stop": stop, "by": str(request.get("by") or "command")}


def on_resume(cfg: Any, events: Any, overrides: list[str], emit: Any) -> None:
    """A resume (rank 0): the newest `target` event (a target set live) replaces the config's
    train.target and stop_at_target, unless this resume's --set names either: then the --set
    wins, and is recorded as a `target` event so that later resumes keep it in turn."""
    from contracts.events import newest_event

    named = [o.split("=", 1)[0].strip() for o in overrides]
    if any(n == "train.target" or n.startswith("train.target.") or n == "train.stop_at_target" for n in named):
        t = cfg.train.target
        emit("target", metric=t.metric if t else None, value=t.value if t else None,
             stop=cfg.train.stop_at_target, by="resume --set")
        return
    event = newest_event(events, "target")
    if event is None:
        return
    try:
        target = None if event.get("metric") is None else TargetConfig(metric=event["metric"], value=event["value"])
    except (ValidationError, KeyError, TypeError) as exc:
        emit("log", level="warning", message=f"the target set live at step {event.get('step')} is not kept: {exc}")
        return
    if target is None:  # (stop_at_target first: the config refuses a stop without a target)
        cfg.train.stop_at_target, cfg.train.target = False, None
    else:
        cfg.train.target, cfg.train.stop_at_target = target, bool(event.get("stop"))
    what = f"{target.metric} {target.value:g}" if target else "none"
    emit("log", level="info", message=f"train.target: the target set live at step {event.get('step')} by "
         f"{event.get('by') or 'command'} is kept: {what}" + (", stop when reached" if cfg.train.stop_at_target
                                                                 else ""))
