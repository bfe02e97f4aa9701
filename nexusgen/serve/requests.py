"""Validated requests -> the model's arguments, checked against `ServeSettings` and the model itself.

Everything here runs before a request is queued, so a bad request is refused in milliseconds with a
message naming its field, and the worker only ever sees work it can do. The library's own checks
(`nexusgen.validation` for guidance, sizes and text; `image_settings`, `negative_kwargs` for the model) are
called here too, so the server and the library cannot disagree about what is valid.
"""

from __future__ import annotations

import math
import re
import secrets

from PIL import Image

from nexusgen.pipelines.generate import image_settings
from nexusgen.pipelines.predict import negative_kwargs
from nexusgen.processing.images import bounded_size
from nexusgen.processing.templates import IMAGE_PLACEHOLDER
from nexusgen.serve.errors import APIError, bad_request
from nexusgen.serve.media import image_from_url
from nexusgen.serve.settings import ServeSettings
from nexusgen.validation import SIZE_MULTIPLE, check_guidance, check_text

IMAGE_FIELDS = ("size", "num_inference_steps", "true_cfg_scale", "guidance_scale", "negative_prompt")
"""Chat fields that only set answer images."""
SIZE_STEP_PX = SIZE_MULTIPLE
"""Output sides must be multiples of this (the VAE's 8 px times the DiT's 2x2 latent patches)."""
_SIZE = re.compile(r"^(\d{1,5})x(\d{1,5})$")


def check_model_name(name: str | None, served: str) -> None:
    if name is not None and name != served:
        raise APIError(404, f"model {name!r} is not served here; this server serves {served!r} (GET /v1/models)",
                       param="model", code="model_not_found")


def check_prompt(prompt: str, param: str, settings: ServeSettings, tokenizer) -> int:
    """Non-empty, valid Unicode, at most max_prompt_chars characters and max_prompt_tokens tokens; returns
    the tokens."""
    try:
        check_text(prompt, param)
    except ValueError as err:
        raise bad_request(str(err), param, "invalid_value") from None
    if not prompt.strip():
        raise bad_request(f"{param} is empty", param, "empty_prompt")
    if len(prompt) > settings.max_prompt_chars:
        raise bad_request(f"{param}: {len(prompt)} characters is more than the limit of "
                          f"{settings.max_prompt_chars}", param, "prompt_too_long")
    tokens = len(tokenizer.encode(prompt, add_special_tokens=False))
    if tokens > settings.max_prompt_tokens:
        raise bad_request(f"{param}: {tokens} tokens is more than the limit of {settings.max_prompt_tokens}",
                          param, "prompt_too_long")
    return tokens


def check_n(n: int, settings: ServeSettings) -> int:
    if not 1 <= n <= settings.max_n:
        raise bad_request(f"n must be between 1 and {settings.max_n}, got {n}", "n", "invalid_n")
    return n


def parse_size(size: str | None, settings: ServeSettings) -> tuple[int | None, int | None]:
    """"WxH" -> (height, width); None or "auto" -> (None, None): the model's size."""
    if size is None or size == "auto":
        return None, None
    match = _SIZE.match(size)
    if match is None:
        raise bad_request(f"size must be 'WxH' (e.g. '64x64') or 'auto', got {size!r}", "size", "invalid_size")
    width, height = int(match.group(1)), int(match.group(2))
    for side in (width, height):
        if side < SIZE_STEP_PX or side % SIZE_STEP_PX:
            raise bad_request(f"size {size}: each side must be a positive multiple of {SIZE_STEP_PX}", "size",
                              "invalid_size")
        if side > settings.max_side_px:
            raise bad_request(f"size {size}: each side must be at most {settings.max_side_px} px", "size",
                              "invalid_size")
    return height, width


def image_options(request, model, settings: ServeSettings, *, edit: bool = False,
                  decoder: str = "editing") -> dict:
    """The image keyword arguments of a NexusGen call, validated (400 naming the field)."""
    if request.negative_prompt is not None:
        raise bad_request(f"negative_prompt is not supported: this model's negative branch is fixed "
                          f"({model.config.sampling.negative!r}; docs/serving.md); leave it out",
                          "negative_prompt", "unsupported_parameter")
    steps = request.num_inference_steps
    if steps is not None and not 1 <= steps <= settings.max_steps:
        raise bad_request(f"num_inference_steps must be between 1 and {settings.max_steps}, got {steps}",
                          "num_inference_steps", "invalid_steps")
    _check_embedded_guidance(request.guidance_scale, model)
    scale = request.true_cfg_scale
    if scale is not None:
        try:
            check_guidance(scale, "true_cfg_scale")
        except ValueError as err:
            raise bad_request(str(err), "true_cfg_scale", "invalid_value") from None
    height, width = parse_size(request.size, settings)
    options = {"height": height, "width": width, "num_steps": steps, "guidance_scale": scale}
    uses_editing = edit and decoder == "editing"
    try:
        checked = image_settings(model.config, seed=0, edit=uses_editing, **options)
        negative_kwargs(model.config, model.parts.negative, checked.guidance_scale)
    except ValueError as err:
        raise bad_request(str(err), "true_cfg_scale" if "guidance_scale" in str(err) else "size",
                          "invalid_value") from None
    return options


def _check_embedded_guidance(value: float | None, model) -> None:
    if value is None:
        return
    config = model.config.generation_decoder or model.config.editing_decoder  # configs: no decoder is loaded
    trained = config.embedded_guidance if config is not None and config.guidance_embeds else None
    if trained is None or not math.isfinite(value) or value != trained:
        fixed = f"fixed at {trained} (its trained value)" if trained is not None else "absent (no guidance embedder)"
        raise bad_request(f"guidance_scale is the DiT's embedded guidance, {fixed} on this model; use "
                          "true_cfg_scale for classifier-free guidance", "guidance_scale", "unsupported_value")


