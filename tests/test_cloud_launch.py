"""`cockpit-engine cloud launch|status|stop|exists`: the user-data script on its own, and EC2's
run_instances with spot options, tags, describe and terminate against moto on loopback."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from cockpit_helpers import until
from conftest import TINY
from engine.cli import main
from engine.cloud import userdata
from engine.cloud.launch import TAG_RUN, spot_request
from contracts.events import EXIT_BAD_INPUT
from moto_server import bucket, moto  # noqa: F401 - moto is a fixture

CONFIG = "[train]\nepochs = 2\n[checkpoint]\ns3_uri = \"s3://b/runs\"\n"


def test_the_user_data_script_installs_then_resumes_or_starts(tmp_path: Path):
    script = userdata.build(CONFIG, "bert-1", "s3://b/runs", "eu-west-1", None, ("b", "runs/bert-1/source/x.tar.gz"))
    assert script.startswith("#!/bin/bash\n")
    (tmp_path / "u.sh").write_text(script)
    subprocess.run(["bash", "-n", str(tmp_path / "u.sh")], check=True)  # valid shell
    order = [script.index(s) for s in ("pip install --quiet 'boto3", 'download_file("b", "runs/bert-1/source/x.tar.gz"',
                                        "<<'COCKPIT_CONFIG'", "cloud exists \"$RUN_ID\" --s3 \"$S3\"",
                                        "resume \"$RUN_ID\" --s3 \"$S3\" --runs-dir \"$WORK/runs\" --wait-lease 300", "run \"$WORK/run.toml\" --run-id \"$RUN_ID\"",
                                        "shutdown -h now")]
    assert order == sorted(order)
    assert "RUN_ID=bert-1\n" in script and "S3=s3://b/runs\n" in script and "AWS_DEFAULT_REGION=eu-west-1" in script
    assert CONFIG.strip() in script
    assert "AWS_SECRET" not in script and "AWS_ACCESS_KEY" not in script  # the instance profile, never keys
    # a pip requirement instead of the uploaded source; a config that contains the heredoc tag
    tricky = CONFIG + "# COCKPIT_CONFIG\n"
    other = userdata.build(tricky, "r'; rm -rf /", "s3://b/runs", "us-east-1", "training-cockpit==0.1.0")
    assert "pip install --quiet training-cockpit==0.1.0" in other and "download_file" not in other
    assert "<<'COCKPIT_CONFIG_'" in other and "RUN_ID='r'\"'\"'; rm -rf /'" in other
    (tmp_path / "v.sh").write_text(other)
    subprocess.run(["bash", "-n", str(tmp_path / "v.sh")], check=True)


def test_the_spot_request_uses_run_instances_market_options_and_tags():
    request = spot_request("g5.xlarge", "ami-1", "#!/bin/bash", "bert-1", "s3://b/runs", iam_profile="p",
                           max_price="0.5")
    assert request["InstanceMarketOptions"] == {"MarketType": "spot", "SpotOptions": {
        "SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate", "MaxPrice": "0.5"}}
    assert request["InstanceInitiatedShutdownBehavior"] == "terminate"
    assert request["MetadataOptions"]["HttpTokens"] == "required"
    assert {"Key": TAG_RUN, "Value": "bert-1"} in request["TagSpecifications"][0]["Tags"]
    assert request["IamInstanceProfile"] == {"Name": "p"}


def test_launch_status_stop_against_moto(tmp_path: Path, moto: str, capsys):
    import boto3

    name = bucket("launch-runs")
    (tmp_path / "run.toml").write_text(TINY)
    ec2 = boto3.client("ec2", region_name="us-east-1")
    ami = ec2.describe_images()["Images"][0]["ImageId"]
    common = ["--instance-type", "g5.xlarge", "--s3", f"s3://{name}/runs", "--region", "us-east-1", "--ami", ami]

    assert main(["cloud", "launch", "--spot", str(tmp_path / "run.toml"), *common, "--run-id", "r1", "--dry-run"]) == 0
    dry = capsys.readouterr().out
    assert '"MarketType": "spot"' in dry and "#!/bin/bash" in dry
    assert ec2.describe_instances()["Reservations"] == []  # a dry run starts nothing

    assert main(["cloud", "launch", "--spot", str(tmp_path / "run.toml"), *common, "--run-id", "r1"]) == 0
    assert main(["cloud", "launch", "--spot", str(tmp_path / "run.toml"), *common, "--run-id", "r2",
                 "--install", "training-cockpit==0.1.0"]) == 0
    capsys.readouterr()
    instances = [i for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]]
    assert len(instances) == 2 and {i["InstanceLifecycle"] for i in instances} == {"spot"}
    by_run = {t["Value"]: i for i in instances for t in i["Tags"] if t["Key"] == TAG_RUN}
    assert set(by_run) == {"r1", "r2"}
    data = ec2.describe_instance_attribute(InstanceId=by_run["r1"]["InstanceId"], Attribute="userData")
    script = base64.b64decode(data["UserData"]["Value"]).decode()
    assert "RUN_ID=r1" in script and f"s3_uri = \"s3://{name}/runs\"" in script
    assert "[spot]\nenabled = true" in script  # the spot watcher runs, whatever the config said
    # r1 installs this project's source, uploaded beside its run
    archive = boto3.client("s3").get_object(Bucket=name, Key="runs/r1/source/training-cockpit.tar.gz")["Body"].read()
    names = tarfile.open(fileobj=io.BytesIO(archive)).getnames()
    assert "training-cockpit/pyproject.toml" in names and "training-cockpit/engine/cli.py" in names
    assert not any("__pycache__" in n for n in names)

    ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1)  # not ours: never listed nor stopped
    assert main(["cloud", "status", "--region", "us-east-1", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert sorted(r["run"] for r in listed) == ["r1", "r2"] and {r["lifecycle"] for r in listed} == {"spot"}
    assert main(["cloud", "status", "--region", "us-east-1"]) == 0
    assert "r1" in capsys.readouterr().out

    assert main(["cloud", "stop", "i-0123456789abcdef0", "--region", "us-east-1"]) == EXIT_BAD_INPUT
    assert "not a live instance or run launched by training-cockpit" in capsys.readouterr().err
    assert main(["cloud", "stop", "r1", "--region", "us-east-1"]) == 0
    states = {i["InstanceId"]: i["State"]["Name"] for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]}
    assert states[by_run["r1"]["InstanceId"]] in ("shutting-down", "terminated")
    assert states[by_run["r2"]["InstanceId"]] in ("pending", "running")
    assert sum(s in ("pending", "running") for s in states.values()) == 2  # r2 and the stranger
    capsys.readouterr()
    assert main(["cloud", "stop", "--all", "--region", "us-east-1"]) == 0
    assert f"terminating {by_run['r2']['InstanceId']} (run r2)" in capsys.readouterr().out
    assert main(["cloud", "status", "--region", "us-east-1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["cloud", "status", "--region", "us-east-1", "--all", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 2  # ended ones too, still only ours


def test_cloud_exists_answers_whether_s3_has_a_checkpoint(moto: str):
    import boto3

    name = bucket("exists-runs")
    assert main(["cloud", "exists", "r1", "--s3", f"s3://{name}/runs"]) == 1
    boto3.client("s3").put_object(Bucket=name, Key="runs/r1/checkpoints/latest",
                                  Body=b'{"file": "step-00000005.pt", "step": 5}')
    assert main(["cloud", "exists", "r1", "--s3", f"s3://{name}/runs"]) == 0
    assert main(["cloud", "exists", "r1", "--s3", "gs://nope"]) == EXIT_BAD_INPUT


@pytest.mark.parametrize("args, message", [
    (["--s3", "s3://x"], "--s3 's3://x'"),
    (["--s3", "s3://fine-bucket/runs", "--set", "train.epochs=0"], "train.epochs"),
])
def test_launch_refuses_bad_input_before_any_call(tmp_path: Path, capsys, args, message):
    (tmp_path / "run.toml").write_text(TINY)
    code = main(["cloud", "launch", "--spot", str(tmp_path / "run.toml"), "--instance-type", "g5.xlarge",
                 "--region", "us-east-1", *args])
    assert code == EXIT_BAD_INPUT and message in capsys.readouterr().err


async def test_the_cockpit_launches_a_spot_run_from_the_runs_list(tmp_path: Path, moto: str):
    """`a` in the runs list: the form, then the real `cockpit-engine cloud launch` against moto."""
    import boto3

    from cockpit.app import CockpitApp
    from cockpit.screens.modals import ReportScreen, SpotLaunchScreen
    from cockpit.settings import Settings

    name = bucket("cockpit-launch")
    (tmp_path / "run.toml").write_text(TINY)
    ec2 = boto3.client("ec2", region_name="us-east-1")
    ami = ec2.describe_images()["Images"][0]["ImageId"]
    before = {i["InstanceId"] for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]}
    (tmp_path / "runs").mkdir()
    app = CockpitApp(tmp_path / "runs", user=Settings(), poll_gpu=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("a")
        await until(pilot, lambda: isinstance(app.screen, SpotLaunchScreen), what="the spot launch form")
        values = {"launch-config": str(tmp_path / "run.toml"), "launch-type": "g5.xlarge",
                  "launch-s3": f"s3://{name}/runs", "launch-region": "us-east-1", "launch-ami": ami}
        for field, value in values.items():
            app.screen.query_one(f"#{field}").value = value
        app.screen.query_one("#launch-ami").focus()
        await pilot.press("enter")
        for _ in range(600):
            if isinstance(app.screen, ReportScreen):
                break
            await pilot.pause(0.1)
        assert isinstance(app.screen, ReportScreen), "no launch report came back"
        report = app.screen.text
    after = [i for r in ec2.describe_instances()["Reservations"] for i in r["Instances"] if i["InstanceId"] not in before]
    assert len(after) == 1 and after[0]["InstanceLifecycle"] == "spot" and after[0]["InstanceType"] == "g5.xlarge"
    assert after[0]["InstanceId"] in report
