"""Spot interruptions against a loopback IMDSv2 server: the client, detection, and real engines.

No request leaves the machine: the metadata service is tests/imds_server.py on 127.0.0.1,
and the engines that talk to it get AWS_EC2_METADATA_SERVICE_ENDPOINT pointed at it (the
rest of the suite runs with AWS_EC2_METADATA_DISABLED=true, see conftest.py).
"""

from __future__ import annotations

import http.client
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from cockpit_helpers import until
from conftest import popen_engine, engine_env, events_of, only_run, run_engine, status_of, wait_for
from engine.checkpoint.store import load
from engine.cloud import detect, imds
from engine.cloud.facts import InstanceFacts
from engine.cloud.imds import ImdsClient, MetadataUnavailable, instance_action, instance_facts, rebalance
from engine.cloud.spot import watcher_for
from engine.config.schema import Config
from contracts.events import EXIT_FINISHED, EXIT_STOPPED
from imds_server import ImdsServer

# A few seconds of training: digits, a narrow CNN, no workers; the notice polled every 0.1 s.
SPOT = """
[model]
name = "small_cnn"
factory_args = { width = 8 }
[data]
name = "digits"
[optim]
name = "sgd"
lr = 0.05
[schedule]
name = "cosine"
warmup_steps = 10
[train]
epochs = 3
batch_size = 32
[checkpoint]
every_steps = 5
keep_last = 3
[logging]
every_steps = 1
max_step_events_per_s = 100000
status_every_s = 0.2
tensorboard = false
[spot]
poll_s = 0.1
"""

# Four steps, then an evaluation of 135,000 samples (several seconds: longer than the notice's path).
LONG_EVAL = """
[model]
name = "small_cnn"
factory_args = { width = 8 }
[data]
name = "synthetic"
synthetic_samples = 150000
synthetic_shape = [1, 8, 8]
val_fraction = 0.9
[train]
epochs = 1
max_steps = 4
batch_size = 32
[logging]
every_steps = 1
max_step_events_per_s = 100000
status_every_s = 0.2
tensorboard = false
[cost]
price_per_hour = 1.006
[spot]
poll_s = 0.1
"""

#: The engine exits within the notice's window (120 s): the promise a spot instance needs. It takes
#: about 2 s alone, most of it leaving the process; that abandoning an evaluation is what made it
#: quick is judged by the events (no eval event), not by the clock.
EXIT_BOUND_S = 120.0

#: Hang nets for the scenarios' engines (several start at once; on a loaded 2-core machine under
#: pytest-xdist the run directory can take minutes to appear): never a judgement of speed.
HANG_S = 400


def imds_env(server: ImdsServer) -> dict[str, str]:
    env = engine_env()
    env.update(AWS_EC2_METADATA_DISABLED="false", AWS_EC2_METADATA_SERVICE_ENDPOINT=server.url)
    return env


