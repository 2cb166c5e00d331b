"""`cockpit-engine cloud launch|status|stop`: EC2 spot instances that train a run mirrored to S3.

`launch` starts one instance with `run_instances` and `InstanceMarketOptions` (market "spot",
one-time, terminate on interruption; the older `request_spot_instances` is not used), IMDSv2
required, tagged `training-cockpit:run = <run-id>`, with user data (engine.cloud.userdata) that
installs the project and starts the run, or resumes it from S3 when S3 has a checkpoint of it:
launching again with the same `--run-id` after an interruption continues the run. `status` and
`stop` find our instances by that tag; `stop` terminates only those.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

from engine.cloud import userdata
from engine.cloud.s3 import S3Location, client, uri_problem
from contracts.errors import BadInput

TAG_RUN = "training-cockpit:run"
TAG_S3 = "training-cockpit:s3"
#: The AWS Deep Learning AMI with PyTorch (Ubuntu 22.04), looked up in SSM when --ami is not given.
DLAMI_PARAMETER = "/aws/service/deeplearning/ami/x86_64/oss-nvidia-driver-gpu-pytorch-2.7-ubuntu-22.04/latest/ami-id"
LIVE = ("pending", "running", "stopping", "stopped", "shutting-down")


def spot_request(instance_type: str, ami: str, script: str, run_id: str, s3_uri: str,
                 iam_profile: str | None = None, key_name: str | None = None, subnet: str | None = None,
                 max_price: str | None = None) -> dict[str, Any]:
    """The run_instances arguments for one tagged spot instance."""
    tags = [{"Key": TAG_RUN, "Value": run_id}, {"Key": TAG_S3, "Value": s3_uri},
            {"Key": "Name", "Value": f"training-cockpit {run_id}"}]
    spot: dict[str, Any] = {"SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"}
    if max_price:
        spot["MaxPrice"] = max_price
    request: dict[str, Any] = {
        "ImageId": ami, "InstanceType": instance_type, "MinCount": 1, "MaxCount": 1, "UserData": script,
        "InstanceMarketOptions": {"MarketType": "spot", "SpotOptions": spot},
        "InstanceInitiatedShutdownBehavior": "terminate",  # the script's shutdown ends the billing
        "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},  # IMDSv2 only
        "TagSpecifications": [{"ResourceType": "instance", "Tags": tags},
                              {"ResourceType": "volume", "Tags": tags}],
    }
    if iam_profile:
        request["IamInstanceProfile"] = {"Name": iam_profile}
    if key_name:
        request["KeyName"] = key_name
    if subnet:
        request["SubnetId"] = subnet
    return request


def source_archive(root: Path) -> bytes:
    """The project's source as a pip-installable .tar.gz (what the instance installs)."""
    if not (root / "pyproject.toml").is_file():
        raise BadInput(f"--install: no project source at {root} (an installed package); pass --install "
                       "with a pip requirement, e.g. --install 'training-cockpit==0.1.0' or a git URL")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in ("pyproject.toml", "README.md", "contracts", "engine", "cockpit", "themes"):
            path = root / name
            if path.exists():
                tar.add(path, arcname=f"training-cockpit/{name}",
                        filter=lambda info: None if "__pycache__" in info.name or info.name.endswith(".pyc")
                        else info)
    return buf.getvalue()


def launch(config_path: str, sets: list[str], instance_type: str, s3_uri: str, region: str | None,
           ami: str | None, run_id: str | None, install: str | None, dry_run: bool,
           iam_profile: str | None = None, key_name: str | None = None, subnet: str | None = None,
           max_price: str | None = None) -> int:
    """Start the instance (or, with dry_run, print what would be sent); exit code 0."""
    from engine.config import loading as config_mod
    from contracts.layout import new_run_id

    if uri_problem(s3_uri):
        raise BadInput(f"--s3 {s3_uri!r}: {uri_problem(s3_uri)}")
    # mirrored to S3, and watching for the interruption notice (the instance is spot)
    cfg = config_mod.load(config_path, [*sets, f"checkpoint.s3_uri={json.dumps(s3_uri)}", "spot.enabled=true"])
    run_id = run_id or new_run_id(cfg.logging.run_name or cfg.model.name)
    region = region or _default_region()
    where = S3Location.parse(s3_uri).child(run_id)
    source = None if install else (where.bucket, where.key(userdata.SOURCE_KEY))
    script = userdata.build(config_mod.to_toml(cfg), run_id, s3_uri, region, install, source)
    if len(script.encode()) > userdata.MAX_BYTES:
        raise BadInput(f"{config_path}: the user data would be {len(script.encode())} bytes; EC2 takes "
                       f"{userdata.MAX_BYTES} at most (a smaller config, or --install instead of the source)")
    if dry_run:
        request = spot_request(instance_type, ami or f"(resolved from SSM {DLAMI_PARAMETER})", script, run_id,
                               s3_uri, iam_profile, key_name, subnet, max_price)
        print(json.dumps({k: v for k, v in request.items() if k != "UserData"}, indent=1))
        print(f"--- user data ({len(script.encode())} bytes) ---\n{script}", end="")
        return 0
    ec2 = client("ec2", region)
    ami = ami or _dlami(region)
    if source is not None:
        from pathlib import Path as _Path

        import engine

        body = source_archive(_Path(engine.__file__).resolve().parents[1])
        client("s3", region).put_object(Bucket=source[0], Key=source[1], Body=body)
    reply = ec2.run_instances(**spot_request(instance_type, ami, script, run_id, s3_uri, iam_profile,
                                             key_name, subnet, max_price))
    instance = reply["Instances"][0]
    print(f"launched {instance['InstanceId']} ({instance_type}, spot, {region}) for run {run_id}")
    print(f"  mirrored to {where}; watch:  cockpit-engine cloud status --region {region}")
    print(f"  after an interruption:      cockpit-engine cloud launch --spot {config_path} "
          f"--instance-type {instance_type} --s3 {s3_uri} --run-id {run_id}")
    return 0


