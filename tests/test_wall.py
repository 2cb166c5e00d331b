"""The wall between the halves: the cockpit never imports torch, the engine never imports textual."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import cockpit
import contracts
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
    loaded = imported_after(modules_of(cockpit) + modules_of(contracts))
    assert not {m for m in loaded if m == "torch" or m.startswith("torch.")}


def test_engine_never_imports_textual():
    loaded = imported_after(modules_of(engine))
    assert "torch" in loaded, "the check must have imported the engine's real modules"
    assert not {m for m in loaded if m.split(".")[0] in ("textual", "rich", "cockpit")}


def test_protocol_and_config_stay_light():
    """Validating a config and speaking the protocol must not pull in torch (fast refusal)."""
    loaded = imported_after(["contracts.events", "contracts.control", "engine.config.schema", "engine.config.loading", "engine.cli",
                             "engine.config.reference"])
    assert "torch" not in loaded


def test_engine_packages_cost_nothing_to_import():
    """engine/__init__.py and every capability folder's __init__.py stay empty, so importing
    engine.config (a bad config is refused fast) loads
    nothing else."""
    inits = sorted((ROOT / "engine").rglob("__init__.py"))
    assert len(inits) >= 9, inits
    assert all(p.read_text().strip() == "" for p in inits), [p for p in inits if p.read_text().strip()]


def test_contracts_import_only_the_standard_library():
    """The ground floor imports no third-party package and neither half (import-linter checks
    the package graph too; this checks what actually loads)."""
    before = imported_after([])
    loaded = imported_after(modules_of(contracts)) - before
    stdlib = set(sys.stdlib_module_names)
    foreign = {m for m in loaded if m.split(".")[0] not in stdlib and m.split(".")[0] != "contracts"}
    assert not foreign, sorted(foreign)


def test_the_layers_written_in_pyproject_hold():
    """import-linter's contracts (pyproject.toml [tool.importlinter]): the engine's layers, the
    two halves over the contracts, and the forbidden imports. Any import that climbs fails here."""
    import shutil

    exe = shutil.which("lint-imports")
    assert exe, "import-linter is in the test extra: pip install -e '.[test]'"
    out = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]


def test_config_is_the_ground_floor():
    """engine/config/ imports nothing of the engine above it (the standard library, pydantic,
    tomli_w, contracts and itself), and data, which sits below model, never imports model."""
    config = [m for m in modules_of(engine) if m.startswith("engine.config.")]
    assert "engine.config.schema" in config and "engine.config.importing" in config
    loaded = {m for m in imported_after(config) if m.split(".")[0] == "engine"}
    above = {m for m in loaded if m not in ("engine", "engine.config")
             and not m.startswith("engine.config.")}
    assert not above, f"engine/config/ imports {sorted(above)}"
    data = " ".join(p.read_text() for p in (ROOT / "engine" / "data").glob("*.py"))
    assert "engine.model" not in data, "engine/data/ must not import engine/model/"
