"""Memory tools for real GPUs: fp8 weight storage for the DiT, one-resident-at-a-time offload, peak memory.

* fp8: the DiT's weights are stored as ``float8_e4m3fn`` and up-cast layer by layer to the compute dtype
  just before each layer runs (upstream's ``--fp8_quantization``: DiffSynth casts per Linear; here
  diffusers' layerwise-casting hooks do it). Norms, RoPE and the embedders stay in the compute dtype
  (diffusers' default skip list). Halves the ~24 GB bf16 DiT to ~12 GB; outputs move by fp8 rounding.
* offload: the AR model (~16 GB) and a decoder (~24 GB) need not share the GPU; `OneResident` moves the
  one that is needed in and the previous one out (upstream scripts move the AR model to the CPU before
  loading the decoder).
* peak memory: `peak_memory` reports the accelerator's peak allocation (or the process's peak RSS on CPU).
"""

from __future__ import annotations

import resource
import sys

import torch
from torch import nn

FP8_DTYPE = torch.float8_e4m3fn


def enable_fp8_storage(transformer: nn.Module, compute_dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """Store a diffusers model's weights in fp8 and up-cast each layer at compute time (in place).

    Args:
        transformer: a diffusers ``ModelMixin`` (e.g. ``decoder.transformer``), in any float dtype.
        compute_dtype: dtype the layers compute in (bf16 on GPU; fp32 on CPU).

    Returns:
        The same module, for chaining.

    Raises:
        ValueError: if the module does not support layerwise casting.
    """
    if not hasattr(transformer, "enable_layerwise_casting"):
        raise ValueError(f"{type(transformer).__name__} is not a diffusers model; fp8 storage needs "
                         f"`enable_layerwise_casting`")
    if any(p.dtype != compute_dtype for p in transformer.parameters()):
        transformer.to(compute_dtype)
    transformer.enable_layerwise_casting(storage_dtype=FP8_DTYPE, compute_dtype=compute_dtype)
    return transformer


def parameter_bytes(module: nn.Module) -> int:
    """Bytes held by a module's parameters and buffers (counts fp8 storage as 1 byte per value)."""
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


class OneResident:
    """Keeps at most one of several modules on the accelerator; the others wait on `offload_device`.

    Example::

        residency = OneResident("cuda")
        embeds = residency.activate(ar_model).predict(...)      # AR on the GPU
        image = generate_images(residency.activate(decoder), ...)  # AR back to CPU, decoder in

    Args:
        device: the compute device.
        offload_device: where inactive modules live (default CPU).
    """

    def __init__(self, device: torch.device | str, offload_device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.offload_device = torch.device(offload_device)
        self.current: nn.Module | None = None

    def activate(self, module: nn.Module) -> nn.Module:
        """Move `module` to the device, after moving the previous resident out; returns `module`.

        Where the device is the offload device (the CPU) nothing moves: every module may stay, and a
        `.to()` walk of a model already in place cost shapes-mini ~9 ms of every 0.25-s `generate`.
        """
        if self.current is not None and self.current is not module and self.offload_device != self.device:
            self.current.to(self.offload_device)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()  # give the freed blocks back before the next model arrives
        self.current = place(module, self.device)
        return module

    def release(self) -> None:
        """Move the current resident out."""
        if self.current is not None:
            self.current.to(self.offload_device)
            self.current = None
            if self.device.type == "cuda":
                torch.cuda.empty_cache()


def is_on(module: nn.Module, device: torch.device) -> bool:
    """Whether every parameter and buffer of `module` is on `device` ("cuda" matches "cuda:0")."""
    def same(d: torch.device) -> bool:
        return d.type == device.type and (device.index is None or d.index == device.index)
    return all(same(t.device) for t in (*module.parameters(), *module.buffers()))


def place(module: nn.Module, device: torch.device) -> nn.Module:
    """`module.to(device)`, skipped when it is already there (a cheap check, unlike `.to()`'s walk)."""
    return module if is_on(module, device) else module.to(device)


def reset_peak_memory(device: torch.device | str) -> None:
    """Start a new peak-memory measurement on a CUDA device (no-op elsewhere)."""
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device | str) -> dict[str, float | str]:
    """Peak memory since the last reset.

    Returns:
        CUDA: ``{"device", "peak_allocated_mib", "peak_reserved_mib"}``; CPU: ``{"device",
        "peak_rss_mib"}`` (the whole process's high-water mark, not resettable).
    """
    device = torch.device(device)
    if device.type == "cuda":
        return {"device": torch.cuda.get_device_name(device),
                "peak_allocated_mib": torch.cuda.max_memory_allocated(device) / 2**20,
                "peak_reserved_mib": torch.cuda.max_memory_reserved(device) / 2**20}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_bytes = rss if sys.platform == "darwin" else rss * 1024  # Linux reports KiB, macOS bytes
    return {"device": "cpu", "peak_rss_mib": rss_bytes / 2**20}
