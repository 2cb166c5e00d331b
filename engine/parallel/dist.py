"""Several processes, one run: the process group and what the ranks must agree on.

The engine runs data-parallel under torchrun (one process per GPU, or several on the CPU
with Gloo). Rank 0 alone writes events, status, TensorBoard and checkpoints; every rank
trains. Anything that changes what happens next (a command from the socket, SIGTERM, a
checkpoint due by the clock) is agreed at a step boundary with one small all-reduce on a
CPU (Gloo) group, so every rank checkpoints, pauses and stops at the same step, and
no host-device synchronization is added on a GPU.

The process group has a timeout (`distributed.timeout_s`): a dead rank makes the others
fail with an error instead of waiting forever.

Whatever travels between ranks as an object (a checkpoint's state for resume, every rank's
RNG state for a checkpoint) is serialized with torch.save and read back with
``weights_only=True``: no rank unpickles arbitrary objects from another.
"""

from __future__ import annotations

import datetime
import io
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from engine.config.schema import Config
from contracts.errors import BadInput


def under_torchrun() -> bool:
    """True in a process that torchrun (or another launcher) started as one rank of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


@dataclass
class Dist:
    """This process's place in the run (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    strategy: str = "ddp"
    backend: str | None = None
    control: Any = None  # a Gloo group for agreement (the default group when it is Gloo)
    tp: int = 1  # tensor-parallel ranks per group (the mesh's inner dimension)
    mesh: Any = None  # the ("dp", "tp") or ("dp", "pp") DeviceMesh when tp or pp > 1
    pp: int = 1  # pipeline stages per group

    @property
    def model_parallel(self) -> int:
        """Ranks that hold parts of one model and read the same batches (a tensor- or pipeline-parallel group)."""
        return self.tp * self.pp

    @property
    def dp_rank(self) -> int:
        """This rank's data-parallel group."""
        return self.rank // self.model_parallel

    @property
    def dp_world(self) -> int:
        return self.world // self.model_parallel

    @property
    def pp_rank(self) -> int:
        """This rank's pipeline stage."""
        return self.rank % self.pp

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def sharded(self) -> bool:
        """FSDP or tensor parallel across ranks: a sharded model, checkpoints with one file per rank."""
        return self.active and (self.strategy == "fsdp" or self.model_parallel > 1)

    @property
    def replicated(self) -> bool:
        """DDP across ranks: every rank holds the whole model."""
        return self.active and self.strategy == "ddp" and self.model_parallel == 1

    # ---- agreement and reduction (host values, CPU group: no device sync) -----------

    def agree_max(self, values: list[float]) -> list[float]:
        """Element-wise maximum over the ranks."""
        if not self.active:
            return values
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.control)
        return t.tolist()

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over the ranks."""
        if not self.active:
            return values
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t, group=self.control)
        return t.tolist()

    def barrier(self) -> None:
        if self.active:
            dist.barrier(group=self.control)

    # ---- objects, as torch.save bytes read back weights-only ------------------------

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank (others pass anything, e.g. None)."""
        if not self.active:
            return obj
        data = _dump(obj) if self.main else b""
        size = torch.tensor([len(data)], dtype=torch.int64)
        dist.broadcast(size, 0, group=self.control)
        buf = torch.frombuffer(bytearray(data), dtype=torch.uint8) if self.main else torch.empty(
            int(size), dtype=torch.uint8)
        dist.broadcast(buf, 0, group=self.control)
        return obj if self.main else _load(buf.numpy().tobytes())

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's `obj`, in rank order, on rank 0 (None elsewhere)."""
        if not self.active:
            return [obj]
        data = _dump(obj)
        sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(self.world)]
        dist.all_gather(sizes, torch.tensor([len(data)], dtype=torch.int64), group=self.control)
        longest = int(max(s.item() for s in sizes))
        mine = torch.zeros(longest, dtype=torch.uint8)
        mine[:len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else mine[:0]
        bufs = [torch.empty(longest, dtype=torch.uint8) for _ in range(self.world)] if self.main else None
        dist.gather(mine, bufs, dst=0, group=self.control)
        if not self.main:
            return None
        return [_load(b[:int(s.item())].numpy().tobytes()) for b, s in zip(bufs, sizes)]

    def close(self) -> None:
        if self.active and dist.is_initialized():
            dist.destroy_process_group()


def _dump(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _load(data: bytes) -> Any:
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def setup(cfg: Config) -> Dist:
    """Join the process group when started by torchrun; a single process otherwise."""
    d = cfg.distributed
    if not under_torchrun():  # (a model-parallel layout in one process: refused by the CLI, engine/cli.py)
        return Dist(strategy=d.strategy)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if world % d.tensor_parallel:
        raise BadInput(f"distributed.tensor_parallel = {d.tensor_parallel}: must divide the {world} processes")
    if world % d.pipeline_stages:
        raise BadInput(f"distributed.pipeline_stages = {d.pipeline_stages}: must divide the {world} processes")
    if d.pipeline_stages > 1:
        from engine.parallel.pipeline import check_torch

        check_torch(d.pipeline_schedule)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    wants_gpu = cfg.train.device != "cpu" and torch.cuda.is_available()
    backend = d.backend if d.backend != "auto" else ("nccl" if wants_gpu else "gloo")
    if backend == "nccl" and not torch.cuda.is_available():
        raise BadInput("distributed.backend = 'nccl': no CUDA device is visible; use 'gloo' or 'auto'")
    if d.sync_batchnorm and not wants_gpu:
        raise BadInput("distributed.sync_batchnorm = true: SyncBatchNorm needs GPUs (torch supports it "
                       "only on CUDA); set it to false on the CPU")
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    timeout = datetime.timedelta(seconds=d.timeout_s)
    kwargs: dict[str, Any] = {"backend": backend, "timeout": timeout}
    if backend == "nccl":
        kwargs["device_id"] = torch.device("cuda", local_rank)
    dist.init_process_group(**kwargs)
    control = dist.new_group(backend="gloo", timeout=timeout) if backend != "gloo" else None
    mesh = None
    inner = ("tp", d.tensor_parallel) if d.tensor_parallel > 1 else ("pp", d.pipeline_stages)
    if inner[1] > 1:
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh("cuda" if backend == "nccl" else "cpu", (world // inner[1], inner[1]),
                                mesh_dim_names=("dp", inner[0]))
    return Dist(rank, world, local_rank, d.strategy, backend, control, d.tensor_parallel, mesh, d.pipeline_stages)


def device_for(name: str, dist: "Dist | None" = None) -> torch.device:
    """'auto' is the first GPU when there is one, else the CPU; under torchrun, each rank
    takes the GPU of its local rank."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if dist is not None and dist.active and name.startswith("cuda"):
        return torch.device("cuda", dist.local_rank)
    return torch.device(name)


def collective_failure(exc: BaseException) -> bool:
    """A collective that failed because a peer died or hung (Gloo's errors are often plain
    RuntimeErrors, raised from inside DDP's reducer)."""
    text = str(exc)
    return isinstance(exc, torch.distributed.DistError) or any(
        w in text for w in ("gloo", "NCCL", "Timed out", "Connection reset", "Connection closed"))
