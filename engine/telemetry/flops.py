"""FLOPs per sample (torch's counter on a meta-device copy), device peaks, and the step's TFLOP/s and MFU."""

from __future__ import annotations


#: Dense bf16/fp16 tensor-core peak, TFLOP/s, by GPU name fragment (override: train.peak_tflops).
PEAK_TFLOPS = {
    "H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10G": 70.0,
    "A10": 125.0, "V100": 125.0, "T4": 65.0, "RTX 4090": 165.0, "RTX 3090": 71.0,
}


def peak_tflops(device_name: str) -> float | None:
    """The table's peak for a device name, or None when it is not listed."""
    for key, value in PEAK_TFLOPS.items():
        if key in device_name:
            return value
    return None


def flops_per_sample(model, sample_shape: tuple[int, ...], dtype=None) -> float | None:
    """FLOPs of one forward and backward pass per sample, counted by torch on a meta-device copy.

    The copy lives on the meta device: no memory, no compute, and no RNG draws, so counting
    leaves the run exactly as it was. None when the model cannot be traced that way.
    """
    import copy

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    try:
        with torch.random.fork_rng(devices=[]):
            meta = copy.deepcopy(model).to("meta")
            x = torch.zeros((2, *sample_shape), device="meta", dtype=dtype)
            with FlopCounterMode(display=False) as counter:
                meta(x).float().sum().backward()
        return counter.get_total_flops() / 2
    except Exception:  # noqa: BLE001 - exotic models simply get no MFU
        return None


def bf16_native(device) -> bool:
    """Whether `device` computes bf16 natively, so that train.precision = 'bf16' can be faster
    than fp32: a CUDA GPU that supports it, or a CPU with AVX512-BF16 or AMX (where torch cannot
    tell those, oneDNN's own bf16 check)."""
    import torch

    try:
        if device.type == "cuda":
            return bool(torch.cuda.is_bf16_supported())
        if device.type != "cpu":
            return False
        checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
        if any(checks):
            return any(bool(check()) for check in checks if check is not None)
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # noqa: BLE001 - unknown: say no (the doctor then names no bf16)
        return False


def step_flops(flops: float | None, samples_per_s: float, peak: float | None) -> dict[str, float]:
    """Achieved TFLOP/s for one process, and MFU where the device's peak is known."""
    if not flops:
        return {}
    achieved = flops * samples_per_s / 1e12
    return {"tflops": achieved, **({"mfu": achieved / peak} if peak else {})}


def peak_bytes(device) -> int:
    """This process's peak memory: the CUDA allocator's peak on a GPU, else the peak resident set."""
    if device.type == "cuda":
        import torch

        return int(torch.cuda.max_memory_allocated(device))
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)  # bytes on macOS, KiB on Linux


def memory_fields(device) -> dict[str, int]:
    """Peak device memory so far (CUDA's allocator counter: no synchronization)."""
    if device.type != "cuda":
        return {}
    import torch

    return {"mem_peak_bytes": int(torch.cuda.max_memory_allocated(device))}
