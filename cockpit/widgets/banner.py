"""The run-state banner: running, paused, checkpointing, stopped, finished, failed, or gone."""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widgets import Static

from cockpit.history import RunHistory
from cockpit.sanitize import clean


class RunBanner(Static):
    """One line (more for a failure's last traceback lines) naming the run and its state."""

    text: reactive[Text] = reactive(Text("no run selected: press l for the runs list, n for a new run"), layout=True)

    def show(self, name: str, h: RunHistory, vanished: bool) -> None:
        """Describe the run; the CSS class carries the state's colour."""
        state = "vanished" if vanished else h.state
        step = h.last_step
        line = Text(f" {clean(name)}  ", style="bold")
        if vanished:
            line.append("engine exited unexpectedly (no final state; its process is gone)")
        else:
            line.append(clean(state).upper()[:20], style="bold")
            if h.reason:
                line.append(f" ({clean(str(h.reason))[:200]})")
            if step:
                line.append(f"  step {step.get('step')}  epoch {int(step.get('epoch', 0)) + 1}")
        if state == "failed" and h.error.get("traceback"):
            tail = str(h.error["traceback"]).strip().splitlines()[-3:]
            line.append("\n " + "\n ".join(clean(x)[:200] for x in tail))
        self.set_classes(f"state-{state if state.isidentifier() else 'unknown'}")
        self.text = line

    def render(self) -> Text:
        return self.text