def _default_region() -> str:
    import boto3

    region = boto3.session.Session().region_name
    if not region:
        raise BadInput("--region: no region given and none configured (AWS_DEFAULT_REGION or ~/.aws/config)")
    return region


def _dlami(region: str) -> str:
    try:
        return client("ssm", region).get_parameter(Name=DLAMI_PARAMETER)["Parameter"]["Value"]
    except Exception as exc:  # noqa: BLE001 - botocore errors
        raise BadInput(f"--ami: not given, and the Deep Learning AMI could not be looked up in SSM "
                       f"({DLAMI_PARAMETER}: {type(exc).__name__}); pass --ami ami-...") from None


def ours(region: str | None, include_ended: bool = False) -> list[dict[str, Any]]:
    """Our instances (tagged training-cockpit:run), newest first."""
    ec2 = client("ec2", region or _default_region())
    filters = [{"Name": "tag-key", "Values": [TAG_RUN]}]
    if not include_ended:
        filters.append({"Name": "instance-state-name", "Values": list(LIVE)})
    found = []
    for page in ec2.get_paginator("describe_instances").paginate(Filters=filters):
        for reservation in page["Reservations"]:
            for inst in reservation["Instances"]:
                tags = {t["Key"]: t["Value"] for t in inst.get("Tags", [])}
                found.append({"instance_id": inst["InstanceId"], "state": inst["State"]["Name"],
                              "type": inst.get("InstanceType"), "lifecycle": inst.get("InstanceLifecycle", "on-demand"),
                              "zone": inst.get("Placement", {}).get("AvailabilityZone"),
                              "launched": str(inst.get("LaunchTime", "")), "run": tags.get(TAG_RUN),
                              "s3": tags.get(TAG_S3)})
    return sorted(found, key=lambda i: i["launched"], reverse=True)


def status(region: str | None, include_ended: bool, as_json: bool) -> int:
    rows = ours(region, include_ended)
    if as_json:
        print(json.dumps(rows, indent=1))
        return 0
    if not rows:
        print("no instances launched by training-cockpit" + ("" if include_ended else " are running (--all for ended ones)"))
        return 0
    cols = ("instance_id", "state", "type", "lifecycle", "zone", "run", "launched")
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in cols]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    for r in rows:
        print("  ".join(str(r[c]).ljust(w) for c, w in zip(cols, widths)))
    return 0


def stop(targets: list[str], all_: bool, region: str | None) -> int:
    """Terminate our instances: by instance id or run id, or all of them."""
    if not targets and not all_:
        raise BadInput("cloud stop: name instance ids or run ids, or pass --all")
    rows = ours(region)
    chosen = rows if all_ else [r for r in rows if r["instance_id"] in targets or r["run"] in targets]
    unknown = [t for t in targets if not any(t in (r["instance_id"], r["run"]) for r in rows)]
    if unknown:
        raise BadInput(f"cloud stop: {', '.join(unknown)}: not a live instance or run launched by "
                       f"training-cockpit (see `cockpit-engine cloud status`); nothing was terminated")
    if not chosen:
        print("nothing to terminate")
        return 0
    ids = [r["instance_id"] for r in chosen]
    client("ec2", region or _default_region()).terminate_instances(InstanceIds=ids)
    for r in chosen:
        print(f"terminating {r['instance_id']} (run {r['run']})")
    return 0


def exists(run_id: str, s3_uri: str) -> int:
    """0 when S3 holds a checkpoint of the run (resume it), 1 when not (start it)."""
    from engine.cloud.s3run import exists as has_checkpoint

    if uri_problem(s3_uri):
        raise BadInput(f"--s3 {s3_uri!r}: {uri_problem(s3_uri)}")
    return 0 if has_checkpoint(client(), S3Location.parse(s3_uri).child(run_id)) else 1
