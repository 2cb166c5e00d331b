"""One trial per GPU with free memory (NVML, imported only here), or K at a time on the CPU."""

from __future__ import annotations

#: A GPU with less free memory than this is busy with someone else's work.
MIN_FREE_BYTES = 1 << 30


def free_gpus() -> list[int]:
    """Indices of the GPUs with at least MIN_FREE_BYTES free, most free first ([] without NVML)."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return []
    try:
        free = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            mem = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(i))
            if mem.free >= MIN_FREE_BYTES:
                free.append((mem.free, i))
        return [i for _, i in sorted(free, reverse=True)]
    except Exception:
        return []
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


def slots(parallel: int, device: str) -> list[str | None]:
    """CUDA_VISIBLE_DEVICES for each of the parallel trial slots (None: leave it as it is).

    On a GPU box (device auto or cuda) with several free GPUs, one slot per GPU (at most
    `parallel`); a config pinned to the CPU or to one device, or a box without NVML, gets
    `parallel` slots that share what there is."""
    if device == "cpu" or device.startswith("cuda:"):
        return [None] * parallel
    gpus = free_gpus()
    if len(gpus) <= 1:
        return [None] * parallel
    return [str(g) for g in gpus[:parallel]]
