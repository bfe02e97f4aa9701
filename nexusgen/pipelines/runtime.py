"""Where and how the pipelines of one model run: device, dtype, which parts are resident, progress.

Parts reach the pipelines as modules or as `LazyPart`s (loaded on first use, `nexusgen.loading.lazy`);
`Runtime.activate` loads a waiting part and makes it resident on the device under the residency policy
(`nexusgen.pipelines.residency`: "auto" keeps every part in use on the GPU while they fit, "model" moves
whole models, "none" never moves one out). On the CPU nothing moves.

Progress: a tqdm bar while denoising, shown only when stderr is a terminal (or when asked explicitly).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import torch

from nexusgen.config import resolve_device, resolve_dtype
from nexusgen.loading.lazy import LazyPart, resolve
from nexusgen.pipelines.residency import Residency, check_policy


class Runtime:
    """Device, dtype, residency and progress settings shared by a model's pipelines.

    Args:
        device: compute device (default cuda if available, else cpu).
        dtype: compute dtype (default bf16 on cuda, fp32 on cpu).
        progress: show progress bars: True, False, or None (only when stderr is a terminal).
        offload: residency policy, "auto" (default), "none" or "model".
    """

    def __init__(self, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None,
                 progress: bool | None = None, offload: str = "auto"):
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.progress = progress
        self.residency = Residency(self.device, check_policy(offload))

    def activate(self, part: torch.nn.Module | LazyPart, permanent: bool = False) -> torch.nn.Module:
        """Load `part` if it waits, and make it resident on the device (others may leave, per policy)."""
        module = resolve(part)
        return self.residency.activate(part_name(part), module, permanent=permanent)

    def prefetch(self, part: torch.nn.Module | LazyPart | None) -> None:
        """Start moving an already loaded part in while other work runs, if it fits next to the residents."""
        if part is not None and (not isinstance(part, LazyPart) or part.loaded):
            self.residency.prefetch(part_name(part), resolve(part))

    def place(self, part: torch.nn.Module | LazyPart) -> torch.nn.Module:
        """Put a small part (the VAE) on the device for good."""
        return self.activate(part, permanent=True)

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


def part_name(part: torch.nn.Module | LazyPart) -> str:
    """A part's name for the residency: the folder name of a `LazyPart` or a tagged module, else the class
    name with the object's id (modules handed in directly)."""
    if isinstance(part, LazyPart):
        return part.name
    return getattr(part, "nexusgen_part", None) or f"{type(part).__name__}-{id(part):x}"