def raw(server: ImdsServer, method: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", int(server.url.rsplit(":", 1)[1]), timeout=5)
    try:
        conn.request(method, path, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read().decode()
    finally:
        conn.close()


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "false")
    with ImdsServer() as s:
        yield s


# ---- the loopback service and the client ------------------------------------------------------


def test_the_loopback_service_speaks_imdsv2_exactly(server: ImdsServer):
    assert raw(server, "GET", "/latest/meta-data/instance-type")[0] == 401  # no token
    assert raw(server, "PUT", "/latest/api/token")[0] == 400  # no TTL
    assert raw(server, "PUT", "/latest/api/token", {imds.TTL_HEADER: "0"})[0] == 400
    status, token = raw(server, "PUT", "/latest/api/token", {imds.TTL_HEADER: "1"})
    assert status == 200 and token
    auth = {imds.TOKEN_HEADER: token}
    assert raw(server, "GET", "/latest/meta-data/instance-type", auth) == (200, "g5.xlarge")
    assert raw(server, "GET", "/latest/meta-data/instance-type/", auth) == (200, "g5.xlarge")  # trailing slash
    assert raw(server, "GET", "/latest/meta-data/spot/instance-action", auth)[0] == 404  # no notice
    assert raw(server, "GET", "/latest/meta-data/instance-type", {imds.TOKEN_HEADER: "forged"})[0] == 401
    time.sleep(1.1)  # the TTL is honoured
    assert raw(server, "GET", "/latest/meta-data/instance-type", auth)[0] == 401


def test_the_client_reads_facts_notices_and_rebalance_recommendations(server: ImdsServer):
    client = ImdsClient(server.url)
    facts = instance_facts(client)
    assert facts == InstanceFacts("spot", "g5.xlarge", "us-east-1b")
    assert facts.region == "us-east-1" and facts.spot
    assert instance_action(client) is None and rebalance(client) is None
    assert client.get("meta-data/no-such-thing") is None
    server.notice(90, action="stop")
    server.recommend_rebalance()
    notice = instance_action(client)
    assert notice.action == "stop" and 80 < notice.seconds_left() <= 91
    assert rebalance(client).endswith("Z")
    assert [r for r in server.log if r[0] == "PUT"] == [("PUT", "/latest/api/token", 200)], "one token for all"


def test_the_client_renews_its_token_before_it_expires_and_once_on_a_401(server: ImdsServer):
    now = [1000.0]
    client = ImdsClient(server.url, token_ttl_s=100, clock=lambda: now[0])
    client.get("meta-data/instance-type")
    now[0] += 70  # still 30 s left: more than the margin (a quarter of the TTL)
    client.get("meta-data/instance-type")
    assert len(server.requests("api/token")) == 1
    now[0] += 10  # 20 s left: renewed before use
    client.get("meta-data/instance-type")
    assert len(server.requests("api/token")) == 2
    server.expire_tokens()  # the service forgot every token (a restart): one 401, one renewal
    assert client.get("meta-data/instance-type") == "g5.xlarge"
    assert [s for _, _, s in server.log[-3:]] == [401, 200, 200]
    assert server.log[-2][1] == "/latest/api/token"


def test_a_service_that_never_answers_times_out_quickly(server: ImdsServer):
    server.silent.set()
    client = ImdsClient(server.url, timeout_s=0.3)
    started = time.monotonic()
    with pytest.raises(MetadataUnavailable):
        client.get("meta-data/instance-type")
    assert time.monotonic() - started < 10, "two attempts of 0.3 s and a back-off"
    assert instance_facts(client) is None
    assert len(server.hung_at) >= 2, "retried once after a back-off"


def test_metadata_disabled_sends_nothing(server: ImdsServer, monkeypatch):
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(MetadataUnavailable):
        ImdsClient(server.url).get("meta-data/instance-type")
    assert server.log == []


# ---- detection: nothing is sent off EC2 ---------------------------------------------------------


def dmi(tmp_path: Path, vendor: str = "", asset: str = "") -> Path:
    folder = tmp_path / f"dmi-{vendor or 'none'}-{asset or 'none'}".replace(" ", "_")
    folder.mkdir(exist_ok=True)
    if vendor:
        (folder / "sys_vendor").write_text(vendor + "\n")
    if asset:
        (folder / "board_asset_tag").write_text(asset + "\n")
    return folder


def test_metadata_is_allowed_only_on_ec2_or_when_asked(tmp_path: Path):
    plain, qemu = Config(), dmi(tmp_path, "QEMU")
    on = {"AWS_EC2_METADATA_DISABLED": "false"}
    assert not detect.metadata_allowed(plain, on, qemu)
    assert not detect.metadata_allowed(plain, on, tmp_path / "missing")  # no DMI at all (containers)
    assert detect.metadata_allowed(plain, on, dmi(tmp_path, "Amazon EC2"))
    assert detect.metadata_allowed(plain, on, dmi(tmp_path, "Xen", "i-0123456789abcdef0"))  # older Xen types
    assert detect.metadata_allowed(plain, {**on, imds.ENDPOINT_ENV: "http://127.0.0.1:1"}, qemu)
    enabled = Config.model_validate({"spot": {"enabled": True}})
    assert detect.metadata_allowed(enabled, on, qemu)
    assert detect.metadata_allowed(Config.model_validate({"spot": {"endpoint": "http://127.0.0.1:1"}}), on, qemu)
    off = {"AWS_EC2_METADATA_DISABLED": "true", imds.ENDPOINT_ENV: "http://127.0.0.1:1"}
    assert not detect.metadata_allowed(enabled, off, dmi(tmp_path, "Amazon EC2"))


def test_off_ec2_no_watcher_is_made_and_no_request_is_sent(server: ImdsServer, tmp_path: Path, monkeypatch):
    monkeypatch.setattr(imds, "DEFAULT_ENDPOINT", server.url)  # where a probe would go
    monkeypatch.delenv(imds.ENDPOINT_ENV, raising=False)
    monkeypatch.setattr(detect, "DMI", dmi(tmp_path, "QEMU"))
    events: list[tuple[str, dict]] = []
    emit = lambda type_, **f: events.append((type_, f))  # noqa: E731
    assert watcher_for(Config(), emit) is None
    time.sleep(0.3)
    assert server.log == [], "nothing may reach the metadata address off EC2"
    # the same config on a machine whose firmware says EC2: the watcher asks, in the background
    monkeypatch.setattr(detect, "DMI", dmi(tmp_path, "Amazon EC2"))
    watcher = watcher_for(Config(), emit)
    watcher.start()
    try:
        wait_for(lambda: watcher.facts is not None, timeout=10, what="instance facts")
        assert watcher.poll().reason == 0
        assert events[0] == ("spot", {"kind": "status", "step": 0, "lifecycle": "spot", "instance_type": "g5.xlarge",
                                      "zone": "us-east-1b", "region": "us-east-1"})
    finally:
        watcher.close()


def test_spot_poll_s_above_five_seconds_is_refused(tmp_path: Path):
    path = tmp_path / "slow.toml"
    path.write_text("[spot]\npoll_s = 30\n")
    result = run_engine("run", str(path), "--runs-dir", str(tmp_path / "runs"))
    assert result.returncode == 2 and "spot.poll_s" in result.stderr and "5" in result.stderr
    assert not (tmp_path / "runs").exists()


# ---- real engines, side by side -----------------------------------------------------------------


class Scenario:
    """One engine against its own metadata server; `drive(server, run)` acts while it trains."""

    def __init__(self, folder: Path, config: str, lifecycle: str = "spot", imds: bool = True):
        self.folder, self.config, self.lifecycle, self.imds = folder, config, lifecycle, imds
        self.run: Path | None = None
        self.returncode: int | None = None
        self.stderr = ""
        self.notice_at: float | None = None  # when the test set the notice (time.time())
        self.exited_at: float | None = None
        self.server: ImdsServer | None = None

    def go(self, drive=None, silent: bool = False, extra: tuple[str, ...] = ()) -> "Scenario":
        self.folder.mkdir(parents=True)
        (self.folder / "run.toml").write_text(self.config)
        runs = self.folder / "runs"
        with ImdsServer(lifecycle=self.lifecycle) as server:
            self.server = server
            if silent:  # it accepts every request and never answers, from the start
                server.silent.set()
            env = imds_env(server) if self.imds else engine_env()
            proc = popen_engine(["run", str(self.folder / "run.toml"), "--runs-dir", str(runs), *extra],
                                    env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            drain = threading.Thread(target=lambda: setattr(self, "stderr", proc.stderr.read()), daemon=True)
            drain.start()
            started = time.monotonic()
            try:
                self.run = wait_for(lambda: runs.is_dir() and any(runs.iterdir()) and only_run(runs),
                                    timeout=HANG_S, what="the run directory")
                if drive is not None:
                    drive(self, server)
                self.returncode = proc.wait(timeout=HANG_S)
                self.exited_at = time.time()
                self.took_s = time.monotonic() - started
            finally:
                if proc.poll() is None:
                    proc.kill()
                drain.join(timeout=10)
        return self

    def events(self, type_: str | None = None) -> list[dict]:
        return [e for e in events_of(self.run) if type_ is None or e["type"] == type_]

    def spot(self, kind: str) -> list[dict]:
        return [e for e in self.events("spot") if e.get("kind") == kind]


def events_so_far(run: Path) -> list[dict]:
    try:
        return events_of(run)
    except FileNotFoundError:  # the directory exists a moment before its event file
        return []


def notice_at_step(step: int):
    """At `step`: the engine's token stops working (it must renew it), and the notice comes."""
    def drive(sc: Scenario, server: ImdsServer) -> None:
        wait_for(lambda: status_of(sc.run).get("step", 0) >= step, timeout=HANG_S, what=f"step {step}")
        assert any(s == 404 for _, _, s in server.requests("instance-action")), "polled with a token"
        server.expire_tokens()
        server.notice(120)
        sc.notice_at = time.time()
    return drive


def notice_during_evaluation(sc: Scenario, server: ImdsServer) -> None:
    wait_for(lambda: any(e["type"] == "step" and e["step"] == 4 for e in events_so_far(sc.run)), timeout=HANG_S,
             what="the last step")
    time.sleep(0.5)  # the step boundary has long passed: the engine is evaluating
    server.notice(120)
    sc.notice_at = time.time()


def rebalance_at_step(sc: Scenario, server: ImdsServer) -> None:
    wait_for(lambda: status_of(sc.run).get("step", 0) >= 7, timeout=HANG_S, what="step 7")
    server.recommend_rebalance()


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory) -> dict[str, Scenario]:
    base = tmp_path_factory.mktemp("spot")

    def run_notice() -> Scenario:
        sc = Scenario(base / "notice", SPOT).go(notice_at_step(10))
        sc.resumed = run_engine("resume", str(sc.run))  # elsewhere (no metadata service): continues exactly
        return sc

    jobs = {
        "notice": run_notice,
        "reference": lambda: Scenario(base / "reference", SPOT, imds=False).go(),
        "evaluation": lambda: Scenario(base / "evaluation", LONG_EVAL).go(notice_during_evaluation),
        "ddp-evaluation": lambda: Scenario(base / "ddp-evaluation", LONG_EVAL.replace(
            "synthetic_samples = 150000", "synthetic_samples = 300000")).go(notice_during_evaluation, extra=("--nproc", "2")),
        "rebalance": lambda: Scenario(base / "rebalance", SPOT.replace("epochs = 3", "epochs = 1").replace(
            "every_steps = 5", "every_steps = 1000")).go(rebalance_at_step),  # its checkpoint is the only one
        "silent": lambda: Scenario(base / "silent", SPOT.replace("epochs = 3", "epochs = 1")).go(silent=True),
    }
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        futures = {name: pool.submit(job) for name, job in jobs.items()}
        return {name: f.result() for name, f in futures.items()}


def final_weights(run: Path) -> dict:
    return load(sorted((run / "checkpoints").glob("step-*.pt"))[-1])


def test_a_notice_mid_run_checkpoints_and_exits_3_and_the_resumed_run_continues_exactly(scenarios):
    sc, ref = scenarios["notice"], scenarios["reference"]
    assert ref.returncode == EXIT_FINISHED, ref.stderr
    assert sc.returncode == EXIT_STOPPED, sc.stderr
    assert sc.exited_at - sc.notice_at < EXIT_BOUND_S
    (notice,) = sc.spot("notice")
    (preempted,) = sc.spot("preempted")
    assert notice["action"] == "terminate" and notice["lifecycle"] == "spot" and notice["instance_type"] == "g5.xlarge"
    assert 0 < preempted["seconds_left"] <= 120
    final = [e for e in sc.events("state") if e["state"] == "preempted"][-1]  # (the resume's follow)
    assert final["exit_code"] == 3 and 0 < final["seconds_left"] <= 120
    assert "spot interruption notice" in final["reason"]
    # the stop's checkpoint (or the periodic one of the same step, which serves it)
    assert final["step"] in [e["step"] for e in sc.events("checkpoint")]
    events = sc.events()
    first_session = events[:events.index(final)]
    assert max(e["step"] for e in first_session if e["type"] == "step") == final["step"] < 135, \
        "stopped at the step boundary, mid-run"
    assert (notice["step"], preempted["step"]) == (final["step"], final["step"]), "at the next boundary"

    assert sc.resumed.returncode == EXIT_FINISHED, sc.resumed.stderr
    ours, theirs = final_weights(sc.run), final_weights(ref.run)
    assert ours["step"] == theirs["step"] == 135
    for key, tensor in theirs["model"].items():
        assert torch.equal(ours["model"][key], tensor), f"weights differ at {key}"


def test_a_notice_during_a_long_evaluation_abandons_it(scenarios):
    sc = scenarios["evaluation"]
    assert sc.returncode == EXIT_STOPPED, sc.stderr
    assert sc.exited_at - sc.notice_at < EXIT_BOUND_S
    assert sc.events("eval") == [], "the evaluation was cut short: without the check it would have " \
        "finished, and the run with it (exit 0)"
    final = sc.events("state")[-1]
    assert final["state"] == "preempted" and final["step"] == 4
    assert [e["step"] for e in sc.events("checkpoint") if e["reason"] == "stop"] == [4]
    # resume would evaluate again from the same position: the stop checkpoint is at the epoch's end
    assert load(sorted((sc.run / "checkpoints").glob("step-*.pt"))[-1])["trainer"]["epoch"] == 0


def test_under_ddp_every_rank_leaves_the_evaluation_at_the_same_batch_and_exits_3(scenarios):
    sc = scenarios["ddp-evaluation"]
    assert sc.returncode == EXIT_STOPPED, sc.stderr
    assert sc.exited_at - sc.notice_at < EXIT_BOUND_S
    assert sc.events("eval") == []
    final = sc.events("state")[-1]
    assert final["state"] == "preempted" and final["step"] == 4
    ckpt = load(sorted((sc.run / "checkpoints").glob("step-*.pt"))[-1])
    assert ckpt["step"] == 4 and ckpt["world_size"] == 2


def test_an_expired_token_is_renewed_and_the_notice_still_seen(scenarios):
    sc = scenarios["notice"]  # its token was made to expire just before the notice
    assert sc.returncode == EXIT_STOPPED, sc.stderr
    assert sc.exited_at - sc.notice_at < EXIT_BOUND_S
    after = sc.server.log[[i for i, r in enumerate(sc.server.log) if r[2] == 401][0]:]
    assert after[1] == ("PUT", "/latest/api/token", 200), "a 401 renews the token"
    assert ("GET", "/latest/meta-data/spot/instance-action", 200) in after


def test_a_rebalance_recommendation_checkpoints_early_without_stopping(scenarios):
    sc = scenarios["rebalance"]
    assert sc.returncode == EXIT_FINISHED, sc.stderr
    (rebalance_event,) = sc.spot("rebalance")
    saved = [e for e in sc.events("checkpoint") if e["reason"] == "rebalance"]
    assert len(saved) == 1 and saved[0]["step"] == rebalance_event["step"] >= 7
    assert sc.spot("notice") == [] and sc.events("state")[-1]["state"] == "finished"
    # spot without a notice: the status came first, the notice was polled all along
    (status,) = sc.spot("status")
    assert status["lifecycle"] == "spot" and status["zone"] == "us-east-1b" and status["region"] == "us-east-1"
    assert len(sc.server.requests("instance-action")) >= 2


def test_on_demand_shows_its_status_and_polls_no_notice(monkeypatch):
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "false")
    events: list[tuple[str, dict]] = []
    with ImdsServer(lifecycle="on-demand") as server:
        monkeypatch.setenv(imds.ENDPOINT_ENV, server.url)
        watcher = watcher_for(load_config_text("[spot]\npoll_s = 0.05\n"), lambda t, **f: events.append((t, f)))
        watcher.start()
        try:
            wait_for(lambda: not watcher.thread.is_alive(), timeout=10, what="the watcher to stop asking")
            assert watcher.poll().reason == 0
        finally:
            watcher.close()
        assert events == [("spot", {"kind": "status", "step": 0, "lifecycle": "on-demand", "instance_type": "g5.xlarge",
                                    "zone": "us-east-1b", "region": "us-east-1"})]
        assert server.requests("instance-action") == [], "no notice comes to an on-demand instance"


