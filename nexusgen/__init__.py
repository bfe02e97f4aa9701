"""nexusgen: Nexus-Gen (arXiv 2504.21356) -- image understanding, generation and editing in one model.

Public API::

    from nexusgen import NexusGen
    ng = NexusGen.from_pretrained("shapes-mini")

Heavy modules (torch, transformers, diffusers) are imported on first use of a public name, so that
`import nexusgen` and `nexusgen --help` stay fast.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "NexusGen": "nexusgen.api",
    "NexusGenConfig": "nexusgen.config",
    "PRESETS": "nexusgen.config",
    "UnderstandPipeline": "nexusgen.pipelines",
    "GeneratePipeline": "nexusgen.pipelines",
    "EditPipeline": "nexusgen.pipelines",
    "ChatPipeline": "nexusgen.pipelines",
    "NexusGenARModel": "nexusgen.models.autoregressive",
    "ARConfig": "nexusgen.models.autoregressive",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'nexusgen' has no attribute {name!r}")
