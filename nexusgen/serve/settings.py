"""`ServeSettings`: every limit and knob of `nexusgen serve`, named and documented in one place.

Each field becomes a command-line option of the same name (`max_batch` -> `--max-batch`), so the help
text, the documentation and the code cannot disagree. This module imports nothing heavy: the command
line builds its options from it without loading fastapi or torch.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field


def _setting(default, help: str, **kwargs):
    return field(default=default, metadata={"help": help, **kwargs})


@dataclass
class ServeSettings:
    """Limits and batching settings of one server (see docs/serving.md)."""

    # -- batching and back-pressure ------------------------------------------------------------------
    max_batch: int = _setting(8, "most images (generate/edit) or conversations (chat) in one batched model call")
    max_wait_ms: float = _setting(5.0, "how long the worker waits for more requests to fill a batch (ms)")
    max_queue: int = _setting(32, "most requests waiting for the worker; beyond it: 429 with Retry-After")
    request_timeout_s: float = _setting(120.0, "a request not started within this time gets 503 (its deadline)")
    shutdown_timeout_s: float = _setting(60.0, "on SIGTERM, how long running requests may take to finish")
    # -- request size ---------------------------------------------------------------------------------
    max_request_bytes: int = _setting(20 * 2**20, "largest request body (bytes); beyond it: 413")
    max_image_bytes: int = _setting(10 * 2**20, "largest encoded input image (bytes, after base64 decoding)")
    max_image_pixels: int = _setting(16_000_000, "largest input image (width x height), read from its header "
                                     "before decoding (decompression bombs)")
    max_images_per_request: int = _setting(4, "most input images in one chat request")
    max_messages: int = _setting(64, "most messages in one chat request")
    max_prompt_chars: int = _setting(4000, "longest prompt or conversation text (characters)")
    max_prompt_tokens: int = _setting(1024, "longest prompt or conversation (tokens, images included)")
    max_new_tokens: int = _setting(512, "largest max_tokens of a chat request")
    # -- image outputs --------------------------------------------------------------------------------
    max_n: int = _setting(4, "most images one generations/edits request may ask for (n)")
    max_side_px: int = _setting(1024, "largest width or height of an output image (pixels)")
    max_steps: int = _setting(100, "most denoising steps a request may ask for (num_inference_steps)")
    # -- security -------------------------------------------------------------------------------------
    api_key: str | None = _setting(None, "require 'Authorization: Bearer KEY' on every route but /health "
                                   "(also read from NEXUSGEN_API_KEY)", secret=True)
    allowed_image_domains: tuple[str, ...] = _setting((), "chat image_url domains that may be fetched over "
                                                      "https (comma-separated; default none: data URLs only)")
    image_fetch_timeout_s: float = _setting(5.0, "timeout of one remote image fetch (allowed domains only)")

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type in ("int", "float") and (isinstance(value, bool) or not isinstance(value, (int, float))
                                               or not math.isfinite(value) or value <= 0):
                raise ValueError(f"{f.name} must be a positive number, got {value!r}")
        if isinstance(self.allowed_image_domains, str):
            self.allowed_image_domains = tuple(d for d in self.allowed_image_domains.split(",") if d)
        self.allowed_image_domains = tuple(d.strip().lower() for d in self.allowed_image_domains if d.strip())
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("api_key must not be empty")

    def __repr__(self) -> str:  # never print the key
        shown = {f.name: ("***" if f.metadata.get("secret") and getattr(self, f.name) else getattr(self, f.name))
                 for f in dataclasses.fields(self)}
        return f"ServeSettings({', '.join(f'{k}={v!r}' for k, v in shown.items())})"


def setting_fields() -> list[dataclasses.Field]:
    """The fields of `ServeSettings`, in order (for the command line and the docs)."""
    return list(dataclasses.fields(ServeSettings))
