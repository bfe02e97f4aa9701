"""Parts of a model that are loaded on first use (lean loading).

A model folder holds up to four big parts; a task needs only some of them (understand: the AR model;
generate: + generation decoder + VAE; edit: + editing decoder). `LazyPart` stands for one part that has
not been read yet: it knows its config (enough for the pipelines to validate requests and build prompts)
and how to load itself, and loads when `get()` is first called -- memory-mapped, in the dtype (and with the
fp8 storage) chosen before then. Host memory therefore stays near the size of the parts actually in use.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

Loader = Callable[[torch.dtype | None, bool], nn.Module]
"""(dtype, fp8) -> the loaded part on the CPU."""


@dataclass
class LazyPart:
    """A model part loaded on first `get()`.

    Attributes:
        name: the part's folder name ("autoregressive", "generation_decoder", ...).
        config: its config (`ARConfig`, `DecoderConfig`, the VAE's diffusers config), known without loading.
        loader: loads the part (see `Loader`).
        dtype: parameter dtype to load in (None: as stored).
        fp8: store the DiT's Linear weights in fp8 (decoders only).
        device: where the loaded part is moved (None: stays on the CPU, the residency moves it).
    """

    name: str
    config: Any
    loader: Loader
    dtype: torch.dtype | None = None
    fp8: bool = False
    device: torch.device | None = None
    module: nn.Module | None = None

    @property
    def loaded(self) -> bool:
        return self.module is not None

    def get(self) -> nn.Module:
        """The part, loading it on the first call."""
        if self.module is None:
            module = self.loader(self.dtype, self.fp8)
            self.module = module.to(self.device) if self.device is not None else module
        return self.module


def resolve(part: nn.Module | LazyPart | None) -> nn.Module | None:
    """The module behind `part`, loading it if it is a `LazyPart`."""
    return part.get() if isinstance(part, LazyPart) else part
