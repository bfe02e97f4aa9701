"""Benchmarks: `nexusgen bench ar|decoder|e2e|train|serve|gpu|assemble`, each a `run(...) -> dict` that the command
prints as JSON.

The timing helpers every benchmark shares live here: medians of repeated calls (these machines are
noisy), `device_ms` (back-to-back calls with a single synchronisation, CUDA events on a GPU: what a GPU
kernel costs without the launch-and-wait of a sync per call) and the measured matmul peak that achieved
FLOP/s are compared with.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def synchronize(device: torch.device | str | None = None) -> None:
    """Wait for queued GPU work (no-op on CPU), so wall-clock times cover the work itself."""
    if torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda"):
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], object], repeats: int, device: torch.device | str | None = None) -> float:
    """Median wall time of `fn()` over `repeats` calls, after one warm-up call (allocator, threads, kernels)."""
    fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def device_ms(fn: Callable[[], object], repeats: int, device: torch.device | str, warmup: int = 1) -> float:
    """Milliseconds per call of `fn()`: `warmup` untimed calls, then `repeats` calls back to back and one
    synchronisation (CUDA events on a GPU, wall clock elsewhere)."""
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    synchronize(device)
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeats):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / repeats
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    return 1000 * (time.perf_counter() - started) / repeats


def gemm_peak(device: torch.device, dtype: torch.dtype, shapes: list[tuple[int, int, int]],
              repeats: int = 10) -> dict:
    """Best FLOP/s over (m, k, n) GEMMs, each timed back to back with one synchronisation (`device_ms`):
    the dense-compute ceiling the achieved FLOP/s of a workload made of such GEMMs are compared with.

    Returns:
        {"flops_per_s", "shape", "dtype", "by_shape": {"mxkxn": TFLOP/s}}
    """
    best, best_shape, by_shape = 0.0, None, {}
    for m, k, n in shapes:
        a = torch.randn(m, k, device=device, dtype=dtype)
        b = torch.randn(k, n, device=device, dtype=dtype)
        rate = 2 * m * k * n / (device_ms(lambda a=a, b=b: torch.matmul(a, b), repeats, device, warmup=2) / 1000)
        by_shape[f"{m}x{k}x{n}"] = rate / 1e12
        if rate > best:
            best, best_shape = rate, [m, k, n]
        del a, b
    return {"flops_per_s": best, "shape": best_shape, "dtype": str(dtype).removeprefix("torch."),
            "by_shape_tflops": by_shape}


def matmul_peak(device: torch.device, sizes=(1024,), repeats: int = 3, dtype: torch.dtype | None = None) -> dict:
    """Best FLOP/s of an n x n @ n x n matmul over `sizes` and `repeats` (default dtype: fp32 on CPU, bf16
    on GPU): the roofline achieved FLOP/s are reported against.

    Returns:
        {"flops_per_s", "n", "dtype", "threads"}
    """
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    best, best_n = 0.0, None
    for n in sizes:
        a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
        rate = 2 * n**3 / min(median_seconds(lambda a=a, b=b: torch.matmul(a, b), 1, device) for _ in range(repeats))
        if rate > best:
            best, best_n = rate, n
    return {"flops_per_s": best, "n": best_n, "dtype": str(dtype).removeprefix("torch."),
            "threads": torch.get_num_threads()}


def attention_flops(query_shape, key_shape, value_shape, dropout_p: float = 0.0, is_causal: bool = False,
                    *args, attn_mask=None, out_shape=None, **kwargs) -> int:
    """FLOPs of the CPU flash attention (absent from FlopCounterMode's registry): QK^T and PV.

    A causal or masked call (the LLM's) counts only the causal (query, key) pairs -- the least work any
    kernel must do, so a FLOP rate is never inflated; an unmasked call (the DiT's) counts every pair.
    """
    batch, heads, q_len, head_dim = query_shape
    k_len = key_shape[-2]
    if is_causal or attn_mask is not None:
        # query i (of q_len, the last rows of a k_len sequence) sees keys 0 .. k_len - q_len + i
        pairs = sum(min(k_len, k_len - q_len + i + 1) for i in range(q_len))
    else:
        pairs = q_len * k_len
    return 4 * batch * heads * head_dim * pairs


def count_flops(fn: Callable[..., object], *args) -> int:
    """FLOPs of `fn(*args)` by torch's FlopCounterMode, with `attention_flops` for the CPU attention."""
    from torch.utils.flop_counter import FlopCounterMode

    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: attention_flops}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fn(*args)
    return counter.get_total_flops()