def load_config_text(text: str) -> Config:
    import tomllib
    return Config.model_validate(tomllib.loads(text))


def test_a_service_that_never_answers_does_not_stall_training(scenarios):
    sc = scenarios["silent"]
    assert sc.returncode == EXIT_FINISHED, sc.stderr
    assert sc.spot("status") == []
    steps = [e for e in sc.events("step")]
    assert steps[-1]["step"] == 45
    hung = sc.server.hung_at
    assert hung, "the watcher asked"
    # while a request hung (the client gives up after 1 s), steps went on
    assert any(h < e["t"] < h + 0.9 for h in hung for e in steps), (hung, [e["t"] for e in steps][:5])


async def test_the_cockpit_shows_the_spot_pane_with_price_and_countdown(scenarios, tmp_path: Path):
    from cockpit.app import CockpitApp
    from cockpit.settings import Settings
    from cockpit.widgets.spot_pane import SpotPane

    sc = scenarios["evaluation"]
    at = imds.parse_time(sc.spot("notice")[0]["notice_time"])
    app = CockpitApp(sc.run.parent, run=sc.run, user=Settings(), poll_gpu=False, clock=lambda: at - 75)
    async with app.run_test(size=(120, 40)) as pilot:
        pane = app.screen.query_one(SpotPane)
        await until(pilot, lambda: pane.display and "interruption" in pane.text.plain, what="the spot pane")
        text = pane.text.plain
        assert text.startswith("spot g5.xlarge  us-east-1b")
        assert "1.0060 USD/h (config" in text  # the price and its source, from the cost events
        assert "preempted: saved, " in text and " s to spare" in text
        assert "interruption (terminate) in 1:15" in text
        app.save_screenshot(str(tmp_path / "spot.svg"))


async def test_the_spot_pane_stays_hidden_without_spot_events(scenarios):
    from cockpit.app import CockpitApp
    from cockpit.settings import Settings
    from cockpit.widgets.spot_pane import SpotPane

    run = scenarios["reference"].run  # no metadata service: no spot event
    app = CockpitApp(run.parent, run=run, user=Settings(), poll_gpu=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: app.link is not None and app.link.history.state == "finished", what="the run")
        await pilot.pause(0.6)
        assert not app.screen.query_one(SpotPane).display
