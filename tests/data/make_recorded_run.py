"""Write tests/data/recorded_run/: a small, deterministic run directory the cockpit can attach to.

    python tests/data/make_recorded_run.py          # (re)writes tests/data/recorded_run/

Tests copy it into tmp_path as runs/RUN_NAME (the name the engine gave it). It looks like what `cockpit-engine` leaves behind for a 3-epoch run that crashed once and was
resumed: fixed timestamps, a pid that cannot exist (999999999) and a final "finished" state, so
the cockpit shows a finished run (not "engine exited unexpectedly"). The checkpoint paths in
the events are absolute paths on the machine that recorded the run, as the engine writes them;
the cockpit finds the files in the run directory's own checkpoints/ folder.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from contracts.events import encode_event, make_event  # noqa: E402

RUN_NAME = "20260101-120000-small_cnn-rec1"
ORIGINAL_DIR = f"/home/alice/runs/{RUN_NAME}"  # where the engine ran: absolute paths point there
PID = 999999999  # above any pid_max: never a live process
HOST = "recorded-host"
T0 = 1767268800.0  # 2026-01-01 12:00:00 UTC
STEP_S = 0.25
EPOCHS, BATCHES, BATCH_SIZE = 3, 20, 256
TOTAL = EPOCHS * BATCHES
PRICE = 2.5
CRASH_AFTER, RESUME_FROM = 35, 30  # the engine died after step 35; resumed from step 30
ON_DISK = (40, 50, 60)  # keep_last = 2, plus the best (step 40)
ACCURACY = {20: 0.612, 40: 0.781, 60: 0.744}
#: What tests compare against: the clock the snapshots use (two minutes after the run ended).
FIXED_NOW = T0 + 200.0

CONFIG = """\
[model]
name = "small_cnn"

[model.factory_args]
width = 8

[data]
name = "digits"
num_workers = 2

[optim]
name = "sgd"
lr = 0.05

[schedule]
name = "cosine"
warmup_steps = 5

[train]
epochs = 3
batch_size = 256

[checkpoint]
every_steps = 10
keep_last = 2

[cost]
price_per_hour = 2.5
currency = "USD"
"""


def loss_at(step: int) -> float:
    return round(2.0 * math.exp(-step / 25) + 0.35 + 0.06 * math.sin(step * 1.7), 6)


def train_accuracy_at(step: int) -> float:
    """Step events' training accuracy (engines before it sent none: the cockpit copes with both)."""
    return round(0.9 - 0.8 * math.exp(-step / 18) + 0.03 * math.sin(step * 1.3), 4)


def lr_at(step: int) -> float:
    if step <= 5:
        return round(0.05 * step / 5, 8)
    return round(0.05 * 0.5 * (1 + math.cos(math.pi * (step - 5) / (TOTAL - 5))), 8)


def stamp(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))


def events() -> list[dict]:
    out: list[dict] = []
    t = T0

    def emit(kind: str, **fields) -> None:
        out.append(make_event(kind, t=t, **fields))

    def train(first: int, last: int) -> None:
        nonlocal t
        for step in range(first, last + 1):
            t += STEP_S
            epoch, batch = (step - 1) // BATCHES, (step - 1) % BATCHES + 1
            samples_per_s = round(BATCH_SIZE / STEP_S * (1 + 0.06 * math.sin(step / 4)), 3)
            steps_per_s = round(samples_per_s / BATCH_SIZE, 4)
            eta = round((TOTAL - step) / steps_per_s, 3)
            emit("step", step=step, epoch=epoch, batch=batch, batches_per_epoch=BATCHES,
                 loss=loss_at(step), accuracy=train_accuracy_at(step), lr=lr_at(step), samples_per_s=samples_per_s,
                 steps_per_s=steps_per_s, eta_s=eta, time_data_s=0.03, time_compute_s=0.18,
                 time_optim_s=0.04, time_comm_s=0.0)
            spent = PRICE * step * STEP_S / 3600
            emit("cost", price_per_hour=PRICE, source="config", accumulated=round(spent, 6),
                 projected=round(spent + PRICE * eta / 3600, 6), currency="USD")
            if step in ACCURACY:
                t += 1.0
                emit("eval", step=step, epoch=epoch,
                     metrics={"loss": round(loss_at(step) + 0.05, 6), "accuracy": ACCURACY[step]})
            if step % 10 == 0:
                best = step in ACCURACY and ACCURACY[step] == max(
                    v for k, v in ACCURACY.items() if k <= step)
                emit("state", state="checkpointing", step=step)
                t += 0.2
                emit("checkpoint", path=f"{ORIGINAL_DIR}/checkpoints/step-{step:08d}.pt", step=step,
                     seconds=0.21, bytes=1_234_567, reason="epoch_end" if step in ACCURACY else "periodic",
                     best=best)
                emit("state", state="running", step=step)

    emit("state", state="running", step=0)
    train(1, CRASH_AFTER)
    t += 30.0  # the host rebooted; `cockpit-engine resume` later
    emit("log", level="warning",
         message="checkpoint step-00000035.pt was not found; resuming from an older one")
    emit("resume", step=RESUME_FROM, epoch=RESUME_FROM // BATCHES,
         checkpoint=f"step-{RESUME_FROM:08d}.pt")
    emit("state", state="running", step=RESUME_FROM)
    train(RESUME_FROM + 1, TOTAL)
    t += 0.1
    emit("state", state="finished", step=TOTAL, exit_code=0)
    return out


