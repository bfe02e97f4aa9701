"""Request bodies of the OpenAI-compatible API (pydantic) and the shapes of the answers.

JSON bodies are strict (a string is not a number) and closed: a field this server does not know is a
400 naming it, never silently ignored. The fields follow OpenAI's names; the image-generation extensions
follow vLLM-Omni's (`num_inference_steps`, `true_cfg_scale`, `guidance_scale`, `negative_prompt`,
`seed`). What each field does on this model, and which values are refused, is in docs/serving.md; the
limits are `ServeSettings` (checked in `nexusgen.serve.requests`, because they are configurable).
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

SEED_MAX = 2**63 - 1
"""Largest seed (torch generators take 64-bit seeds; seed + k must not overflow)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


Seed = Annotated[int, Field(ge=0, le=SEED_MAX - 2**32)]


class ImageOptions(_Strict):
    """The image settings a request may set (all optional: the model's defaults otherwise)."""

    size: str | None = None
    """"WxH" in pixels, sides multiples of 16, or "auto" (the model's size)."""
    num_inference_steps: int | None = None
    """Euler steps of the decoder (vLLM-Omni name)."""
    true_cfg_scale: float | None = None
    """Classifier-free guidance scale (vLLM-Omni name); 1 = off."""
    guidance_scale: float | None = None
    """The DiT's embedded guidance (vLLM-Omni name): fixed by training, only its trained value is accepted."""
    negative_prompt: str | None = None
    """Refused: this model's negative branch is fixed (see docs/serving.md)."""
    seed: Seed | None = None
    """Noise seed of the first image (image k: seed + k); omitted: a random seed, reported back."""


class ImageGenerationRequest(ImageOptions):
    """`POST /v1/images/generations` (JSON)."""

    prompt: str
    model: str | None = None
    n: int = 1
    response_format: Literal["b64_json"] | None = None
    output_format: Literal["png"] | None = None
    user: str | None = None
    """Accepted for compatibility; not used and not logged."""


class ImageEditForm(ImageGenerationRequest):
    """`POST /v1/images/edits`: the text fields of the multipart form (strings, converted: not strict)."""

    model_config = ConfigDict(extra="forbid", strict=False)

    decoder: Literal["editing", "generation"] = "editing"


class ImageURL(_Strict):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ImagePart(_Strict):
    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None
    name: str | None = None


class StreamOptions(_Strict):
    include_usage: bool = False


class ChatCompletionRequest(ImageOptions):
    """`POST /v1/chat/completions`."""

    messages: list[ChatMessage] = Field(min_length=1)
    model: str | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    """Omitted or 0: greedy decoding (the model's default); > 0: sampling at this temperature."""
    top_p: float | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    modalities: list[Literal["text", "image"]] | None = None
    user: str | None = None


# -- answers -----------------------------------------------------------------------------------------
def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def images_response(b64_images: list[str], seeds: list[int], size: tuple[int, int]) -> dict:
    """OpenAI's ImagesResponse; each item also carries its seed (an extension clients may ignore)."""
    width, height = size
    return {"created": int(time.time()), "data": [{"b64_json": b, "seed": s} for b, s in zip(b64_images, seeds,
                                                                                             strict=True)],
            "size": f"{width}x{height}", "output_format": "png"}


def chat_response(model: str, content, usage: dict, finish: str, seed: int) -> dict:
    """OpenAI's ChatCompletion with one choice; `content` is a string or a list of parts (images)."""
    return {"id": new_id("chatcmpl"), "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}],
            "usage": usage, "seed": seed}


def chat_chunks(model: str, content: str, usage: dict, finish: str, include_usage: bool) -> list[dict]:
    """The SSE chunks of a streamed text answer: role, the text, the finish reason (and usage)."""
    base = {"id": new_id("chatcmpl"), "object": "chat.completion.chunk", "created": int(time.time()),
            "model": model}
    chunks = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                    "finish_reason": None}]}]
    if content:
        chunks.append({**base, "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}]})
    chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
    if include_usage:
        chunks.append({**base, "choices": [], "usage": usage})
    return chunks
