"""AWS's Spot Instance Advisor data: an instance type's interruption-frequency band in a region.

The advisor's page (https://aws.amazon.com/ec2/spot/instance-advisor/) is drawn from one public
JSON file, `spot-advisor-data.json`, that a user downloads once (the engine fetches nothing):

    {"ranges": [{"index": 0, "label": "<5%", ...}, ...],
     "spot_advisor": {"us-east-1": {"Linux": {"p4d.24xlarge": {"s": 60, "r": 2}, ...}, ...}, ...}}

`r` is the index of the band in `ranges`, `s` the saving over on-demand in percent. The engine
reads it for `checkpoint.every_steps = "auto"` (engine.checkpoint.interval) once the metadata
service has said which instance type and region this is; `spot.advisor_data` is checked
when the config is (engine.config.operations), so a bad file exits 2 before a run starts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: The advisor's bands (its "frequency of interruption", per month) and the share each is taken as
#: by checkpoint.every_steps = "auto" (the upper edge; ">20%" has none).
BANDS = {"<5%": 0.05, "5-10%": 0.10, "10-15%": 0.15, "15-20%": 0.20, ">20%": 0.50}


def load(path: str) -> dict[str, Any]:
    """The advisor's data; ValueError naming the field and what was expected."""
    try:
        data = json.loads(Path(path).expanduser().read_text())
    except OSError as exc:
        raise ValueError(f"spot.advisor_data = {path!r}: cannot read it ({exc.strerror or exc})") from None
    except ValueError:
        raise ValueError(f"spot.advisor_data = {path!r}: not JSON; expected the Spot Instance Advisor's "
                         "spot-advisor-data.json") from None
    if not isinstance(data, dict) or not isinstance(data.get("spot_advisor"), dict) \
            or not isinstance(data.get("ranges"), list):
        raise ValueError(f"spot.advisor_data = {path!r}: no 'spot_advisor' and 'ranges'; expected the Spot "
                         "Instance Advisor's spot-advisor-data.json")
    return data


def band_of(data: dict[str, Any], region: str, instance_type: str, os_name: str = "Linux") -> str | None:
    """The band label ("<5%", ...) for the instance type in the region, None where the data has none."""
    entry = ((data.get("spot_advisor") or {}).get(region) or {}).get(os_name, {}).get(instance_type)
    if not isinstance(entry, dict) or not isinstance(entry.get("r"), int):
        return None
    labels = {r.get("index"): str(r.get("label", "")).replace(" ", "") for r in data["ranges"] if isinstance(r, dict)}
    label = labels.get(entry["r"])
    if label in BANDS:
        return label
    ordered = list(BANDS)
    return ordered[entry["r"]] if 0 <= entry["r"] < len(ordered) else None
