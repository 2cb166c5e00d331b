"""The user-data script of a launched spot instance: install the project, then resume the run
from S3 if it is there (a relaunch after an interruption) or start it from the config.

A pure function of its inputs (tested without AWS). cloud-init runs it once, as root, at the
first boot. The instance's credentials come from its instance profile (boto3's standard
chain, through IMDSv2); none is ever written into the script.
"""

from __future__ import annotations

import json
import shlex

#: EC2 refuses user data above 16 KB (before base64).
MAX_BYTES = 16 * 1024
WORK = "/opt/training-cockpit"
LOG = "/var/log/training-cockpit.log"
SOURCE_KEY = "source/training-cockpit.tar.gz"  # below the run's prefix, when the launcher uploaded it


def _heredoc_tag(text: str) -> str:
    tag = "COCKPIT_CONFIG"
    while tag in text:
        tag += "_"
    return tag


def build(config_toml: str, run_id: str, s3_uri: str, region: str, install: str | None,
          source: tuple[str, str] | None = None) -> str:
    """The script. `install` is a pip requirement (e.g. 'training-cockpit==0.1.0' or a git URL);
    with `source` = (bucket, key) instead, the project's source archive is fetched from S3."""
    q = shlex.quote
    tag = _heredoc_tag(config_toml)
    lines = [
        "#!/bin/bash",
        f"# Written by `cockpit-engine cloud launch`: train run {run_id} on this spot instance, mirrored to {s3_uri}.",
        "set -uo pipefail",
        f"exec >>{LOG} 2>&1",
        f"export AWS_DEFAULT_REGION={q(region)} HOME=\"${{HOME:-/root}}\" PYTHONUNBUFFERED=1",
        f"RUN_ID={q(run_id)}",
        f"S3={q(s3_uri)}",
        f"WORK={WORK}",
        "mkdir -p \"$WORK\" && cd \"$WORK\" || exit 1",
        "# the Deep Learning AMI's PyTorch environment when there is one, else the system python",
        "PY=python3",
        "for candidate in /opt/pytorch/bin/python /opt/conda/bin/python; do",
        "  if [ -x \"$candidate\" ]; then PY=$candidate; break; fi",
        "done",
        "echo \"training-cockpit: run $RUN_ID with $PY, $(date -u)\"",
        "# 1. install the project",
        "\"$PY\" -m pip install --quiet 'boto3>=1.28' || exit 1",
    ]
    if source is not None:
        bucket, key = source
        fetch = (f'import boto3; boto3.client("s3").download_file({json.dumps(bucket)}, {json.dumps(key)}, '
                 f'"{WORK}/training-cockpit.tar.gz")')
        lines += [f"\"$PY\" -c {q(fetch)} || exit 1",
                  "\"$PY\" -m pip install --quiet \"$WORK/training-cockpit.tar.gz\" || exit 1"]
    else:
        lines += [f"\"$PY\" -m pip install --quiet {q(install or 'training-cockpit')} || exit 1"]
    lines += [
        "# 2. the run's config (checkpoint.s3_uri included)",
        f"cat > \"$WORK/run.toml\" <<'{tag}'",
        config_toml.rstrip("\n"),
        tag,
        "# 3. continue the run from its last checkpoint in S3 if it has one, else start it",
        "if \"$PY\" -m engine.cli cloud exists \"$RUN_ID\" --s3 \"$S3\"; then",
        "  # the interrupted instance may still be saving: wait for it to release the run (its lease)",
        "  \"$PY\" -m engine.cli resume \"$RUN_ID\" --s3 \"$S3\" --runs-dir \"$WORK/runs\" --wait-lease 300",
        "else",
        "  \"$PY\" -m engine.cli run \"$WORK/run.toml\" --run-id \"$RUN_ID\" --runs-dir \"$WORK/runs\"",
        "fi",
        "code=$?",
        "echo \"training-cockpit: engine exited with $code, $(date -u)\"",
        "# 4. finished (0), stopped or preempted (3, its checkpoint is in S3) or failed: stop paying",
        "shutdown -h now",
        "",
    ]
    return "\n".join(lines)
