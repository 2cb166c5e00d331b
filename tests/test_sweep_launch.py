"""A sweep a newcomer can start (#23 part 4): the launch form's labels, defaults and refusals
(Textual's Pilot), the pruning defaults in the config schema, and the demo sweep (its config is
valid; `cockpit demo --sweep` starts it and the trials screen shows it, cut to one short trial).
"""

from __future__ import annotations

from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

from cockpit.app import CockpitApp  # noqa: E402
from cockpit.screens.sweep_launch import LaunchTrialsScreen, SweepLaunch  # noqa: E402
from cockpit.screens.trials_screen import TrialsScreen  # noqa: E402
from cockpit.settings import Settings  # noqa: E402
from cockpit.widgets.trials_table import BEST_MARK, TrialsTable  # noqa: E402
from cockpit_helpers import notes, until  # noqa: E402
from conftest import ROOT, TINY, run_engine  # noqa: E402

pytestmark = pytest.mark.timeout(240)

SWEEP = TINY + """
[sweep]
enabled = true
trials = 6
[sweep.space]
"optim.lr" = { low = 0.01, high = 0.1, log = true }
"""


@pytest.fixture(autouse=True)
def own_settings(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("COCKPIT_SWEEP_STORAGE", raising=False)


def cockpit(runs: Path, **kwargs) -> CockpitApp:
    return CockpitApp(runs, user=Settings(), poll_gpu=False, **kwargs)


def text(screen, selector: str) -> str:
    return str(screen.query_one(selector).render())


async def test_the_launch_form_labels_its_fields_takes_the_configs_defaults_and_names_a_bad_field(tmp_path: Path):
    config = tmp_path / "lr-sweep.toml"
    config.write_text(SWEEP)
    plain = tmp_path / "plain.toml"
    plain.write_text(TINY)
    answers: list[SweepLaunch | None] = []
    app = cockpit(tmp_path / "runs")
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()  # the runs screen first, as `t` then `n` would find it
        app.push_screen(LaunchTrialsScreen("sqlite:///runs/sweeps.db"), answers.append)
        await until(pilot, lambda: isinstance(app.screen, LaunchTrialsScreen) and app.screen.focused is not None,
                    what="the form")
        form = app.screen
        labels = [str(label.render()) for label in form.query(".form-label")]
        assert labels == ["Sweep config file", "Trials", "Parallel workers", "Study name"]
        assert all(i.placeholder for i in form.query("Input")), "every field says what it wants"
        assert form.query_one("#sweep-parallel").value == "1"
        assert "sqlite:///runs/sweeps.db" in text(form, "#sweep-about")

        form.query_one("#sweep-config").value = str(config)  # as typed: the config's trials and name fill the form
        await until(pilot, lambda: form.query_one("#sweep-trials").value == "6", what="the config's trials")
        assert form.query_one("#sweep-study").value == "lr-sweep"
        assert "optim.lr" in text(form, "#sweep-about") and "sweep.trials = 6" in text(form, "#sweep-about")

        form.query_one("#sweep-parallel").value = "0"
        form.query_one("#sweep-parallel").focus()
        await pilot.press("enter")
        assert text(form, "#sweep-error") == "Parallel workers: '0' is not a whole number of 1 or more"
        assert app.screen is form and form.focused.id == "sweep-parallel"

        form.query_one("#sweep-parallel").value = "2"
        form.query_one("#sweep-trials").value = "many"
        await pilot.press("enter")
        assert text(form, "#sweep-error") == "Trials: 'many' is not a whole number of 1 or more"
        assert form.focused.id == "sweep-trials"

        form.query_one("#sweep-config").value = str(plain)  # no [sweep]: refused before any worker
        form.query_one("#sweep-trials").value = "3"
        await pilot.press("enter")
        assert text(form, "#sweep-error") == f"Sweep config file: {plain} has no [sweep] with enabled = true"
        assert form.focused.id == "sweep-config" and not answers

        form.query_one("#sweep-config").value = str(config)
        await pilot.pause()
        assert form.query_one("#sweep-trials").value == "3", "a value the person typed stays"
        form.query_one("#sweep-study").focus()
        await pilot.press("enter")
        await until(pilot, lambda: bool(answers), what="the answer")
    assert answers == [SweepLaunch(str(config), 3, 2, "")]  # the study: the config's name (no --study)


def test_pruning_defaults_wait_for_five_trials_and_half_the_epochs():
    from engine.config.schema import Config, SweepConfig

    s = SweepConfig()
    assert s.startup_trials == 5 and s.warmup_epochs is None
    assert "half" in SweepConfig.model_fields["warmup_epochs"].description
    cfg = Config.model_validate({"train": {"epochs": 4}, "sweep": {"enabled": True}})
    assert cfg.sweep.warmup_for(cfg.train.epochs) == 2
    cfg = Config.model_validate({"train": {"epochs": 4}, "sweep": {"warmup_epochs": 1}})
    assert cfg.sweep.warmup_for(cfg.train.epochs) == 1


def test_the_demo_sweep_config_is_a_valid_short_sweep():
    from engine.config import loading
    from engine.config.sweep import check_space
    from engine.sweep.demo import config_path

    cfg = loading.load(config_path())
    check_space(cfg)
    assert cfg.sweep.enabled and cfg.sweep.trials == 6 and cfg.data.name == "digits"
    assert cfg.train.epochs <= 5 and set(cfg.sweep.space) == {"optim.lr", "model.factory_args.width"}


def test_demo_sweep_with_gpt_is_refused_naming_both(tmp_path: Path):
    from contracts.errors import BadInput
    from engine.cli import build_parser

    args = build_parser().parse_args(["demo", "--sweep", "--gpt", "--runs-dir", str(tmp_path / "runs")])
    with pytest.raises(BadInput, match="--sweep with --gpt"):  # exit 2, as every BadInput
        args.func(args)
    assert not (tmp_path / "runs").exists()


def test_a_trial_with_a_complete_trials_parameters_reuses_its_value_and_trains_nothing(tmp_path: Path):
    config = tmp_path / "one-point.toml"  # one point in the space: every trial repeats trial 0
    config.write_text(TINY + """
[sweep]
enabled = true
trials = 2
[sweep.space]
"optim.lr" = { choices = [0.05] }
""")
    runs = tmp_path / "runs"
    runs.mkdir()
    study = optuna.create_study(study_name="one-point", storage=f"sqlite:///{runs / 'sweeps.db'}",
                                direction="maximize")
    study.add_trial(optuna.trial.create_trial(  # trial 0, as a worker leaves it (its run elsewhere)
        params={"optim.lr": 0.05}, distributions={"optim.lr": optuna.distributions.CategoricalDistribution([0.05])},
        value=0.93, user_attrs={"run_dir": str(runs / "one-point-t000"), "run_id": "one-point-t000"}))
    done = run_engine("sweep", str(config), "--runs-dir", str(runs), cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "trial 1: the same parameters as complete trial 0: its value 0.93 reused" in done.stdout
    first, second = optuna.load_study(study_name="one-point", storage=f"sqlite:///{runs / 'sweeps.db'}").trials
    assert second.state == optuna.trial.TrialState.COMPLETE and second.value == 0.93
    assert second.user_attrs["same_as"] == 0 and second.user_attrs["run_dir"] == first.user_attrs["run_dir"]
    assert not (runs / "one-point-t001").exists(), "nothing trained"


async def test_the_trials_table_says_which_trial_a_repeated_one_took_its_value_from(tmp_path: Path):
    runs = tmp_path / "runs"
    runs.mkdir()
    study = optuna.create_study(study_name="one-point", storage=f"sqlite:///{runs / 'sweeps.db'}",
                                direction="maximize")
    lr = {"optim.lr": optuna.distributions.CategoricalDistribution([0.05])}
    for attrs in ({}, {"same_as": 0}):  # trial 1: what the worker tells for a repeated point
        study.add_trial(optuna.trial.create_trial(params={"optim.lr": 0.05}, distributions=lr, value=0.93,
                                                  user_attrs=attrs))
    app = cockpit(runs)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("t")
        await until(pilot, lambda: isinstance(app.screen, TrialsScreen), what="the trials screen")
        table = app.screen.query_one(TrialsTable)
        await until(pilot, lambda: table.row_count == 2, timeout=30, what="the trials")
        states = [table.get_row_at(i)[1].plain for i in range(2)]
        marks = [table.get_row_at(i)[0].plain for i in range(2)]
    assert states == ["complete", "complete: same as 0"]
    assert marks == [f"0 {BEST_MARK}", "1"]  # the first of equal values is the best


async def test_cockpit_demo_sweep_starts_the_sweep_and_shows_its_trials(tmp_path: Path):
    runs = tmp_path / "runs"
    app = cockpit(runs, launch=("demo-sweep", ["sweep.trials=1", "train.epochs=1"]))
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, TrialsScreen), what="the trials screen")
        await until(pilot, lambda: any("started sweep worker demo-sweep-" in n for n in notes(app)), timeout=120,
                    what="the demo sweep's worker")
        screen, table = app.screen, app.screen.query_one(TrialsTable)
        assert screen.study.startswith("demo-sweep-")
        await until(pilot, lambda: screen.view is not None and screen.view.best is not None, timeout=180,
                    what="its trial to complete")
        assert table.row_count == 1 and screen.view.trials[0].state == "complete"
    run = runs / f"{screen.study}-t000"
    assert (run / "config.toml").is_file() and "demo-sweep" in (run / "config.toml").read_text()
