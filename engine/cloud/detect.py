"""Whether the engine may talk to the instance metadata address at all (EC2 or asked to).

Nothing is sent to the metadata address unless the machine says it is EC2 (its DMI vendor
or asset tag, as cloud-init checks: no network needed), or the user configured an endpoint
or `spot.enabled = true`; and never with AWS_EC2_METADATA_DISABLED=true.
"""

from __future__ import annotations

import os
from pathlib import Path

from engine.cloud.imds import ENDPOINT_ENV, ImdsClient, disabled_by_env, endpoint_from

DMI = Path("/sys/devices/virtual/dmi/id")


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return ""


def looks_like_ec2(dmi: Path | None = None) -> bool:
    """The machine's firmware says EC2: vendor 'Amazon EC2' (Nitro) or an 'i-...' asset tag."""
    dmi = DMI if dmi is None else dmi
    return "amazon" in _read(dmi / "sys_vendor").lower() or _read(dmi / "board_asset_tag").startswith("i-")


def metadata_allowed(cfg, environ: dict[str, str] | None = None, dmi: Path | None = None) -> bool:
    """Whether this engine may send anything to the metadata endpoint."""
    env = os.environ if environ is None else environ
    if disabled_by_env(env):
        return False
    return bool(cfg.spot.enabled or cfg.spot.endpoint or env.get(ENDPOINT_ENV)) or looks_like_ec2(dmi)


def client_for(cfg, environ: dict[str, str] | None = None, dmi: Path | None = None) -> ImdsClient | None:
    """A metadata client for this config, or None where none is allowed."""
    return ImdsClient(endpoint_from(cfg.spot.endpoint, environ)) if metadata_allowed(cfg, environ, dmi) else None
