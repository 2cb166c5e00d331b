"""Two engine-vs-engine throughput comparisons for bench/gpu_check.sh, each a pair of fresh runs:

* ``datapath``: the device-resident data path (`data.device_resident = true`: the whole set on
  the GPU in the training dtype, batches by index, crops and flips on the device) vs the
  DataLoader path (`num_workers` worker processes, pinned host batches copied each step), on
  ResNet-18 at 32x32, with augmentation (crop padding 4, flips) on both sides.
* ``float8``: float8 training of the Linear layers (`quantize.float8 = true`, torchao) vs plain
  bf16, on the `mlp` model with wide hidden layers, both compiled (float8 pays only compiled).
  Also lists which Linear layers the engine's filter (both dimensions divisible by 16) selects.

Throughput is the median samples/s of the step events after the first quarter (warm-up and
compilation). Prints a markdown table and `RESULT ...` lines.

    python bench/gpu_throughput_check.py datapath             # on a GPU machine
    python bench/gpu_throughput_check.py float8
    python bench/gpu_throughput_check.py datapath --device cpu --model small_cnn --batch 64 --steps 20   # smoke
    python bench/gpu_throughput_check.py float8 --device cpu --hidden 64 64 --batch 32 --steps 10       # smoke:
        bf16 only; float8 on the CPU must be refused with exit 2 and its message
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gpu_helpers import events_of, of_type, run_engine, steady_rate, the_run  # noqa: E402

DATAPATH = """
[model]
name = "{model}"
[data]
name = "synthetic"
synthetic_samples = {samples}
synthetic_shape = [3, 32, 32]
synthetic_classes = 10
device_resident = {resident}
num_workers = {workers}
pin_memory = {pin}
persistent_workers = {persistent}
[data.augment]
random_crop_padding = 4
horizontal_flip = true
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
max_step_events_per_s = 1000
tensorboard = false
"""

FLOAT8 = """
[model]
name = "mlp"
factory_args = {{ hidden = {hidden} }}
[data]
name = "synthetic"
synthetic_samples = {samples}
synthetic_shape = {shape}
synthetic_classes = 10
device_resident = true
[optim]
name = "sgd"
lr = 0.01
[train]
epochs = 1000
max_steps = {steps}
batch_size = {batch}
device = "{device}"
precision = "bf16"
compile = {compile}
deterministic = false
[checkpoint]
on_epoch_end = false
best_metric = "val_loss"
[logging]
every_steps = 10
max_step_events_per_s = 1000
tensorboard = false
"""


def one_run(work: Path, name: str, text: str, timeout: float, *sets: str) -> dict:
    cfg = work / f"{name}.toml"
    cfg.write_text(text)
    runs = work / name
    t0 = time.perf_counter()
    done = run_engine("run", str(cfg), "--runs-dir", str(runs), *[f"--set={s}" for s in sets], timeout=timeout)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        return {"error": last, "code": done.returncode, "stderr": done.stderr, "wall_s": wall}
    run = the_run(runs)
    events = events_of(run)
    steps = of_type(events, "step")
    log = (run / "engine.log").read_text() if (run / "engine.log").exists() else ""
    return {"rate": steady_rate(events), "wall_s": wall, "steps": len(steps),
            "peak_gib": max((e.get("mem_peak_bytes") or 0) for e in steps) / 2**30 if steps else 0.0,
            "data_ms": 1000 * sorted(e["time_data_s"] + e["time_h2d_s"] for e in steps)[len(steps) // 2] if steps else 0,
            "tflops": sorted(e.get("tflops") or 0 for e in steps)[len(steps) // 2] if steps else 0,
            "warnings": [e["message"] for e in of_type(events, "log") if e.get("level") == "warning"],
            "float8_log": [line for line in log.splitlines() if "float8" in line.lower().replace(str(work).lower(), "")],
            "compile": [e for e in events if e.get("type") == "compile"]}


def datapath(a: argparse.Namespace, work: Path) -> bool:
    # one epoch holds every step (80% of the samples train): no validation inside the timing
    common = dict(model=a.model, samples=a.batch * (a.steps + 10) * 5 // 4, steps=a.steps, batch=a.batch, device=a.device,
                  precision=a.precision, channels_last=str(a.device == "cuda").lower())
    resident = one_run(work, "resident", DATAPATH.format(resident="true", workers=0, pin="false",
                                                         persistent="false", **common), a.timeout)
    loader = one_run(work, "loader", DATAPATH.format(resident="false", workers=a.workers,
                                                     pin=str(a.device == "cuda").lower(),
                                                     persistent=str(a.workers > 0).lower(), **common), a.timeout)
    print(f"| {a.model} 32x32 batch {a.batch} {a.precision} on {a.device} | images/s | data+h2d ms/step (median) | "
          f"process wall s |")
    print("|---|---:|---:|---:|")
    for label, r in ((f"data.device_resident = true", resident),
                     (f"DataLoader, {a.workers} workers, pin_memory", loader)):
        if "error" in r:
            print(f"| {label} | failed: {r['error'][:100]} | | |")
        else:
            print(f"| {label} | {r['rate']:.0f} | {r['data_ms']:.2f} | {r['wall_s']:.0f} |")
    ok = "error" not in resident and "error" not in loader
    ratio = resident["rate"] / loader["rate"] if ok else float("nan")
    print(f"RESULT datapath: {'PASS' if ok else 'FAIL'} device-resident / DataLoader images/s: {ratio:.2f}x")
    return ok


def float8(a: argparse.Namespace, work: Path) -> bool:
    import torch

    from engine.config import loading as config_mod
    from engine.data.sources import build_spec
    from engine.model.zoo import build_model
    from engine.quantize.training import float8_layers

    features = a.features
    shape = [1, features // 64, 64] if features % 64 == 0 else [1, 1, features]
    text = FLOAT8.format(hidden=list(a.hidden), samples=a.batch * (a.steps + 10) * 5 // 4, shape=shape, steps=a.steps, batch=a.batch,
                         device=a.device, compile=str(a.compile).lower())
    cfg = config_mod.validate(_toml(text))
    torch.manual_seed(0)
    spec = build_spec(cfg.model_copy(update={"data": cfg.data.model_copy(update={"synthetic_samples": 64})}))
    chosen, left = float8_layers(build_model(cfg, spec))
    print(f"float8 filter (both dimensions divisible by 16) selects {len(chosen)} Linear layer(s): {chosen}; "
          f"leaves in bf16: {left}")
    bf16 = one_run(work, "bf16", text, a.timeout)
    f8 = one_run(work, "f8", text, a.timeout, "quantize.float8=true")
    print(f"| mlp {shape} -> {a.hidden} -> 10, batch {a.batch}, {'compiled' if a.compile else 'eager'} | samples/s "
          f"| vs bf16 | TFLOP/s (counted) | peak GiB | process wall s |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, r in (("bf16", bf16), ("bf16 + quantize.float8", f8)):
        if "error" in r:
            print(f"| {label} | failed: {r['error'][:120]} | | | | |")
            continue
        vs = f"{r['rate'] / bf16['rate']:.2f}x" if "error" not in bf16 else ""
        print(f"| {label} | {r['rate']:.0f} | {vs} | {r['tflops']:.0f} | {r['peak_gib']:.2f} | {r['wall_s']:.0f} |")
    for label, r in (("bf16", bf16), ("float8", f8)):
        for w in r.get("warnings", []):
            print(f"<!-- {label} warning: {w} -->")
        for line in r.get("float8_log", []):
            print(f"<!-- {label} engine.log: {line.strip()} -->")
    if a.device == "cpu":  # smoke test: float8 must be refused on the CPU, with exit 2
        refused = f8.get("code") == 2 and "float8 matmuls need a CUDA GPU" in f8.get("stderr", "")
        ok = "error" not in bf16 and refused
        print(f"RESULT float8: {'PASS' if ok else 'FAIL'} (CPU) bf16 ran; float8 refused with exit 2: {refused}")
        return ok
    ok = "error" not in bf16 and "error" not in f8
    ratio = f8["rate"] / bf16["rate"] if ok else float("nan")
    print(f"RESULT float8: {'PASS' if ok else 'FAIL'} float8/bf16 samples/s: {ratio:.2f}x; filter selected "
          f"{len(chosen)} of {len(chosen) + len(left)} Linear layers")
    return ok


def _toml(text: str) -> dict:
    import tomllib

    return tomllib.loads(text)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=["datapath", "float8"])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--model", default="resnet18", help="datapath: the model")
    p.add_argument("--precision", default="bf16", help="datapath: the precision")
    p.add_argument("--workers", type=int, default=4, help="datapath: DataLoader workers")
    p.add_argument("--batch", type=int, default=None, help="default: 256 (datapath), 2048 (float8)")
    p.add_argument("--steps", type=int, default=None, help="default: 300 (datapath), 200 (float8)")
    p.add_argument("--hidden", type=int, nargs="+", default=[8192, 8192, 8192], help="float8: hidden widths")
    p.add_argument("--features", type=int, default=1024, help="float8: input features")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="float8: eager, not compiled")
    p.add_argument("--timeout", type=float, default=240, help="per engine run")
    a = p.parse_args()
    a.batch = a.batch or (256 if a.what == "datapath" else 2048)
    a.steps = a.steps or (300 if a.what == "datapath" else 200)
    with tempfile.TemporaryDirectory(prefix="gpu-thr-") as tmp:
        ok = (datapath if a.what == "datapath" else float8)(a, Path(tmp))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
