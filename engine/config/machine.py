"""What this machine can run: checked where a config is loaded to train (`run`, `demo`, `resume`).

Not part of the schema, because a config is also read where its size says nothing about the
machine: `cloud launch` on a laptop for a 96-CPU instance, `cost` or the cockpit reading a run
made elsewhere. The training machine checks it before any process or run directory exists;
a config validated elsewhere is checked again there (the instance runs `run` or `resume` too).
"""

from __future__ import annotations

import os

from engine.config.schema import Config
from contracts.errors import BadInput

#: DataLoader workers accepted per CPU. One worker per CPU keeps every CPU busy decoding and
#: augmenting; more help only while workers wait on slow storage (a network file system, an
#: object store), and a few per CPU hide that wait. Past 4 per CPU no loading gains, while each
#: worker is a whole Python process with its own memory and prefetched batches: thousands of
#: them exhaust memory and process slots (num_workers = 100000 drove a load average of 638).
WORKERS_PER_CPU = 4


def cpu_count() -> int:
    """This machine's CPUs, as os.cpu_count() reports them (1 where it cannot tell)."""
    return os.cpu_count() or 1


def check(cfg: Config, source: str = "config", overridden: tuple[str, ...] = ()) -> list[str]:
    """Refuse (BadInput naming the field, the value and the CPU count) what this machine cannot
    run; the warnings for what it runs, but poorly (the caller shows them)."""
    cpus, workers, procs = cpu_count(), cfg.data.num_workers, cfg.distributed.nproc
    total = workers * procs  # each of this machine's processes starts its own workers
    shown = f"data.num_workers = {workers}"
    if procs > 1:
        shown += f" with distributed.nproc = {procs} ({total} workers in all)"
    limit = WORKERS_PER_CPU * cpus
    if total > limit:
        where = "--set" if any(o in ("data", "data.num_workers") for o in overridden) else source
        raise BadInput(f"invalid config:\n  {where}: {shown}: more DataLoader workers than this machine can "
                       f"run: it has {cpus} CPUs, and at most {limit} workers ({WORKERS_PER_CPU} per CPU) "
                       f"are accepted; one per CPU keeps them all busy")
    if total > cpus:
        return [f"{shown}: more DataLoader workers than this machine's {cpus} CPUs; they will share them "
                f"(fine while loading waits on slow storage, else use at most {cpus} in all)"]
    return []
