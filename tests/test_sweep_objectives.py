"""Multi-objective sweeps: a real two-objective study (val_accuracy up, parameters down) that also
chooses the architecture (small_cnn or mlp, widths, the MLP's depth), read back with
`optuna.load_study`; bad objectives and architectures refused with exit 2; the trials screen's
Pareto scatter drawn from the same real study.

One study (three one-epoch trials of tiny models on the bundled digits, SQLite) serves every
test of the module.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

from cockpit.app import CockpitApp  # noqa: E402
from cockpit.screens.modals import PromoteScreen  # noqa: E402
from cockpit.screens.trials_screen import TrialsScreen  # noqa: E402
from cockpit.settings import Settings  # noqa: E402
from cockpit.sweeps import SweepReader, storage_url  # noqa: E402
from cockpit.widgets.pareto_pane import ParetoPane  # noqa: E402
from cockpit.widgets.trials_table import BestChartPane, TrialsTable  # noqa: E402
from cockpit_helpers import FIXED_NOW, notes, until  # noqa: E402
from conftest import events_of, run_engine  # noqa: E402

pytestmark = pytest.mark.timeout(600)

BASE = """
[model]
name = "small_cnn"
factory_args = { width = 4, norm = "batch" }
[data]
name = "digits"
num_workers = 0
[optim]
name = "sgd"
lr = 0.1
[train]
epochs = 1
max_steps = 6
batch_size = 64
[logging]
status_every_s = 0.2
"""

SWEEP = """
[sweep]
enabled = true
trials = 3
objectives = [{ metric = "val_accuracy", direction = "maximize" }, { metric = "params", direction = "minimize" }]
[sweep.space]
"model.name" = { choices = ["small_cnn", "mlp"] }
"model.factory_args.width" = { low = 4, high = 16, step = 4 }
"model.factory_args.depth" = { low = 1, high = 2 }
"""


def small_cnn_params(w: int, classes: int = 10) -> int:
    """Three bias-free convolutions with batch norm (weight and bias), then a linear head."""
    return (9 * w + 2 * w) + (9 * w * w + 2 * w) + (9 * w * 2 * w + 4 * w) + (2 * w * classes + classes)


def mlp_params(w: int, depth: int, features: int = 64, classes: int = 10) -> int:
    return (features * w + w) + (depth - 1) * (w * w + w) + (w * classes + classes)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The study's runs directory, storage URL, and the worker's --json summary."""
    root = tmp_path_factory.mktemp("objectives")
    cfg = root / "shapes.toml"
    cfg.write_text(BASE + SWEEP)
    runs = root / "runs"
    done = run_engine("sweep", str(cfg), "--runs-dir", str(runs), "--json", timeout=500)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "pruner 'median' is off" in done.stderr  # the default pruner: off, and said so
    return runs, storage_url(runs), json.loads(done.stdout.strip().splitlines()[-1])


