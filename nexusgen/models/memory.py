"""Memory tools for real GPUs: fp8 weight storage for the DiT, placement checks, peak memory.

* fp8 (upstream's ``--fp8_quantization``): every ``nn.Linear`` of a DiT -- the attention and MLP
  projections, the AdaLN modulation linears (``norm1.linear``, ``norm1_context.linear``, ``norm.linear``,
  ``norm_out.linear``) and the embedders -- is replaced by an `Fp8Linear`: its weight is stored as
  ``float8_e4m3fn`` with one fp32 scale per tensor (amax / 448, so no weight saturates) and up-cast to the
  compute dtype just before the layer runs. The norms' own weights, the biases and RoPE stay as they are.
  The FLUX.1-dev DiT drops from 23.8 GB (bf16) to 11.9 GB. The fp8 values are held in a ``uint8`` tensor:
  a later ``.to(torch.bfloat16)`` (ours or a library's) casts floating tensors only, so it cannot silently
  turn the storage back into bf16, while ``.to(device)`` moves it as usual.
* placement: `is_on` / `place` move a module only when it is elsewhere.
* peak memory: `peak_memory` reports the accelerator's peak allocation (or the process's peak RSS on CPU).
"""

from __future__ import annotations

import resource
import sys

import torch
import torch.nn.functional as F
from torch import nn

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8_DTYPE).max)  # 448


class Fp8Linear(nn.Module):
    """A Linear layer whose weight is stored in fp8 (e4m3) with a per-tensor scale, up-cast per call.

    Attributes:
        weight: (out, in) uint8 buffer holding the fp8 bit patterns (1 byte per value).
        scale: the per-tensor scale (python float): the real weight is fp8 value * scale.
        bias: (out,) parameter in the compute dtype, or None.
    """

    storage_dtype = FP8_DTYPE

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.uint8, device=device))
        self.scale = 1.0
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype), requires_grad=False)
        else:
            self.register_parameter("bias", None)

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear) -> Fp8Linear:
        """Quantize an `nn.Linear` (any float dtype, any device; on meta only the shapes are kept)."""
        weight = linear.weight
        layer = cls(linear.in_features, linear.out_features, bias=False, device=weight.device)
        if linear.bias is not None:
            layer.bias = nn.Parameter(linear.bias.detach(), requires_grad=False)
        if weight.device.type == "meta":
            layer.weight = torch.empty(weight.shape, dtype=torch.uint8, device="meta")
            return layer
        amax = float(weight.detach().abs().max().float())
        layer.scale = amax / FP8_MAX if amax > 0 else 1.0
        quantized = (weight.detach().float() / layer.scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
        layer.weight = quantized.view(torch.uint8)
        return layer

    def dequantized_weight(self, dtype: torch.dtype) -> torch.Tensor:
        """(out, in) weight in `dtype` (fp8 value * scale)."""
        return self.weight.view(FP8_DTYPE).to(dtype).mul_(self.scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        return F.linear(x, self.dequantized_weight(x.dtype), bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, storage=float8_e4m3fn, scale={self.scale:.3g}")


@torch.no_grad()
def enable_fp8_storage(transformer: nn.Module, compute_dtype: torch.dtype | None = None) -> nn.Module:
    """Replace every `nn.Linear` inside `transformer` by an `Fp8Linear` (in place; layer by layer, so the
    extra memory is one layer's fp32 copy at a time).

    Args:
        transformer: a DiT (e.g. ``decoder.transformer``), on any device, meta included.
        compute_dtype: if given, the remaining floating tensors (biases, norms) are cast to it.

    Returns:
        The same module, for chaining.
    """
    from nexusgen.models.placement import cast_module

    for parent in list(transformer.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, Fp8Linear.from_linear(child))
    if compute_dtype is not None:
        cast_module(transformer, dtype=compute_dtype)
    return transformer


def fp8_linear_count(module: nn.Module) -> tuple[int, int]:
    """(Fp8Linear layers, nn.Linear layers still in full precision) inside `module`."""
    fp8 = sum(isinstance(m, Fp8Linear) for m in module.modules())
    full = sum(isinstance(m, nn.Linear) for m in module.modules())
    return fp8, full


def parameter_bytes(module: nn.Module) -> int:
    """Bytes held by a module's parameters and buffers (fp8 storage counts 1 byte per value)."""
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


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
    return {"device": "cpu", "peak_rss_mib": maxrss_mib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)}


def maxrss_mib(ru_maxrss: int) -> float:
    """A `getrusage` / `wait4` peak resident set size in MiB."""
    rss_bytes = ru_maxrss if sys.platform == "darwin" else ru_maxrss * 1024  # Linux reports KiB, macOS bytes
    return rss_bytes / 2**20
