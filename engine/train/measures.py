"""What a sweep's objectives need of a finished run besides its evaluations: the model's
parameter count and its CPU latency (compiled, a batch of 1), measured once on rank 0."""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import torch

from engine.config.schema import Config
from engine.data.sources import DataSpec

#: Timed forward passes (after three warm-up ones); the median is the latency.
LATENCY_RUNS = 20
#: The latency's batch size.
LATENCY_BATCH = 1


def latency_ms(fns: dict[str, Callable[[torch.Tensor], torch.Tensor]], x: torch.Tensor,
               repeats: int) -> dict[str, float]:
    """Median milliseconds per batch of each function, timed interleaved (one run of each in
    turn, `repeats` rounds, after three warm-up rounds), so that a machine whose speed drifts
    (a shared VM, frequency scaling) slows both sides of a comparison alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    with torch.no_grad():
        for _ in range(3):
            for fn in fns.values():
                fn(x)
        for _ in range(repeats):
            for name, fn in fns.items():
                start = time.perf_counter()
                fn(x)
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def wanted(cfg: Config) -> tuple[bool, bool]:
    """(params, latency): what this run's sweep objectives ask to be measured at its end."""
    if not cfg.sweep.enabled:
        return False, False
    metrics = {m for m, _ in cfg.sweep.resolved_objectives}
    return True, "latency_ms" in metrics


def measure(cfg: Config, spec: DataSpec, latency: bool) -> dict[str, Any]:
    """The fields of a `measures` event. A fresh CPU copy of the configured model is timed (its
    weights do not change its speed): the trained one may be sharded, wrapped or on a GPU."""
    from engine.model.zoo import build_model

    model = build_model(cfg, spec).eval()
    out: dict[str, Any] = {"parameters": int(sum(p.numel() for p in model.parameters()))}
    if not latency:
        return out
    x = torch.as_tensor(spec.val[0][0]).unsqueeze(0).expand(LATENCY_BATCH, *torch.as_tensor(spec.val[0][0]).shape)
    fn: Callable[[torch.Tensor], torch.Tensor] = model
    compiled = True
    try:
        fn = torch.compile(model)
        with torch.no_grad():
            fn(x)  # compiles here: a failure (no C++ compiler, an untraceable model) falls back to eager
    except Exception as exc:  # noqa: BLE001 - the latency is then the eager model's, and says so
        fn, compiled = model, False
        out["latency_note"] = f"torch.compile failed, eager latency: {type(exc).__name__}: {exc}"[:300]
    out.update(latency_ms=latency_ms({"model": fn}, x.contiguous(), LATENCY_RUNS)["model"],
               latency_batch=LATENCY_BATCH, latency_compiled=compiled)
    return out
