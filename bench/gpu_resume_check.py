"""Stop and resume on the GPU, bit-exact: `--gpus 1`, a `checkpoint` command over the control
socket, a pause and a stop, then `resume`; the resumed run's final checkpoint must equal an
uninterrupted reference run's, tensor for tensor (torch.equal, loaded with weights_only=True).
Then NCCL itself: one all-reduce and one DDP step under torchrun.

    python bench/gpu_resume_check.py                        # on a GPU machine (--gpus 1, NCCL)
    python bench/gpu_resume_check.py --device cpu --epochs 2 --samples 512   # smoke test (Gloo)

With one GPU, `--gpus 1` is one process: the engine starts torchrun only for two or more
(engine/cli.py `_needs_launcher`), and two ranks cannot share one GPU under NCCL. So the engine
path checked here is the single-GPU one, and NCCL is checked apart from the engine by
`--collective BACKEND` (this file as a torchrun worker). Prints one `RESULT ...` line per check;
exits 1 if any failed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gpu_helpers import (REPO, engine_env, events_of, kill_tree, of_type, run_engine, start_engine,  # noqa: E402
                         status_of, the_run, wait_for)

CONFIG = """
[model]
name = "small_cnn"
factory_args = {{ width = 16 }}
[data]
name = "synthetic"
synthetic_samples = {samples}
synthetic_shape = [3, 32, 32]
num_workers = 2
[data.augment]
random_crop_padding = 2
horizontal_flip = true
[optim]
name = "adamw"
lr = 0.002
[schedule]
name = "cosine"
warmup_steps = 10
[train]
epochs = {epochs}
batch_size = 32
precision = "{precision}"
[logging]
every_steps = 1
max_step_events_per_s = 100000
status_every_s = 0.1
tensorboard = false
"""

TRAINING = ("running", "checkpointing")


def final_checkpoint(run: Path) -> tuple[Path, dict]:
    import torch

    latest = sorted((run / "checkpoints").glob("step-*.pt"))[-1]
    return latest, torch.load(latest, map_location="cpu", weights_only=True)


def compare(ours: dict, ref: dict) -> list[str]:
    """Every tensor of the model and the optimizer state, exactly."""
    import torch

    diffs = []
    if ours["step"] != ref["step"]:
        diffs.append(f"step {ours['step']} != {ref['step']}")
    for key, tensor in ref["model"].items():
        if not torch.equal(ours["model"][key], tensor):
            diffs.append(f"model.{key}: max diff {(ours['model'][key].float() - tensor.float()).abs().max().item():.3g}")
    for pid, state in ref["optimizer"]["state"].items():
        for name, tensor in state.items():
            other = ours["optimizer"]["state"][pid][name]
            if isinstance(tensor, torch.Tensor) and not torch.equal(other, tensor):
                diffs.append(f"optimizer.state[{pid}].{name} differs")
    return diffs


def step_losses(run: Path) -> dict[int, float]:
    from contracts.events import replay

    return {e["step"]: e["loss"] for e in replay(events_of(run)) if e["type"] == "step"}


def resume_check(a: argparse.Namespace, work: Path) -> bool:
    from contracts.control import send_command
    from contracts.events import EXIT_FINISHED, EXIT_STOPPED

    cfg = work / "resume.toml"
    cfg.write_text(CONFIG.format(samples=a.samples, epochs=a.epochs, precision=a.precision))
    launch = ["--gpus", "1"] if a.device == "cuda" else ["--set", "train.device='cpu'"]
    t0 = time.perf_counter()
    ref = run_engine("run", str(cfg), *launch, "--runs-dir", str(work / "ref"), timeout=a.timeout)
    if ref.returncode != EXIT_FINISHED:
        print(ref.stdout[-2000:], ref.stderr[-4000:])
        print(f"RESULT resume: FAIL reference run exited {ref.returncode}")
        return False
    ref_run = the_run(work / "ref")
    ref_s = time.perf_counter() - t0
    total = of_type(events_of(ref_run), "step")[-1]["step"]
    print(f"reference run: {total} steps in {ref_s:.1f} s (process wall)", flush=True)

    runs = work / "stopped"
    t0 = time.perf_counter()
    engine = start_engine("run", str(cfg), *launch, "--runs-dir", str(runs), log=work / "stopped.log")
    try:
        run = wait_for(lambda: the_run(runs), a.timeout, "the run directory", engine)
        wait_for(lambda: status_of(run).get("state") in TRAINING and status_of(run).get("step", 0) >= 3,
                 a.timeout, "training to start", engine)
        sock = status_of(run)["socket"]
        reply = send_command(sock, "checkpoint", timeout=a.timeout)
        paused = send_command(sock, "pause", timeout=a.timeout)  # at once: the rest waits for nothing
        assert reply.get("ok"), f"checkpoint command: {reply}"
        assert paused.get("ok"), f"pause command: {paused}"
        import torch

        saved = torch.load(reply["path"], map_location="cpu", weights_only=True)
        print(f"checkpoint command at step {reply['step']}: {Path(reply['path']).name} (step {saved['step']}, "
              f"rng keys {sorted(saved['rng'])}); paused at step {paused['step']}", flush=True)
        stopped = send_command(sock, "stop", timeout=a.timeout)
        assert stopped.get("ok"), f"stop command: {stopped}"
        code = engine.wait(a.timeout)
    finally:
        kill_tree(engine)
    print(f"stopped run: exit {code} at step {paused['step']} of {total} ({time.perf_counter() - t0:.1f} s)",
          flush=True)
    ok = code == EXIT_STOPPED and 0 < paused["step"] < total
    if not ok:
        print((work / "stopped.log").read_text()[-3000:])
        print(f"RESULT resume: FAIL stop exited {code} at step {paused.get('step')} (want {EXIT_STOPPED}, "
              f"mid-run)")
        return False
    t0 = time.perf_counter()
    done = run_engine("resume", str(run), timeout=a.timeout)
    if done.returncode != EXIT_FINISHED:
        print(done.stdout[-2000:], done.stderr[-4000:])
        print(f"RESULT resume: FAIL resume exited {done.returncode}")
        return False
    print(f"resumed run: finished in {time.perf_counter() - t0:.1f} s", flush=True)
    (ours_path, ours), (ref_path, theirs) = final_checkpoint(run), final_checkpoint(ref_run)
    diffs = compare(ours, theirs)
    losses_equal = step_losses(run) == step_losses(ref_run)
    device = ours.get("config", {}).get("train", {}).get("device")
    tensors = len(theirs["model"]) + sum(len(s) for s in theirs["optimizer"]["state"].values())
    if diffs or not losses_equal:
        print("\n".join(diffs[:20]))
        print(f"RESULT resume: FAIL not bit-exact ({len(diffs)} tensors differ, step losses equal: {losses_equal})")
        return False
    print(f"RESULT resume: PASS bit-exact: stopped at step {paused['step']}/{total} after a checkpoint command "
          f"at step {reply['step']}; resumed; {ours_path.name} == {ref_path.name}: {tensors} tensors torch.equal "
          f"(weights_only=True), every step loss equal (device {device}, {a.precision})")
    return True


def collective_check(a: argparse.Namespace) -> bool:
    """This file as 1 torchrun rank: an all-reduce and a DDP step over the backend."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc-per-node=1",
           str(Path(__file__).resolve()), "--collective", a.backend]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=engine_env(), capture_output=True, text=True, timeout=a.timeout, cwd=REPO)
    out = done.stdout.strip().splitlines()
    last = out[-1] if out else ""
    if done.returncode != 0 or not last.startswith("{"):
        print(done.stdout[-2000:], done.stderr[-3000:])
        print(f"RESULT {a.backend}: FAIL torchrun exited {done.returncode}")
        return False
    info = json.loads(last)
    print(f"RESULT {a.backend}: PASS torchrun, world {info['world']}, all_reduce {info['all_reduce']}, "
          f"DDP step loss {info['loss']:.4f} on {info['device']}, NCCL {info.get('nccl')} "
          f"({time.perf_counter() - t0:.1f} s)")
    return True


