"""How long a checkpoint stalls the training loop: asynchronous (host copy) vs synchronous save.

    python bench/checkpoint_stall.py [--model resnet50] [--rounds 7] [--device cuda]

Builds the model and an AdamW optimizer with state, then alternates, in one process:
  sync:  the loop writes the checkpoint itself (engine.checkpoint.store.CheckpointStore.save);
  async: the loop only copies the state into reused host buffers (engine.checkpoint.writer.HostStaging,
         as the trainer does) and hands it to the writer thread; the stall is that copy. The
         write is waited for before the next round, so each round measures one save.
Prints each round and the median stall ratio async/sync (goal: at most 0.1). On a GPU
(--device cuda) the model and optimizer state live on the GPU and the host buffers are pinned,
as in the trainer; the two buffer slots are allocated in the first two async rounds, so the
median is also given over the rounds that reuse them.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torchvision  # noqa: E402

from engine.checkpoint.writer import AsyncSaver, HostStaging, Job  # noqa: E402
from engine.checkpoint.store import FORMAT, CheckpointStore  # noqa: E402


def training_state(name: str, device: str = "cpu") -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = torchvision.models.get_model(name, weights=None, num_classes=1000).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 3, 64, 64, device=device)).sum().backward()
    opt.step()  # optimizer state (exp_avg, exp_avg_sq) now exists, as in a real run
    return model, opt


def snapshot(model, opt, step: int) -> dict:
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and next(model.parameters()).is_cuda:
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return {"format": FORMAT, "step": step, "model": model.state_dict(), "optimizer": opt.state_dict(),
            "trainer": {"step": step}, "rng": rng, "config": {}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--device", default="cpu", help="where the model and optimizer state live (cpu, cuda)")
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    model, opt = training_state(args.model, args.device)
    if cuda:
        torch.cuda.synchronize()
    size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    with tempfile.TemporaryDirectory() as tmp:
        store = CheckpointStore(Path(tmp) / "checkpoints", keep_last=2)
        saver = AsyncSaver(store, lambda saved, job: None, lambda exc, job: print("write failed:", exc))
        staging = HostStaging(pin=cuda)  # what the trainer uses: buffers reused between saves, pinned on a GPU
        ratios = []
        for r in range(args.rounds):
            t0 = time.perf_counter()
            store.save(snapshot(model, opt, 2 * r), 2 * r)
            sync = time.perf_counter() - t0
            t0 = time.perf_counter()
            state, release = staging.copy(snapshot(model, opt, 2 * r + 1))
            saver.submit(Job(state, 2 * r + 1, False, "bench", 0.0, release=release))
            stall = time.perf_counter() - t0
            saver.wait()
            ratios.append(stall / sync)
            print(f"round {r + 1}: sync save {sync * 1000:7.1f} ms, async stall {stall * 1000:6.1f} ms, "
                  f"ratio {stall / sync:.3f}")
        saver.close()
    reused = ratios[len(staging.buffers):]
    print(f"{args.model} on {args.device}: weights {size / 2**20:.0f} MiB (+ AdamW state); async/sync stall ratio: "
          f"median {statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f})"
          + (f"; rounds with the buffers reused: median {statistics.median(reused):.3f}" if reused else ""))


if __name__ == "__main__":
    main()