def test_the_pareto_front_read_back_with_optuna_is_the_summarys(study):
    runs, url, summary = study
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    loaded = optuna.load_study(study_name="shapes", storage=url)
    assert [d.name for d in loaded.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert loaded.user_attrs["objectives"] == ["val_accuracy", "params"]
    trials = loaded.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3, [(t.number, t.state) for t in trials]
    front = sorted(loaded.best_trials, key=lambda t: t.number)
    assert [p["number"] for p in summary["pareto"]] == [t.number for t in front]
    for entry, t in zip(summary["pareto"], front):
        assert entry["values"] == {"val_accuracy": t.values[0], "params": t.values[1]}
        assert entry["params"] == t.params and entry["run_dir"] == t.user_attrs["run_dir"]
    assert summary["objectives"] == [{"metric": "val_accuracy", "direction": "maximize"},
                                     {"metric": "params", "direction": "minimize"}]
    for t in trials:
        run = Path(t.user_attrs["run_dir"])
        assert t.user_attrs["objectives"] == {"val_accuracy": t.values[0], "params": t.values[1]}
        model = tomllib.loads((run / "config.toml").read_text())["model"]
        assert model["name"] == t.params["model.name"]
        width = t.params["model.factory_args.width"]
        if model["name"] == "mlp":  # the base's norm is small_cnn's: not handed to the MLP
            depth = t.params["model.factory_args.depth"]
            assert model["factory_args"] == {"width": width, "depth": depth}
            expected = mlp_params(width, depth)
        else:  # depth is the MLP's: never suggested for a small_cnn trial
            assert "model.factory_args.depth" not in t.params
            assert model["factory_args"] == {"width": width, "norm": "batch"}
            expected = small_cnn_params(width)
        assert t.values[1] == expected, (t.params, t.values)
        (measures,) = [e for e in events_of(run) if e["type"] == "measures"]
        assert measures["parameters"] == expected and "latency_ms" not in measures  # no latency objective
        evals = [e for e in events_of(run) if e["type"] == "eval"]
        assert t.values[0] == evals[-1]["metrics"]["accuracy"]
    # the cockpit's own reading marks the same front
    view = SweepReader(url).read("shapes")
    assert [r.number for r in view.front] == [t.number for t in front]


# -- bad input: exit 2, the field named, nothing written -----------------------------------------

OBJ2 = 'objectives = [{ metric = "val_accuracy" }, { metric = "params" }]\n'
BAD = {
    "unknown-metric": ('objectives = [{ metric = "val_acc" }, { metric = "params" }]\n', "",
                       ["sweep.objectives.0.metric = 'val_acc'", "did you mean 'val_accuracy'"]),
    "bad-direction": ('objectives = [{ metric = "val_accuracy" }, { metric = "params", direction = "smaller" }]\n', "",
                      ["sweep.objectives.1.direction = 'smaller'", "'maximize' or 'minimize'"]),
    "duplicate": ('objectives = [{ metric = "params" }, { metric = "params", direction = "minimize" }]\n', "",
                  ["sweep.objectives.1.metric = 'params'", "each metric once"]),
    "pruner-with-two": (OBJ2 + 'pruner = "median"\n', "",
                        ["sweep.pruner = 'median' with 2 objectives", "cannot prune"]),
    "bad-sampler": (OBJ2 + 'sampler = "cmaes"\n', "", ["sweep.sampler = 'cmaes'", "'nsga2'"]),
    "metric-and-objectives": (OBJ2 + 'metric = "val_loss"\n', "", ["sweep.objectives with metric = 'val_loss'"]),
    "perplexity-on-images": ('objectives = [{ metric = "val_perplexity" }, { metric = "params" }]\n', "",
                             ["sweep.objectives.0.metric = 'val_perplexity'", "data.name = 'digits'"]),
    "gpt-on-images": (OBJ2, '"model.name" = { choices = ["small_cnn", "gpt"] }\n',
                      ["sweep.space.'model.name'", "'gpt' cannot be trained on this data"]),
    "no-such-model": (OBJ2, '"model.name" = { choices = ["small_cnn", "resnet999"] }\n',
                      ["sweep.space.'model.name'", "'resnet999' is not a model", "did you mean"]),
    "arg-no-model-takes": (OBJ2, '"model.factory_args.depth" = { low = 1, high = 3 }\n',
                           ["sweep.space.'model.factory_args.depth'", "small_cnn takes width, norm, dropout"]),
}


def test_objectives_optuna_cannot_take_and_architectures_the_data_cannot_feed_exit_2(tmp_path: Path, capsys):
    from engine.cli import main  # in-process: refused before a storage or a trial

    for name, (sweep_lines, space_lines, words) in BAD.items():
        cfg = tmp_path / f"{name}.toml"
        cfg.write_text(BASE + "[sweep]\nenabled = true\n" + sweep_lines + "[sweep.space]\n"
                       + (space_lines or '"optim.lr" = { low = 0.01, high = 0.1 }\n'))
        runs = tmp_path / f"runs-{name}"
        code = main(["sweep", str(cfg), "--runs-dir", str(runs)])
        out, err = capsys.readouterr()
        assert code == 2, (name, out, err)
        for w in words:
            assert w in err, (name, w, err)
        assert "Traceback" not in err and not runs.exists(), name
    text = tmp_path / "text.toml"  # an image model on text: the field and the value named
    text.write_text(BASE.replace('name = "digits"', f'name = "text"\nroot = "{tmp_path}"') + "[sweep]\nenabled = true\n"
                    + '[sweep.space]\n"model.name" = { choices = ["gpt", "small_cnn"] }\n')
    assert main(["sweep", str(text), "--runs-dir", str(tmp_path / "runs-text")]) == 2
    err = capsys.readouterr().err
    assert "sweep.space.'model.name': 'small_cnn' cannot be trained on this data" in err, err


# -- the trials screen: the scatter of the front, promote the highlighted trial ------------------

async def test_the_trials_screen_draws_the_pareto_front_and_promotes_the_highlighted_trial(study, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("COCKPIT_SWEEP_STORAGE", raising=False)
    runs, url, summary = study
    front = {p["number"]: p["values"] for p in summary["pareto"]}
    app = CockpitApp(runs, clock=lambda: FIXED_NOW, user=Settings(), poll_gpu=False)
    async with app.run_test(size=(140, 44)) as pilot:
        await pilot.press("t")
        await until(pilot, lambda: isinstance(app.screen, TrialsScreen), what="the trials screen")
        screen = app.screen
        table = screen.query_one(TrialsTable)
        await until(pilot, lambda: table.row_count == 3, timeout=30, what="the trials")
        pane = screen.query_one(ParetoPane)
        await until(pilot, lambda: len(pane.points) == 3, what="the scatter")
        assert pane.display and not screen.query_one(BestChartPane).display
        assert {n: [x, y] for n, x, y, on in pane.points if on} == {n: [v["val_accuracy"], v["params"]]
                                                                    for n, v in front.items()}
        assert "front" in pane.describe() and pane.axes == (0, 1)
        header = [str(c.label) for c in table.columns.values()]
        assert header[-4:] == ["val_accuracy", "params", "epochs", "duration"]
        marked = sorted(int(table.get_row_at(i)[0].plain.split()[0]) for i in range(3)
                        if table.get_row_at(i)[0].plain.endswith("*"))
        assert marked == sorted(front)
        title = str(screen.query_one("#trials-title").render())
        assert "maximize val_accuracy, minimize params" in title and "Pareto front: trials" in title
        await pilot.press("a")  # two objectives: one pair of axes
        assert pane.axes == (0, 1)

        table.focus()
        for number in (0, 1, 2):
            table.move_cursor(row=table.get_row_index(str(number)), animate=False)
            await pilot.press("p")
            await until(pilot, lambda: isinstance(app.screen, PromoteScreen), what="the promote form")
            assert app.screen.trial.number == number
            assert str(app.screen.path).endswith(f"shapes-t{number:03d}.toml")
            said = "is on the Pareto front" if number in front else "is not on the Pareto front"
            assert any(f"trial {number} {said}" in n for n in notes(app)), notes(app)
            await pilot.press("escape")
            await until(pilot, lambda: app.screen is screen, what="back to the trials")
