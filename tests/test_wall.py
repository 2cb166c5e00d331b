"""The wall between the halves: the cockpit never imports torch, the engine never imports textual."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import cockpit
import engine

ROOT = Path(__file__).resolve().parents[1]


def modules_of(package) -> list[str]:
    names = [package.__name__]
    for info in pkgutil.walk_packages(package.__path__, prefix=package.__name__ + "."):
        if not info.name.endswith(".__main__"):  # running the app is not importing it
            names.append(info.name)
    return names


def imported_after(modules: list[str]) -> set[str]:
    code = (
        "import importlib, json, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout))


def test_cockpit_modules_never_import_torch():
    loaded = imported_after(modules_of(cockpit) + ["engine.protocol"])
    assert not {m for m in loaded if m == "torch" or m.startswith("torch.")}


def test_engine_never_imports_textual():
    loaded = imported_after(modules_of(engine))
    assert "torch" in loaded, "the check must have imported the engine's real modules"
    assert not {m for m in loaded if m.split(".")[0] in ("textual", "rich", "cockpit")}


def test_protocol_and_config_stay_light():
    """Validating a config and speaking the protocol must not pull in torch (fast refusal)."""
    loaded = imported_after(["engine.protocol", "engine.config.schema", "engine.config.loading", "engine.cli",
                             "engine.config.reference"])
    assert "torch" not in loaded


def test_engine_packages_cost_nothing_to_import():
    """engine/__init__.py and every capability folder's __init__.py stay empty, so importing
    engine.protocol (the cockpit does) or engine.config (a bad config is refused fast) loads
    nothing else."""
    inits = sorted((ROOT / "engine").rglob("__init__.py"))
    assert len(inits) >= 9, inits
    assert all(p.read_text().strip() == "" for p in inits), [p for p in inits if p.read_text().strip()]


def test_config_is_the_ground_floor():
    """engine/config/ imports nothing of the engine above it (the standard library, pydantic,
    engine.errors and itself), and data, which sits below model, never imports model."""
    config = [m for m in modules_of(engine) if m.startswith("engine.config.")]
    assert "engine.config.schema" in config and "engine.config.importing" in config
    loaded = {m for m in imported_after(config) if m.split(".")[0] == "engine"}
    above = {m for m in loaded if m not in ("engine", "engine.errors", "engine.config")
             and not m.startswith("engine.config.")}
    assert not above, f"engine/config/ imports {sorted(above)}"
    data = " ".join(p.read_text() for p in (ROOT / "engine" / "data").glob("*.py"))
    assert "engine.model" not in data, "engine/data/ must not import engine/model/"
