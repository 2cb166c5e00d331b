"""Distillation: the teacher's validation accuracy beside the student's, and T and alpha."""

from __future__ import annotations

from rich.text import Text

from cockpit.history import RunHistory
from cockpit.sanitize import clean
from cockpit.widgets.pane import TextPane


class DistillPane(TextPane):
    """Shown only for a distilled run (its `distill` event); the loss parts come from step events."""

    TITLE = "distillation"

    def on_mount(self) -> None:
        super().on_mount()
        self.display = False

    def show(self, h: RunHistory) -> None:
        d = h.distill
        self.display = bool(d)
        if not d:
            return
        teacher = d.get("metrics", {}).get("accuracy")
        student = h.last_eval.get("metrics", {}).get("accuracy") if isinstance(h.last_eval.get("metrics"), dict) else None
        t = Text()
        t.append(f"teacher {clean(str(d.get('teacher', '?'))).rsplit('/', 1)[-1][:28]}\n")
        t.append(f"val accuracy: teacher {_pct(teacher)}\n")
        t.append(f"              student {_pct(student)}\n")
        t.append(f"T {d.get('temperature', '?')}  alpha {d.get('alpha', '?')}")
        parts = h.parts
        if "kd" in parts and "ce" in parts and parts["kd"].ys and parts["ce"].ys:
            t.append(f"\nloss kd {parts['kd'].ys[-1]:.4f}  ce {parts['ce'].ys[-1]:.4f}")
        self.text = t


def _pct(value: object) -> str:
    return f"{value:.1%}" if isinstance(value, (int, float)) else "?"
