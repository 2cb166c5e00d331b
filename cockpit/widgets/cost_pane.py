"""What the run costs, from the engine's cost events (the spot pane shows the instance)."""

from __future__ import annotations

from rich.text import Text

from cockpit.history import RunHistory
from cockpit.sanitize import clean
from cockpit.widgets.pane import TextPane


class CostPane(TextPane):
    """Money: so far, per hour with the price's source and age, projected, saved, lost."""

    TITLE = "cost"
    PLACEHOLDER = "no price known\n(cost.price_per_hour, cost.instance_type, or EC2's price)"

    def show(self, h: RunHistory) -> None:
        t = Text()
        c = h.cost
        if c:
            self._money(t, c)
        elif not h.slurm:
            t.append(self.PLACEHOLDER)
        if h.slurm:
            self._queue(t, h.slurm)
        self.text = t

    @staticmethod
    def _queue(t: Text, s: dict) -> None:
        """A Slurm job: the time its starts waited (queue and set-up) and its requeues."""
        if t.plain and not t.plain.endswith("\n"):
            t.append("\n")
        starts = int(_num(s.get("starts")))
        t.append(f"Slurm job {clean(str(s.get('job_id')))}, start {starts}"
                 f"{' on ' + clean(s['node_list']) if s.get('node_list') else ''}\n")
        if _is_num(s.get("waited_s")):
            t.append(f"{_duration(s['waited_s'])} waiting (queue and set-up, {starts} start"
                     f"{'s' if starts != 1 else ''})\n", style="yellow" if s["waited_s"] > 600 else "")
        if s.get("requeues"):
            t.append(f"{s['requeues']} requeue{'s' if s['requeues'] != 1 else ''} before the time limit", style="yellow")

    @staticmethod
    def _money(t: Text, c: dict) -> None:
        """So far, per hour (with the price's source and age), projected, saved on spot, lost."""
        cur = clean(str(c.get("currency", "USD")))[:8]
        t.append(f"{_num(c.get('accumulated')):.4f} {cur} so far\n")
        source = clean(str(c.get("source", "?")))[:40]
        t.append(f"{_num(c.get('price_per_hour')):.3f} {cur}/h  {source}, {_age(c.get('price_age_s'))}\n")
        if _is_num(c.get("projected")):
            t.append(f"{c['projected']:.4f} {cur} projected\n")
        if _is_num(c.get("savings")):
            t.append(f"{c['savings']:.4f} {cur} saved on spot\n", style="green")
        if _is_num(c.get("lost")) and c["lost"] > 0:
            steps = c.get("lost_steps") if _is_num(c.get("lost_steps")) else "?"
            t.append(f"{c['lost']:.4f} {cur} lost to interruptions ({steps} steps redone)", style="yellow")


def _is_num(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _num(value) -> float:
    return value if _is_num(value) else 0.0


def _age(seconds) -> str:
    """How old the price is: 'fixed' for a configured price, else s, min, h or days."""
    if not _is_num(seconds):
        return "fixed"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} old"
    return f"{seconds:.0f} s old"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"
