"""The cockpit's GPU pane against the real NVML, attached to a live GPU run, and the run's MFU.

Starts an engine run (ResNet-18, 32x32 synthetic images on the device, long enough to stay
alive), attaches a headless cockpit to it (Textual's App.run_test, the real GpuSampler on
pynvml), waits for the pane to show the GPU, and checks that utilization, memory and power are
shown and that the engine's own process line is highlighted (reverse). Then reads the run's
step events (`tflops`, `mfu`) and `doctor` events and compares the MFU with
engine.telemetry.flops.peak_tflops for this GPU (989 TFLOP/s dense bf16 for an H200 in the
table). Stops the run over its control socket.

    python bench/gpu_pane_check.py                  # on a GPU machine
    python bench/gpu_pane_check.py --device cpu     # smoke test: the pane's no-NVML fallback

Prints `RESULT ...` lines; exits 1 if a check failed.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gpu_helpers import events_of, kill_tree, of_type, start_engine, status_of, the_run, wait_for  # noqa: E402

CONFIG = """
[model]
name = "{model}"
[data]
name = "synthetic"
synthetic_samples = {samples}
synthetic_shape = [3, 32, 32]
synthetic_classes = 100
device_resident = true
[optim]
name = "sgd"
lr = 0.01
[train]
epochs = 1000
max_steps = {steps}
batch_size = {batch}
device = "{device}"
precision = "{precision}"
channels_last = {channels_last}
deterministic = false
[checkpoint]
on_epoch_end = false
best_metric = "val_loss"
[logging]
every_steps = 10
max_step_events_per_s = 20
status_every_s = 0.2
tensorboard = false
"""


async def watch_pane(runs_root: Path, run: Path, seconds: float, want_nvml: bool) -> dict:
    from cockpit.app import CockpitApp
    from cockpit.gpu import GpuSampler
    from cockpit.settings import Settings
    from cockpit.widgets.gpu_pane import GpuPane

    sampler = GpuSampler()
    app = CockpitApp(runs_root, run=run, user=Settings(), poll_gpu=True, gpu=sampler)
    found: dict = {"nvml": sampler.available, "reason": sampler.reason}
    async with app.run_test(size=(120, 40)) as pilot:
        pane = app.query_one(GpuPane)
        pid = status_of(run).get("pid")
        found["engine_pid"] = pid
        deadline = time.monotonic() + seconds
        want = f"pid {pid}" if want_nvml else "engine CPU"
        while time.monotonic() < deadline:
            await pilot.pause(0.25)
            if want in pane.text.plain:
                break
        # a few more samples, so that utilization reflects the training, not the start
        await pilot.pause(1.5)
        text = pane.text
        found["pane"] = text.plain
        found["highlighted"] = [line.plain.strip() for line in text.split()
                                if any(str(s.style) == "reverse" for s in line.spans)]
        found["engine_line_highlighted"] = any(f"pid {pid}" in h for h in found["highlighted"])
        if sampler.available:
            found["devices"] = [vars(d) for d in sampler.devices()]
    return found


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--model", default="resnet18")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--precision", default="bf16")
    p.add_argument("--steps", type=int, default=20000, help="max_steps (the run is stopped before)")
    p.add_argument("--watch-s", type=float, default=20, help="wait this long at most for the pane")
    p.add_argument("--timeout", type=float, default=90)
    a = p.parse_args()
    from contracts.control import send_command

    ok = True
    with tempfile.TemporaryDirectory(prefix="gpu-pane-") as tmp:
        work = Path(tmp)
        cfg = work / "pane.toml"
        cfg.write_text(CONFIG.format(model=a.model, samples=a.batch * 8, steps=a.steps, batch=a.batch,
                                     device=a.device, precision=a.precision,
                                     channels_last=str(a.device == "cuda").lower()))
        runs = work / "runs"
        engine = start_engine("run", str(cfg), "--runs-dir", str(runs), log=work / "engine.log")
        try:
            run = wait_for(lambda: the_run(runs), a.timeout, "the run directory", engine)
            wait_for(lambda: of_type(events_of(run), "step") if (run / "events.jsonl").exists() else None,
                     a.timeout, "the first step events", engine)
            found = asyncio.run(watch_pane(runs, run, a.watch_s, a.device == "cuda"))
            events = events_of(run)
            sock = status_of(run).get("socket")
            if sock and engine.poll() is None:
                print(f"stop: {send_command(sock, 'stop', timeout=a.timeout)}")
            code = engine.wait(a.timeout)
        finally:
            kill_tree(engine)
        print(f"engine exit {code}; engine pid {found['engine_pid']}; NVML available: {found['nvml']} "
              f"{found['reason']}")
        print("pane:\n  " + "\n  ".join(found["pane"].splitlines()))
        print(f"highlighted lines: {found['highlighted']}")
        if a.device == "cuda":
            for d in found.get("devices", []):
                print(f"NVML GPU{d['index']} {d['name']}: util {d['util']:.0f}%, memory {d['mem_used_gib']:.1f}/"
                      f"{d['mem_total_gib']:.0f} GiB, power {d['power_w']} W, temperature {d['temperature']} C, "
                      f"processes {d['processes']}")
            dev = (found.get("devices") or [{}])[0]
            shown = "GPU0" in found["pane"] and "GiB" in found["pane"] and "W" in found["pane"]
            ok = found["nvml"] and shown and found["engine_line_highlighted"]
            print(f"RESULT pane: {'PASS' if ok else 'FAIL'} NVML sampled: util {dev.get('util')}%, "
                  f"memory {dev.get('mem_used_gib', 0):.1f}/{dev.get('mem_total_gib', 0):.0f} GiB, "
                  f"power {dev.get('power_w')} W; shown in the pane: {shown}; engine pid {found['engine_pid']} "
                  f"highlighted: {found['engine_line_highlighted']}")
        else:
            ok = "no GPU (NVML unavailable)" in found["pane"] and "engine CPU" in found["pane"]
            print(f"RESULT pane: {'PASS' if ok else 'FAIL'} no NVML here: the pane shows the fallback "
                  f"(engine CPU/RSS): {ok}")
        steps = of_type(events, "step")
        steady = steps[len(steps) // 3:] or steps
        mfu = [e["mfu"] for e in steady if e.get("mfu") is not None]
        tflops = [e["tflops"] for e in steady if e.get("tflops") is not None]
        rate = statistics.median(e["samples_per_s"] for e in steady) if steady else None
        doctor = of_type(events, "doctor")
        from engine.telemetry.flops import peak_tflops

        name = "cpu"
        if a.device == "cuda":
            import torch

            name = torch.cuda.get_device_name(0)
        peak = peak_tflops(name)
        for d in doctor:
            print(f"doctor at step {d['step']}: {d['bound']} ({d['share']:.0%}): {d['message']}")
        med_t = statistics.median(tflops) if tflops else None
        med_m = statistics.median(mfu) if mfu else None
        consistent = med_m is None or peak is None or abs(med_m - med_t / peak) < 1e-6 * max(1.0, med_t)
        print(f"RESULT mfu: {'PASS' if (med_m is not None) == (peak is not None) and consistent else 'FAIL'} "
              f"{a.model} {a.precision} batch {a.batch} on {name}: {rate or 0:.0f} images/s, "
              f"{(med_t or 0):.1f} TFLOP/s achieved, MFU {f'{med_m:.1%}' if med_m is not None else 'n/a'} of "
              f"peak {peak} TFLOP/s (engine.telemetry.flops table); {len(steps)} step events, "
              f"doctor verdicts: {[d['bound'] for d in doctor] or 'none'}")
        ok = ok and ((med_m is not None) == (peak is not None)) and consistent
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
