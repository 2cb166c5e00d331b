"""The run-state banner: running, paused, checkpointing, stopped, finished, failed, or gone."""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widgets import Static

from cockpit.history import RunHistory
from cockpit.sanitize import clean


class RunBanner(Static):
    """One line naming the run and its state (more for a failure's last traceback lines, or
    for why the engine paused itself: a full disk names its folder, free space, the
    checkpoint's size and the last good checkpoint)."""

    #: What the banner says before any run is followed.
    NO_RUN = "no run selected: press l for the runs list, n for a new run"

    text: reactive[Text] = reactive(Text(NO_RUN), layout=True)

    def show(self, name: str, h: RunHistory, vanished: bool) -> None:
        """Describe the run; the CSS class carries the state's colour."""
        state = "vanished" if vanished else h.state
        step, epoch = h.current_step, h.last_step.get("epoch")
        line = Text(f" {clean(name)}  ", style="bold")
        if vanished:
            line.append("engine exited unexpectedly (no final state; its process is gone)")
        else:
            # each part ends with its own separator (a part starting with spaces reads as none
            # in some SVG renderers: "FINISHEDstep 60")
            line.append(clean(state).upper()[:20] + "  ", style="bold")
            if h.reason and state != "paused":
                line.append(f"({clean(str(h.reason))[:200]})  ")
            if step is not None:
                line.append(f"step {int(step)}")
                if isinstance(epoch, (int, float)):
                    line.append(f"  epoch {int(epoch) + 1}")
        if state == "paused" and h.reason:  # why the engine paused by itself (a full disk): in full
            line.append("\n " + clean(str(h.reason))[:600], style="bold")
        if state == "failed" and h.error.get("traceback"):
            tail = str(h.error["traceback"]).strip().splitlines()[-3:]
            line.append("\n " + "\n ".join(clean(x)[:200] for x in tail))
        self.set_classes(f"state-{state if state.isidentifier() else 'unknown'}")
        self.text = line

    def show_starting(self, what: str) -> None:
        """A run the cockpit launched, before its first step: what is happening, and for how long."""
        self.set_classes("state-starting")
        self.text = Text(f" {clean(what)}", style="bold")

    def render(self) -> Text:
        return self.text
