"""The keys that drive the followed run: checkpoint, pause, stop, resume, fix, target, new run; and
their replies."""

from __future__ import annotations

import json
import time
from pathlib import Path

from cockpit import launcher, run_target
from cockpit.link import RunLink
from cockpit.messages import CommandAnswered
from cockpit.sanitize import clean
from cockpit.runs import pid_alive, read_status
from cockpit.screens.modals import ConfirmFix, ConfirmStop, NewRunScreen, SlurmSubmit
from cockpit.screens.target_form import TargetChange, TargetScreen
from cockpit.widgets.steptime_pane import verdict_line
from contracts.events import FINAL_STATES

RESUMABLE = ("stopped", "failed", "preempted")
#: Changes that make a resumed run differ from one started with the new value (the engine's list too).
INEXACT_ON_RESUME = ("train.batch_size",)


def toml_value(value) -> str:
    """A value as `--set` reads it (TOML)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value) if isinstance(value, str) else str(value)


def wait_for_exit(run: Path, timeout: float = 120.0) -> None:
    """Until the run's engine has exited (it holds the run's lock until then), at most `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = read_status(run)
        if status.get("state") in FINAL_STATES and not pid_alive(status.get("pid") or 0):
            return
        time.sleep(0.2)


class RunControl:
    """Actions for a screen that follows one run (mixed into RunScreen, which binds the keys).

    The screen provides `link` (the followed run, or None), `attach(run)`, `runs_root`, and
    `begin_starting(what)`/`starting_attached()`/`end_starting()` (what it shows until a launched
    run's first step);
    commands go out in worker threads and come back as CommandAnswered messages.
    """

    link: RunLink | None
    runs_root: Path
    #: A checkpoint was asked for and its reply has not come yet.
    checkpoint_in_flight = False
    last_checkpoint_press = -10.0

    def launch(self, kind: str, args: list[str]) -> None:
        """Start an engine in a worker (`demo` or `demo-gpt` with --set args, or `run` CONFIG [--set ...]), then attach."""
        def work() -> None:
            result = (launcher.start_demo(self.runs_root, args, gpt=kind == "demo-gpt") if kind.startswith("demo")
                      else launcher.start_run(Path(args[0]), self.runs_root, args[1:]))
            self.app.call_from_thread(self._launched, result)

        self.begin_starting("starting the demo run" if kind.startswith("demo")
                            else f"starting a run from {Path(args[0]).name}")
        self.run_worker(work, thread=True, group="launch", name="launch")

    def _launched(self, result: launcher.Launch) -> None:
        if result.code == 0 and result.run is not None:
            self.attach(result.run)
            self.starting_attached()
        else:
            self.end_starting()
            self.notify(f"the engine did not start (exit {result.code}):\n{clean(result.message)}",
                        severity="error", markup=False, timeout=20)

    def _send(self, cmd: str, **args) -> None:
        link = self.link

        def work() -> None:
            reply = link.send(cmd, **args)
            self.post_message(CommandAnswered(cmd, reply))

        self.run_worker(work, thread=True, group="commands", name=f"send {cmd}")

    def _need_link(self) -> bool:
        if self.link is None:
            self.notify("no run selected: press l for the runs list", severity="warning")
            return False
        return True

    def action_checkpoint(self) -> None:
        """Checkpoint now; presses within a second, or while one is being saved, fold into it."""
        if not self._need_link():
            return
        now = time.monotonic()
        if self.checkpoint_in_flight or now - self.last_checkpoint_press < 1.0:
            self.notify("checkpoint already requested", timeout=2)
            return
        self.checkpoint_in_flight, self.last_checkpoint_press = True, now
        self._send("checkpoint")

    def action_pause(self) -> None:
        """Pause a training run, or continue a paused one."""
        if self._need_link():
            self._send("continue" if self.link.history.state == "paused" else "pause")

    def action_stop(self) -> None:
        """Checkpoint and stop the run, once the user says yes."""
        if not self._need_link():
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self._send("stop")

        self.app.push_screen(ConfirmStop(self.link.name), answered)

    def action_resume(self) -> None:
        """Resume a stopped, failed or preempted run from its latest checkpoint, then follow it."""
        if not self._need_link():
            return
        link = self.link
        if not (link.vanished or link.history.state in RESUMABLE):
            self.notify(f"the run is {link.history.state}; only stopped, failed or preempted runs resume",
                        severity="warning", markup=False)
            return

        def work() -> None:
            result = launcher.resume_run(link.run)
            self.app.call_from_thread(self._launched, result)

        self.begin_starting(f"resuming {link.name} from its latest checkpoint")
        self.run_worker(work, thread=True, group="launch", name="resume")

    def action_fix(self) -> None:
        """The doctor's remedy: confirm the change it names, then checkpoint, stop and resume with it."""
        if not self._need_link():
            return
        link, verdict = self.link, self.link.history.doctor
        field, value = verdict.get("field"), verdict.get("value")
        if not isinstance(field, str) or value is None or isinstance(value, (dict, list)):
            if verdict.get("bound"):  # the pane's own words: nothing for f to apply, and why
                self.notify(f"nothing for f to apply: {verdict_line(verdict)}", severity="warning", markup=False)
            else:
                self.notify("the doctor has no verdict yet: it gives one after the first logging steps",
                            severity="warning")
            return
        new, old = toml_value(value), toml_value(verdict.get("current"))
        why = f"{verdict.get('bound')}-bound: {float(verdict.get('share') or 0):.0%} of each step"

        def answered(yes: bool | None) -> None:
            if yes:
                self._apply_fix(link, field, new)

        self.app.push_screen(ConfirmFix(link.name, clean(field), clean(old), clean(new),
                                        field not in INEXACT_ON_RESUME, why), answered)

    def _apply_fix(self, link: RunLink, field: str, value: str) -> None:
        def work() -> None:
            if not (link.vanished or link.history.state in FINAL_STATES):
                reply = link.send("stop")  # checkpoints first; the reply comes after the checkpoint
                if not reply.get("ok"):
                    self.post_message(CommandAnswered("stop", reply))
                    return
                wait_for_exit(link.run)
            result = launcher.resume_run(link.run, [f"{field}={value}"])
            self.app.call_from_thread(self._launched, result)

        self.notify(f"{field} = {value}: checkpointing, stopping and resuming {link.name}", markup=False)
        self.run_worker(work, thread=True, group="launch", name="fix")

    def action_target(self) -> None:
        """Set (or clear) the run's target while it trains: the form, prefilled with the current
        target, then the `target` command; the projection beside the ETA follows the new target."""
        if not self._need_link():
            return
        link = self.link
        if link.vanished or link.history.state in FINAL_STATES:
            self.notify(f"the run is {link.history.state or 'gone'}: a target is set while it trains "
                        "(resume --set train.target.value=... for a stopped run)", severity="warning", markup=False)
            return
        now = run_target.current(link.run, link.history.target)

        def answered(change: TargetChange | None) -> None:
            if change is not None:
                self._send("target", **change.command())

        self.app.push_screen(TargetScreen(link.name, run_target.metrics_of(link.run, link.history.last_eval), now),
                             answered)

    def action_new_run(self) -> None:
        """Ask for a config file, start a run from it, and follow it; where sbatch is on PATH the form
        also offers "submit to Slurm" (then the runs list shows the job)."""
        import shutil

        def chosen(answer: str | SlurmSubmit | None) -> None:
            if isinstance(answer, SlurmSubmit):
                self.submit_to_slurm(answer)
            elif answer:
                self.launch("run", [answer])

        self.app.push_screen(NewRunScreen(slurm=shutil.which("sbatch") is not None), chosen)

    def submit_to_slurm(self, answer: SlurmSubmit) -> None:
        """`cockpit-engine slurm submit` in a worker; then the runs list, where the job shows."""
        runs_root = self.runs_root

        def work() -> None:
            result = launcher.slurm_submit(answer.config, runs_root, answer.nodes, answer.gpus_per_node,
                                           answer.time, answer.partition)
            self.app.call_from_thread(self._submitted, result)

        self.notify(f"submitting {Path(answer.config).name} to Slurm ({answer.nodes} node(s), "
                    f"{answer.gpus_per_node} GPU(s) each, {answer.time})...", markup=False, timeout=10)
        self.run_worker(work, thread=True, group="launch", name="slurm submit")

    def _submitted(self, result: launcher.Submitted) -> None:
        if result.code == 0 and result.job_id is not None:
            self.notify(f"submitted Slurm job {result.job_id}"
                        + (f" for {result.run.name}" if result.run else ""), markup=False, timeout=10)
            self.app.switch_mode("runs")
        else:
            self.notify(f"the Slurm submission was refused (exit {result.code}):\n{clean(result.message)}",
                        severity="error", markup=False, timeout=20)

    def on_command_answered(self, message: CommandAnswered) -> None:
        reply = message.reply
        if message.cmd == "checkpoint":
            self.checkpoint_in_flight = False
        if not reply.get("ok"):
            self.notify(f"{message.cmd}: {clean(str(reply.get('error', 'failed')))}", severity="error",
                        markup=False)
            return
        if message.cmd == "checkpoint":
            size = reply.get("bytes")
            size_text = f"{size / 1e6:.1f} MB" if isinstance(size, (int, float)) else "already on disk"
            self.notify(f"checkpoint saved at step {reply.get('step')} ({size_text}, "
                        f"{float(reply.get('seconds') or 0):.2f} s)", markup=False)
        elif message.cmd in ("pause", "continue"):
            self.notify(f"{reply.get('state')} at step {reply.get('step')}", markup=False)
        elif message.cmd == "target":
            what = (f"{reply.get('metric')} {reply.get('value')}" if reply.get("metric") else "none (cleared)")
            stops = ", the run finishes when it is reached" if reply.get("stop") and reply.get("metric") else ""
            self.notify(clean(f"target {what} from step {reply.get('step')}{stops}"), markup=False)
        elif message.cmd == "stop":
            self.notify(f"stopped at step {reply.get('step')}; checkpoint {reply.get('path')}", markup=False)
