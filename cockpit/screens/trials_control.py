"""The trials screen's keys that act on trials: prune, stop, launch trials, promote the best; and their replies."""

from __future__ import annotations

from pathlib import Path

from cockpit import launcher
from cockpit.link import RunLink
from cockpit.messages import RunChosen
from cockpit.sanitize import clean
from cockpit.screens.modals import ConfirmStop, PromoteScreen, Promotion
from cockpit.screens.sweep_launch import LaunchTrialsScreen, SweepLaunch
from cockpit.sweeps import (StudyView, SweepReader, TrialRow, base_config, base_epochs, mask_url, promoted_config,
                            promoted_path, storage_url, write_promoted)


class TrialsControl:
    """Actions on the trials of the shown study (mixed into TrialsScreen, which binds the keys).

    The screen provides `view` (the study shown, or None), `study`, `runs_root`, `url` and `reader`
    (the sweep storage), `highlighted()` (the trial under the cursor) and `reread(force)`; commands
    and launches run in worker threads and come back through `call_from_thread`.
    """

    view: StudyView | None
    study: str | None
    runs_root: Path
    url: str
    reader: SweepReader

    def _running_trial(self, what: str) -> TrialRow | None:
        trial = self.highlighted()
        if trial is None:
            self.notify("no trial highlighted", severity="warning")
            return None
        if trial.state != "running" or not trial.run_dir:
            self.notify(f"trial {trial.number} is {trial.state}: only a running trial can be {what}",
                        severity="warning", markup=False)
            return None
        return trial

    def _send(self, trial: TrialRow, cmd: str) -> None:
        def work() -> None:
            reply = RunLink(Path(trial.run_dir)).send(cmd)
            self.app.call_from_thread(self._answered, trial, cmd, reply)

        self.run_worker(work, thread=True, group="trial-commands", name=f"{cmd} trial {trial.number}")

    def _answered(self, trial: TrialRow, cmd: str, reply: dict) -> None:
        if not reply.get("ok"):
            self.notify(f"{cmd} trial {trial.number}: {clean(str(reply.get('error', 'failed')))}",
                        severity="error", markup=False)
            return
        done = "pruned" if cmd == "prune" else reply.get("state", "stopped")
        self.notify(f"trial {trial.number} {done} at step {reply.get('step')}; checkpoint {reply.get('path')}",
                    markup=False)
        self.reread(force=True)

    def action_prune(self) -> None:
        """Prune the highlighted running trial through its engine's control socket."""
        trial = self._running_trial("pruned")
        if trial is not None:
            self.notify(f"pruning trial {trial.number}...", timeout=3)
            self._send(trial, "prune")

    def action_stop(self) -> None:
        """Stop the highlighted running trial (checkpoint first), once the user says yes."""
        trial = self._running_trial("stopped")
        if trial is None:
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self._send(trial, "stop")

        self.app.push_screen(ConfirmStop(trial.run_id or Path(trial.run_dir).name), answered)

    def action_launch(self) -> None:
        """Ask for a sweep config, its trials, K at once and the study (the form takes the config's
        defaults); start a detached worker in a thread."""
        def chosen(answer: SweepLaunch | None) -> None:
            if answer is None:
                return

            def work() -> None:
                result = launcher.start_sweep(answer.config, self.runs_root, answer.trials or None, answer.parallel,
                                              storage=self.reader.url if self.url != storage_url(self.runs_root)
                                              else None, study=answer.study or None)
                self.app.call_from_thread(self._launched, answer, result)

            self.notify(f"starting a sweep worker for {answer.config}...", markup=False, timeout=5)
            self.run_worker(work, thread=True, group="sweep-launch", name="launch sweep")

        self.app.push_screen(LaunchTrialsScreen(mask_url(self.url)), chosen)

    def launch_demo(self, overrides: list[str]) -> None:
        """`cockpit demo --sweep`: start the demo sweep's worker; its study is shown as it runs."""
        def work() -> None:
            result = launcher.start_demo_sweep(self.runs_root, overrides,
                                               storage=self.url if self.url != storage_url(self.runs_root) else None)
            self.app.call_from_thread(self._launched, None, result)

        self.notify("starting the demo sweep: 6 short trials of the digits demo...", timeout=8)
        self.run_worker(work, thread=True, group="sweep-launch", name="launch demo sweep")

    def _launched(self, answer: SweepLaunch | None, result: launcher.Launch) -> None:
        if result.code != 0:
            self.notify(f"the sweep worker did not start (exit {result.code}):\n{clean(result.message)}",
                        severity="error", markup=False, timeout=20)
            return
        self.notify(clean(result.message), markup=False, timeout=10)
        words = result.message.split("started sweep worker ", 1)
        if len(words) == 2 and words[1].split():
            self.study = words[1].split()[0]  # show the study the worker runs
        self.reread(force=True)

    def _to_promote(self, view: StudyView | None) -> TrialRow | None:
        """The best trial; with several objectives (no single best) the highlighted one, which
        must be complete; the notice says whether it is on the Pareto front."""
        if view is not None and view.multi:
            trial = self.highlighted()
            if trial is None or trial.state != "complete":
                what = f"trial {trial.number} is {trial.state}" if trial else "no trial highlighted"
                self.notify(f"{what}: highlight a complete trial (the Pareto front's are starred) to promote",
                            severity="warning", markup=False)
                return None
            where = "on the Pareto front" if trial.best else "not on the Pareto front (another trial dominates it)"
            self.notify(f"trial {trial.number} is {where}", markup=False, timeout=6)
            return trial
        if view is None or view.best is None:
            self.notify("no complete trial to promote yet", severity="warning")
            return None
        return view.best

    def action_promote(self) -> None:
        """The new-run form prefilled for the best trial (several objectives: the highlighted
        one); a config written next to the study."""
        view = self.view
        best = self._to_promote(view)
        if best is None:
            return
        try:
            base = base_config(best)
        except ValueError as exc:
            self.notify(f"cannot promote trial {best.number}: {clean(str(exc))}", severity="error", markup=False)
            return
        default = promoted_path(self.runs_root, view.name)
        if view.multi:  # no single best: the file says which trial
            default = default.with_name(default.name.replace("-best.toml", f"-t{best.number:03d}.toml"))

        def chosen(answer: Promotion | None) -> None:
            if answer is not None:
                self.promote(view.name, best, base, answer.config, answer.epochs)

        self.app.push_screen(PromoteScreen(best, view.metric, default, 2 * base_epochs(base)), chosen)

    def promote(self, study: str, best: TrialRow, base: dict, path: Path, epochs: int) -> None:
        cfg = promoted_config(base, best.params, epochs)

        def work() -> None:
            try:
                written = write_promoted(self.runs_root, study, cfg, path)
            except OSError as exc:
                self.app.call_from_thread(self.notify, f"cannot write {path}: {exc}", severity="error", markup=False)
                return
            result = launcher.start_run(written, self.runs_root)
            self.app.call_from_thread(self._promoted, written, result)

        self.notify(f"promoting trial {best.number}: {epochs} epochs, config {path}", markup=False, timeout=5)
        self.run_worker(work, thread=True, group="promote", name="promote")

    def _promoted(self, config: Path, result: launcher.Launch) -> None:
        if result.code == 0 and result.run is not None:
            self.notify(f"promoted run {result.run.name} started from {config}", markup=False)
            self.post_message(RunChosen(result.run))
        else:
            self.notify(f"the promoted run did not start (exit {result.code}):\n{clean(result.message)}",
                        severity="error", markup=False, timeout=20)