def collective_worker(backend: str) -> None:
    import torch
    import torch.distributed as dist

    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if backend == "nccl" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, **({"device_id": device} if device.type == "cuda" else {}))
    t = torch.ones(4, device=device) * (dist.get_rank() + 1)
    dist.all_reduce(t)
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(16, 4).to(device),
                                                      device_ids=[device.index] if device.type == "cuda" else None)
    loss = model(torch.randn(8, 16, device=device)).square().mean()
    loss.backward()
    nccl = ".".join(map(str, torch.cuda.nccl.version())) if device.type == "cuda" else None
    print(json.dumps({"world": dist.get_world_size(), "all_reduce": t.tolist(), "loss": loss.item(),
                      "device": str(device), "nccl": nccl}), flush=True)
    dist.destroy_process_group()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--samples", type=int, default=8192, help="synthetic samples (80%% train, batch 32)")
    p.add_argument("--backend", default=None, help="collective check backend (default: nccl on cuda, gloo on cpu)")
    p.add_argument("--timeout", type=float, default=120)
    p.add_argument("--collective", help=argparse.SUPPRESS)  # internal: run as a torchrun worker
    a = p.parse_args()
    if a.collective:
        collective_worker(a.collective)
        return 0
    a.backend = a.backend or ("nccl" if a.device == "cuda" else "gloo")
    with tempfile.TemporaryDirectory(prefix="gpu-resume-") as tmp:
        ok = resume_check(a, Path(tmp))
    ok = collective_check(a) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
