"""Where and how the pipelines of one model run: device, dtype, which big part is resident, progress.

On a GPU the autoregressive model (~16 GB for Nexus-GenV2) and a decoder (~24 GB) need not share the
memory: `Runtime.activate` keeps exactly one of them on the device (`nexusgen.models.memory.OneResident`;
the other waits on the CPU). The VAE is small and stays on the device. On the CPU nothing moves.

Progress: a tqdm bar while denoising, shown only when stderr is a terminal (or when asked explicitly).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import torch

from nexusgen.config import resolve_device, resolve_dtype
from nexusgen.models.memory import OneResident, place


class Runtime:
    """Device, dtype, residency and progress settings shared by a model's pipelines.

    Args:
        device: compute device (default cuda if available, else cpu).
        dtype: compute dtype (default bf16 on cuda, fp32 on cpu).
        progress: show progress bars: True, False, or None (only when stderr is a terminal).
    """

    def __init__(self, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None,
                 progress: bool | None = None):
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.progress = progress
        self.residency = OneResident(self.device)

    def activate(self, module: torch.nn.Module) -> torch.nn.Module:
        """Put a big part (AR model or decoder) on the device; on a GPU the previous one leaves it."""
        return self.residency.activate(module)

    def place(self, module: torch.nn.Module) -> torch.nn.Module:
        """Put a small part (the VAE) on the device for good."""
        return place(module, self.device)

    @contextlib.contextmanager
    def progress_bar(self, total: int, desc: str, enabled: bool | None = None) -> Iterator:
        """Yield a `progress(done, total)` callback for the sampler, or None when the bar is off."""
        show = enabled if enabled is not None else self.progress
        if show is None:
            show = sys.stderr.isatty()
        if not show:
            yield None
            return
        from tqdm.auto import tqdm

        with tqdm(total=total, desc=desc, leave=False, file=sys.stderr) as bar:
            def update(done: int, _total: int) -> None:
                bar.update(done - bar.n)
            yield update
