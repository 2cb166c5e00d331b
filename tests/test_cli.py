"""`cockpit-engine` help and the generated example config (no torch: these are quick)."""

from __future__ import annotations

import functools
import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any, Iterator

import pytest
from pydantic import BaseModel

from conftest import engine_cmd, engine_env, run_engine
from engine.config.loading import validate
from engine.config.schema import Config


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(engine_cmd(*args), env=engine_env(), capture_output=True, text=True, timeout=60)


def schema_fields(model: type[BaseModel] = Config, prefix: str = "") -> Iterator[tuple[str, str, Any]]:
    """(section path, field name, field info) for every leaf field of the config, walked here."""
    for name, info in model.model_fields.items():
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from schema_fields(ann, f"{prefix}{name}.")
        else:
            yield prefix.rstrip("."), name, info


FIELDS = list(schema_fields())
assert len(FIELDS) > 60 and {s for s, _, _ in FIELDS} >= {"model", "data.augment", "train", "spot"}


@functools.cache
def example_config() -> str:
    done = cli("example-config")
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_top_level_help_lists_commands_and_exit_codes():
    done = cli("--help")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for cmd in ("run", "demo", "resume", "send", "example-config"):
        assert re.search(rf"^\s+{re.escape(cmd)}\s", out, re.M), f"{cmd} missing from --help"
    flat = " ".join(out.split())
    for code in ("0 finished", "1 failed", "2 bad input", "3 stopped"):
        assert code in flat, f"exit code {code!r} not explained"


@pytest.mark.parametrize("sub, must_mention", [
    ("run", ["config", "--set", "SECTION.KEY=VALUE", "--runs-dir", "--run-id", "--json", "--detach"]),
    ("demo", ["--set", "--runs-dir", "--run-id", "--json", "--sweep", "--storage"]),
    ("resume", ["run", "--set", "--runs-dir", "--json"]),
    ("send", ["run", "checkpoint", "pause", "continue", "stop", "set", "status", "--lr"]),
    ("example-config", ["--markdown"]),
])
def test_each_subcommand_has_help(sub, must_mention):
    done = cli(sub, "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: cockpit-engine {sub}")
    for word in must_mention:
        assert word in done.stdout, f"`{sub} --help` does not mention {word}"
    assert "--detached-child" not in done.stdout, "internal flags stay hidden"


def test_unknown_subcommand_and_missing_argument_are_usage_errors():
    done = cli("train", "x.toml")
    assert done.returncode == 2
    assert "invalid choice: 'train'" in done.stderr
    done = cli("run")
    assert done.returncode == 2
    assert "config" in done.stderr and "required" in done.stderr


def test_example_config_is_valid_toml_that_validates_to_the_defaults():
    raw = tomllib.loads(example_config())
    assert validate(raw, "example").model_dump() == Config().model_dump()


def test_example_config_mentions_every_field_in_its_section():
    text = example_config()
    blocks = dict(re.findall(r"^\[([a-z_.]+)\]\n(.*?)(?=^\[|\Z)", text, re.S | re.M))
    for section, name, info in FIELDS:
        assert section in blocks, f"[{section}] missing from example-config"
        block = blocks[section]
        assert re.search(rf"^(# )?{name} = ", block, re.M), f"{section}.{name} missing from example-config"
        assert f"# {info.description}" in block, f"{section}.{name} has no description comment"


def test_example_config_edited_by_a_user_still_validates():
    text = example_config()
    text = text.replace("# num_classes = ...", "num_classes = 7").replace('lr = 0.001', 'lr = 0.05')
    cfg = validate(tomllib.loads(text), "edited")
    assert cfg.model.num_classes == 7 and cfg.optim.lr == 0.05


def test_markdown_reference_lists_every_field_once():
    done = cli("example-config", "--markdown")
    assert done.returncode == 0, done.stderr
    rows = [ln for ln in done.stdout.splitlines() if ln.startswith("| `")]
    paths = [re.match(r"\| `([^`]+)` \|", ln).group(1) for ln in rows]
    expected = [f"{section}.{name}" for section, name, _ in FIELDS]
    assert sorted(paths) == sorted(expected)
    assert len(paths) == len(set(paths))
    for row in rows:
        assert row.count(" | ") == 2 and row.endswith(" |"), f"malformed table row: {row}"


def test_gpus_without_cuda_and_a_zero_process_count_are_refused(tmp_path: Path):
    """Checked by the launching process, before torchrun starts or anything is written."""
    cfg = tmp_path / "run.toml"
    cfg.write_text('[data]\nname = "digits"\n')
    runs = tmp_path / "runs"
    import torch

    if torch.cuda.device_count() < 64:
        gpus = run_engine("run", str(cfg), "--gpus", "64", "--runs-dir", str(runs))
        assert gpus.returncode == 2, gpus.stderr
        assert "CUDA device(s) visible" in gpus.stderr and "distributed.nproc = 64" in gpus.stderr
    zero = run_engine("run", str(cfg), "--nproc", "0", "--runs-dir", str(runs))
    assert zero.returncode == 2 and "--nproc 0" in zero.stderr, zero.stderr
    assert not runs.exists()