def describe(e: dict) -> str | None:
    kind = e["type"]
    if kind == "step":
        return (f"epoch {e['epoch'] + 1} step {e['step']} loss {e['loss']:.4f} lr {e['lr']:.3g} "
                f"{e['samples_per_s']:,.0f} samples/s ETA {int(e['eta_s'])}s")
    if kind == "eval":
        return f"epoch {e['epoch'] + 1} validation: " + " ".join(
            f"{k} {v:.4f}" for k, v in e["metrics"].items())
    if kind == "state" and e["state"] != "checkpointing":
        return f"state {e['state']}"
    if kind == "checkpoint":
        return (f"checkpoint saved at step {e['step']}: {e['path']} "
                f"({e['bytes'] / 1e6:.1f} MB, {e['seconds']:.2f} s)")
    if kind == "resume":
        return f"resumed from {e['checkpoint']} at step {e['step']}"
    if kind == "log":
        return f"{e['level']}: {e['message']}"
    return None


def write(run: Path) -> Path:
    """Write the run directory at `run` (tests copy it to a folder named RUN_NAME)."""
    if run.exists():
        shutil.rmtree(run)
    (run / "checkpoints").mkdir(parents=True)
    evs = events()
    (run / "config.toml").write_text(CONFIG)
    (run / "events.jsonl").write_text("".join(encode_event(e) for e in evs))
    lines, last_state = [], None
    for e in evs:
        if e["type"] == "step" and e["step"] % 5 and e["step"] != TOTAL:
            continue  # the log narrates every fifth step, like logging.every_steps = 5
        if e["type"] == "resume":
            last_state = None  # a new engine process narrates its state afresh
        if e["type"] == "state":
            if e["state"] == last_state:
                continue
            if e["state"] != "checkpointing":
                last_state = e["state"]
        text = describe(e)
        if text:
            lines.append(f"{stamp(e['t'])} {text}")
    (run / "engine.log").write_text("\n".join(lines) + "\n")
    last_step = [e for e in evs if e["type"] == "step"][-1]
    status = {"pid": PID, "host": HOST, "updated_at": evs[-1]["t"], "state": "finished",
              "step": TOTAL, "epoch": EPOCHS, "total_steps": TOTAL, "loss": last_step["loss"],
              "lr": last_step["lr"], "run_id": RUN_NAME, "exit_code": 0,
              "socket": f"{ORIGINAL_DIR}/control.sock"}
    (run / "status.json").write_text(json.dumps(status, indent=1) + "\n")
    for step in ON_DISK:  # placeholders: the cockpit lists checkpoints, it never loads them
        (run / "checkpoints" / f"step-{step:08d}.pt").write_bytes(b"placeholder checkpoint\n")
    for pointer, step in (("latest", ON_DISK[-1]), ("best", 40)):
        (run / "checkpoints" / pointer).write_text(
            json.dumps({"file": f"step-{step:08d}.pt", "step": step}, indent=1))
    return run


if __name__ == "__main__":
    print(write(HERE / "recorded_run"))
