"""The `target` command against a real training engine: set live over the socket and the commands
folder, a fresh projection at once, bad values refused while the run goes on, the run finishing at
the new target, and a resume keeping the live-set target (a resume's --set winning over it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import TINY, events_of, only_run, run_engine, status_of
from contracts import command_files
from contracts.control import send_command
from contracts.events import EXIT_FINISHED, EXIT_STOPPED
from engine.config.loading import load as load_config
from engine.train.target import on_resume
from test_control import launch, wait_alive


def of(run: Path, kind: str, after: int = 0) -> list[dict]:
    """The events of this kind after the first `after` events of the file (none before it exists)."""
    if not (run / "events.jsonl").exists():
        return []
    return [e for e in events_of(run)[after:] if e["type"] == kind]


def test_target_set_live_projects_at_once_stops_the_run_and_outlives_a_resume(tmp_path):
    (tmp_path / "tiny.toml").write_text(TINY)
    runs = tmp_path / "runs"
    proc, out = launch(tmp_path, "run", str(tmp_path / "tiny.toml"), "--runs-dir", str(runs),
                       "--set", "train.epochs=40", "--set", "checkpoint.every_steps=1000")
    try:
        run = wait_alive(proc, lambda: runs.is_dir() and any(runs.iterdir()) and only_run(runs), out, "the run")
        wait_alive(proc, lambda: of(run, "eval"), out, "the first evaluation")
        sock = status_of(run)["socket"]

        # bad values: an error reply naming the field, the value and what was expected; training goes on
        bad = send_command(sock, "target", metric="val_accuracy", value=1.5, timeout=60)
        assert bad["ok"] is False and "value = 1.5" in bad["error"] and "0 < value <= 1" in bad["error"]
        assert "nothing was changed" in bad["error"]
        wrong = command_files.send(run, "target", via="file", timeout=60, metric="val_perplexity", value=3.0)
        assert wrong["ok"] is False and "metric='val_perplexity'" in wrong["error"]
        assert "expected one of val_accuracy, val_loss" in wrong["error"]
        malformed = send_command(sock, "target", value="high", timeout=60)
        assert malformed == {"ok": False, "error": "target: value='high': expected a finite number (or clear=true)"}
        assert not of(run, "target") and proc.poll() is None

        # a target out of reach, over the socket (cockpit-engine send): a target event and a projection at once
        sent = run_engine("send", str(run), "target", "--value", "0.999", "--no-stop")
        assert sent.returncode == 0, sent.stderr
        reply = json.loads(sent.stdout)
        assert reply["ok"] is True and reply["value"] == 0.999 and reply["stop"] is False
        (set_live,) = of(run, "target")
        assert set_live == {**set_live, "metric": "val_accuracy", "value": 0.999, "stop": False, "by": "cli",
                            "step": reply["step"]}
        events = events_of(run)
        at = events.index(set_live)
        fresh = [e for e in events[at:] if e["type"] == "projection"]
        assert fresh, "a projection comes with the target event, before the next evaluation"
        newest_eval = [e for e in events[:at] if e["type"] == "eval"][-1]
        assert fresh[0]["target"] == 0.999 and fresh[0]["step"] == newest_eval["step"]
        assert fresh[0]["reached"] is False and fresh[0]["message"].startswith("target val_accuracy 0.999")

        stopped = send_command(sock, "stop", timeout=120)
        assert stopped["ok"] is True
        assert proc.wait(timeout=120) == EXIT_STOPPED
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=60)

    # a resume without --set keeps the live-set target; a new one over the file channel finishes the run
    before = len(events_of(run))
    proc, out = launch(tmp_path, "resume", str(run))
    try:
        wait_alive(proc, lambda: of(run, "projection", before), out, "a projection after the resume")
        kept = of(run, "projection", before)[0]
        assert (kept["metric"], kept["target"]) == ("val_accuracy", 0.999)
        assert any("the target set live at step" in e["message"] and "is kept: val_accuracy 0.999" in e["message"]
                   for e in of(run, "log", before))
        reply = command_files.send(run, "target", via="file", timeout=120, value=0.5, stop=True, by="test")
        assert reply["ok"] is True and reply["metric"] == "val_accuracy" and reply["stop"] is True
        assert proc.wait(timeout=240) == EXIT_FINISHED, out.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=60)
    final = of(run, "state")[-1]
    last_eval = of(run, "eval")[-1]
    assert final["state"] == "finished" and final["step"] == last_eval["step"] < status_of(run)["total_steps"]
    assert final["reason"].startswith("target reached: val_accuracy") and ">= 0.5" in final["reason"]
    assert of(run, "projection")[-1]["reached"] is True

    # the rule a resume follows, on this run's events: the newest target event, unless --set names it
    cfg = load_config(run / "config.toml")
    emitted: list[tuple[str, dict]] = []
    on_resume(cfg, run / "events.jsonl", [], lambda kind, **f: emitted.append((kind, f)))
    assert (cfg.train.target.metric, cfg.train.target.value, cfg.train.stop_at_target) == ("val_accuracy", 0.5, True)
    cfg = load_config(run / "config.toml", ["train.target.value=0.7"])
    emitted.clear()
    on_resume(cfg, run / "events.jsonl", ["train.target.value=0.7"], lambda kind, **f: emitted.append((kind, f)))
    assert cfg.train.target.value == 0.7 and not cfg.train.stop_at_target
    assert emitted == [("target", {"metric": "val_accuracy", "value": 0.7, "stop": False, "by": "resume --set"})]


def test_two_ranks_finish_together_at_the_target_rank_0_watches(tmp_path):
    """The hook is rank 0's alone (a live target reaches rank 0 only); its verdict, agreed by
    maximum, finishes both ranks at the same evaluation."""
    from test_distributed import DDP_TOML, STEPS_PER_EPOCH

    (tmp_path / "ddp.toml").write_text(DDP_TOML)
    runs = tmp_path / "runs"
    done = run_engine("run", str(tmp_path / "ddp.toml"), "--nproc", "2", "--runs-dir", str(runs),
                      "--set", 'train.target={metric="val_loss",value=1000.0}', "--set", "train.stop_at_target=true",
                      "--set", "train.epochs=3", timeout=240)
    assert done.returncode == EXIT_FINISHED, done.stderr[-3000:]
    run = only_run(runs)
    final = of(run, "state")[-1]
    assert final["state"] == "finished" and final["step"] == STEPS_PER_EPOCH  # the first evaluation
    assert final["reason"].startswith("target reached: val_loss") and "<= 1000 at step" in final["reason"]
    assert [e["step"] for e in of(run, "eval")] == [STEPS_PER_EPOCH]


def test_the_projection_sink_follows_target_events_over_every_metrics_evaluations(tmp_path):
    from engine.telemetry.projection import Projection

    out: list[dict] = []
    loads: list[int] = []

    def prior():  # a resumed run's earlier evaluations, read at the first target event only
        loads.append(1)
        return {"loss": [(50, 0.9)], "accuracy": [(50, 0.6)]}

    sink = Projection(None, None, 1000, lambda type_, **f: out.append({"type": type_, **f}), prior=prior)
    for step, acc in ((100, 0.7), (200, 0.8)):
        sink.emit({"type": "eval", "t": float(step), "step": step, "metrics": {"accuracy": acc, "loss": 1 - acc}})
    assert out == []  # no target: nothing projected, every metric kept
    sink.emit({"type": "target", "t": 300.0, "step": 210, "metric": "val_loss", "value": 0.05, "stop": False})
    assert loads == [1] and [p["points"] for p in out] == [3] and out[-1]["metric"] == "val_loss"
    assert out[-1]["step"] == 200 and out[-1]["value"] == pytest.approx(0.2)
    sink.emit({"type": "target", "t": 301.0, "step": 211, "metric": "val_accuracy", "value": 0.75, "stop": True})
    assert loads == [1] and out[-1]["reached"] is True and out[-1]["projected_step"] == 200
    sink.emit({"type": "target", "t": 302.0, "step": 212, "metric": None, "value": None, "stop": False})
    sink.emit({"type": "eval", "t": 400.0, "step": 300, "metrics": {"accuracy": 0.85, "loss": 0.15}})
    assert len(out) == 2, "cleared: no projection"
