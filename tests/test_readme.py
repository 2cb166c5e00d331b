"""The README documents every config field, generated from the schema, and CI runs its test command."""

from __future__ import annotations

import re
from pathlib import Path

from engine.config.reference import markdown_reference

ROOT = Path(__file__).resolve().parents[1]


def test_readme_config_reference_matches_the_schema():
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- config-reference:start -->\n(.*?)\n<!-- config-reference:end -->", text, re.S)
    assert block, "README lost its generated config reference"
    assert block.group(1).strip() == markdown_reference().strip(), (
        "README config reference is stale: regenerate with `cockpit-engine example-config --markdown`")


def test_quick_start_has_two_commands_and_ci_runs_the_test_one():
    text = (ROOT / "README.md").read_text()
    quick = re.search(r"## Quick start\n\n```bash\n(.*?)```", text, re.S).group(1).strip().splitlines()
    assert len(quick) == 2
    assert quick[1] in (ROOT / ".ci" / "run").read_text()
