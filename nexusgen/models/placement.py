"""Building, casting and moving models without losing precision or memory.

* `cast_module` is `module.to(device, dtype)` that leaves two kinds of tensors' dtype alone: buffers a
  module derives itself and never saves (non-persistent buffers: the rotary inverse frequencies of the
  LLM, the ViT and the editing merger, which transformers computes in fp32 and keeps in fp32 under
  `from_pretrained(dtype=bf16)`), and fp8-stored weights (`nexusgen.models.memory.Fp8Linear`). A blanket
  `.to(torch.bfloat16)` rounds `inv_freq` to 8 mantissa bits: the rotary angle at position p is
  p * inv_freq, so its error grows with p (0.15 rad at 128, 1.2 rad at 1024 in the 7B LLM).
* `meta_parameters` builds a module with its parameters on the meta device (no memory, no init) and its
  buffers real, so a loader can assign checkpoint tensors (e.g. memory-mapped safetensors) without ever
  holding a freshly initialised copy, and the rotary buffers are computed exactly as in a normal build.
* `materialize_random_` gives such a module random weights directly on a device in a dtype (benchmarks of
  the real-size parts: never an fp32 copy on the card); `build_random` does both steps for a factory.
* `tensor_bytes` counts what a module holds (on the meta device too: sizes without memory).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


def derived_buffer_names(module: nn.Module) -> set[str]:
    """Qualified names of buffers the module derives itself (non-persistent): kept in their own dtype."""
    names = set()
    for prefix, sub in module.named_modules():
        for name in getattr(sub, "_non_persistent_buffers_set", ()):
            names.add(f"{prefix}.{name}" if prefix else name)
    return names


def _convert(tensor: torch.Tensor, device, dtype, keep_dtype: bool) -> torch.Tensor:
    if keep_dtype or dtype is None or not tensor.is_floating_point():
        return tensor.to(device=device) if device is not None else tensor
    return tensor.to(device=device, dtype=dtype)


def cast_module(module: nn.Module, dtype: torch.dtype | None = None,
                device: torch.device | str | None = None) -> nn.Module:
    """`module.to(device, dtype)` in place, except that derived buffers (rotary `inv_freq`) keep their dtype
    and non-float storage (fp8 weights held as uint8) keeps its dtype. Tensors already right are not copied.

    Returns:
        `module`, for chaining.
    """
    device = torch.device(device) if device is not None else None
    for sub in module.modules():
        derived = getattr(sub, "_non_persistent_buffers_set", set())
        for param in sub._parameters.values():
            if param is not None:
                new = _convert(param.data, device, dtype, keep_dtype=False)
                if new is not param.data:
                    param.data = new
        for name, buffer in sub._buffers.items():
            if buffer is not None:
                sub._buffers[name] = _convert(buffer, device, dtype, keep_dtype=name in derived)
    return module


def floating_dtypes(module: nn.Module) -> dict[torch.dtype, int]:
    """Element count per floating dtype over parameters and buffers (to check a cast)."""
    counts: dict[torch.dtype, int] = {}
    for tensor in (*module.parameters(), *module.buffers()):
        if tensor.is_floating_point():
            counts[tensor.dtype] = counts.get(tensor.dtype, 0) + tensor.numel()
    return counts


@contextlib.contextmanager
def meta_parameters() -> Iterator[None]:
    """Within the block, `nn.Module` parameters are created on the meta device; buffers stay real.

    Parameters cost nothing (no memory, no random init), while buffers a module computes in `__init__`
    (rotary inverse frequencies) are computed exactly as in an ordinary build.
    """
    original = nn.Module.register_parameter

    def register(self, name, param):
        original(self, name, param)
        if param is not None and param.device.type != "meta":
            meta = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
            self._parameters[name] = meta

    nn.Module.register_parameter = register
    try:
        yield
    finally:
        nn.Module.register_parameter = original


def tensor_bytes(module: nn.Module, dtype: torch.dtype | None = None) -> int:
    """Bytes of a module's parameters and buffers; with `dtype`, as if its floating parameters and persistent
    buffers were cast to it (derived buffers and fp8 storage keep theirs). Works on the meta device."""
    derived = derived_buffer_names(module)
    total = 0
    for name, tensor in (*module.named_parameters(), *module.named_buffers()):
        size = tensor.element_size()
        if dtype is not None and tensor.is_floating_point() and name not in derived:
            size = torch.empty((), dtype=dtype).element_size()
        total += tensor.numel() * size
    return total


@torch.no_grad()
def materialize_random_(module: nn.Module, device: torch.device | str, dtype: torch.dtype, std: float = 0.02,
                        seed: int = 0) -> nn.Module:
    """Give meta parameters random values directly on `device` in `dtype` (in place); real buffers are moved
    with `cast_module` (derived ones keep fp32).

    Init: biases 0, 1-D weights (norm scales) 1, other weights N(0, std). Enough for speed and memory
    measurements and finite outputs; not a trained model.
    """
    device = torch.device(device)
    generator = torch.Generator(device=device).manual_seed(seed)
    for sub in module.modules():
        for name, param in sub._parameters.items():
            if param is None:
                continue
            target = dtype if param.is_floating_point() else param.dtype
            data = torch.empty(param.shape, device=device, dtype=target)
            if name == "bias" or name.endswith("_bias"):
                data.zero_()
            elif param.ndim == 1:
                data.fill_(1.0)
            else:
                data.normal_(0.0, std, generator=generator)
            sub._parameters[name] = nn.Parameter(data, requires_grad=param.requires_grad)
    return cast_module(module, dtype=dtype, device=device)


def on_meta(factory):
    """`factory()` built under `meta_parameters` (parameters on the meta device, buffers real)."""
    with meta_parameters():
        return factory()


def build_random(factory, device: torch.device | str, dtype: torch.dtype, seed: int = 0):
    """`factory()` with its parameters random on `device` in `dtype` (rotary buffers fp32), eval mode."""
    return materialize_random_(on_meta(factory), device, dtype, seed=seed).eval()