def item_seeds(seed: int | None, n: int) -> list[int]:
    """Seeds of a request's n images: seed, seed + 1, ...; a random base when omitted."""
    base = secrets.randbelow(2**31) if seed is None else seed
    return [base + k for k in range(n)]


def image_tokens(image: Image.Image, model) -> int:
    """How many LLM positions an input image takes (the bounded input size, in tokens)."""
    processor = model.processor
    config = processor.config
    height, width = bounded_size(image.height, image.width, processor.token_px, config.max_input_pixels,
                                 config.min_input_pixels)
    return (height // processor.token_px) * (width // processor.token_px)


def conversation(messages, model, settings: ServeSettings) -> tuple[list[dict], int]:
    """Chat messages -> a NexusGen conversation (PIL images decoded) and its size in tokens.

    Blocking (decodes images, may fetch allowed remote ones): run it in a thread.
    """
    if len(messages) > settings.max_messages:
        raise bad_request(f"messages: {len(messages)} is more than the limit of {settings.max_messages}",
                          "messages", "too_many_messages")
    tokenizer = model.processor.tokenizer
    out, num_images, chars, tokens = [], 0, 0, 0
    for index, message in enumerate(messages):
        param = f"messages.{index}.content"
        parts = [] if message.content is None else message.content
        parts = [parts] if isinstance(parts, str) else parts
        content: list = []
        for k, part in enumerate(parts):
            if isinstance(part, str) or part.type == "text":
                text = part if isinstance(part, str) else part.text
                try:
                    check_text(text, param)
                except ValueError as err:
                    raise bad_request(str(err), param, "invalid_value") from None
                if IMAGE_PLACEHOLDER in text:
                    raise bad_request(f"{param}: the text may not contain {IMAGE_PLACEHOLDER}; send images as "
                                      "image_url parts", param, "invalid_value")
                chars += len(text)
                tokens += len(tokenizer.encode(text, add_special_tokens=False))
                content.append(text)
                continue
            num_images += 1
            if num_images > settings.max_images_per_request:
                raise bad_request(f"messages: more than {settings.max_images_per_request} images", param,
                                  "too_many_images")
            image = image_from_url(part.image_url.url, f"{param}.{k}.image_url", settings)
            tokens += image_tokens(image, model)
            content.append(image)
        role = "system" if message.role == "developer" else message.role
        out.append({"role": role, "content": _layout(content) if role == "user" else content})
    if chars > settings.max_prompt_chars:
        raise bad_request(f"messages: {chars} characters is more than the limit of {settings.max_prompt_chars}",
                          "messages", "prompt_too_long")
    if tokens > settings.max_prompt_tokens:
        raise bad_request(f"messages: {tokens} tokens is more than the limit of {settings.max_prompt_tokens}",
                          "messages", "prompt_too_long")
    if out[-1]["role"] != "user":
        raise bad_request("messages: the last message must be the user's", "messages", "invalid_value")
    return out, tokens


def _layout(parts: list) -> list:
    """A user message's images first, then its text, whatever the order of its parts: the layout the
    model was trained on (the bundled model answers worse when a question comes before its image). The
    chat pipeline puts the official separator after each image: a newline before a question, a space
    before an editing instruction (`nexusgen.processing.templates.join_image_text`)."""
    images = [p for p in parts if not isinstance(p, str)]
    text = "".join(p for p in parts if isinstance(p, str))
    return [*images, text.lstrip()] if images else [text]


def chat_options(request, model, settings: ServeSettings) -> dict:
    """The non-image keyword arguments of a NexusGen.chat call, validated."""
    if request.n != 1:
        raise bad_request("n: this server answers with one choice (n=1)", "n", "invalid_n")
    budget = request.max_completion_tokens if request.max_completion_tokens is not None else request.max_tokens
    budget = min(256, settings.max_new_tokens) if budget is None else budget
    param = "max_completion_tokens" if request.max_completion_tokens is not None else "max_tokens"
    if not 1 <= budget <= settings.max_new_tokens:
        raise bad_request(f"{param} must be between 1 and {settings.max_new_tokens}, got {budget}", param,
                          "invalid_value")
    temperature = 0.0 if request.temperature is None else request.temperature
    top_p = 1.0 if request.top_p is None else request.top_p
    if not math.isfinite(temperature) or not 0 <= temperature <= 2:
        raise bad_request(f"temperature must be between 0 and 2, got {temperature}", "temperature", "invalid_value")
    if not math.isfinite(top_p) or not 0 < top_p <= 1:
        raise bad_request(f"top_p must be in (0, 1], got {top_p}", "top_p", "invalid_value")
    image_output = "image" in (request.modalities or ["text"])
    if not image_output:
        for name in IMAGE_FIELDS:
            if getattr(request, name) is not None:
                raise bad_request(f"{name} sets answer images: add modalities ['text', 'image'] or leave it out",
                                  name, "unsupported_parameter")
    if image_output and model.config.generation_decoder is None:
        raise bad_request("modalities: this model has no generation decoder, it answers in text only",
                          "modalities", "unsupported_value")
    if image_output and request.stream:
        raise bad_request("stream: answers with images are not streamed; set stream false or modalities ['text']",
                          "stream", "unsupported_value")
    return {"max_new_tokens": budget, "temperature": float(temperature), "top_p": float(top_p),
            "image_output": image_output}
