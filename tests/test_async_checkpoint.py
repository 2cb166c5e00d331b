"""Asynchronous checkpoints: same bytes as synchronous ones, replies after the write, nothing lost."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import torch

from conftest import TINY, events_of, only_run, run_engines
from engine.checkpoint.writer import AsyncSaver, Job, host_copy
from engine.checkpoint.store import CheckpointStore, load


def test_async_and_sync_saving_train_and_checkpoint_identically(tmp_path: Path):
    (tmp_path / "tiny.toml").write_text(TINY)
    jobs = {mode: {"args": ["run", str(tmp_path / "tiny.toml"), "--runs-dir", str(tmp_path / mode),
                            "--set", "train.max_steps=40", "--set", f"checkpoint.async_save={mode == 'async'}"]}
            for mode in ("async", "sync")}
    done = run_engines(jobs)
    runs = {}
    for mode, proc in done.items():
        assert proc.returncode == 0, proc.stderr
        runs[mode] = only_run(tmp_path / mode)
    names = {m: sorted(p.name for p in (r / "checkpoints").glob("step-*.pt")) for m, r in runs.items()}
    assert names["async"] == names["sync"] and names["async"]
    for name in names["async"]:
        a, s = load(runs["async"] / "checkpoints" / name), load(runs["sync"] / "checkpoints" / name)
        assert a["step"] == s["step"]
        for key in s["model"]:
            assert torch.equal(a["model"][key], s["model"][key]), f"{name}: {key} differs"
    async_events = [e for e in events_of(runs["async"]) if e["type"] == "checkpoint"]
    assert async_events and all("stall_s" in e for e in async_events)


def test_a_request_during_a_write_is_queued_not_lost(tmp_path: Path):
    store = CheckpointStore(tmp_path / "checkpoints", keep_last=10)
    reported: list[int] = []
    gate = threading.Event()
    original = store.save

    def slow_save(state, step, best=False):
        gate.wait(10)  # hold the first write until the second request is queued
        return original(state, step, best)

    store.save = slow_save
    saver = AsyncSaver(store, lambda saved, job: reported.append(saved.step), lambda exc, job: None)
    live = {"w": torch.zeros(1000)}
    for step in (1, 2, 3):
        live["w"] += 1  # training goes on between snapshots
        saver.submit(Job(host_copy({"format": 1, "step": step, "model": live, "optimizer": {},
                                    "trainer": {}, "rng": {}, "config": {}}), step, False, "test", 0.0))
    time.sleep(0.2)
    gate.set()
    saver.close()
    assert reported == [1, 2, 3]
    for step in (1, 2, 3):
        state = load(store.folder / f"step-{step:08d}.pt")
        assert torch.equal(state["model"]["w"], torch.full((1000,), float(step))), "snapshot, not live"


def test_host_copies_keep_the_state_dict_versions_that_load_state_dict_reads(tmp_path: Path):
    """Without `_metadata` every module's state loads as version 1: torchao's observers then
    reset their eps, and a resumed QAT run drifted from the uninterrupted one."""
    from engine.checkpoint.writer import HostStaging

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    state = model.state_dict()
    for copy in (host_copy({"model": state})["model"], HostStaging().copy({"model": state})[0]["model"]):
        torch.save({"model": copy}, tmp_path / "c.pt")
        loaded = torch.load(tmp_path / "c.pt", weights_only=True)["model"]
        assert loaded._metadata == state._metadata and loaded._metadata["1"]["version"] == 2
