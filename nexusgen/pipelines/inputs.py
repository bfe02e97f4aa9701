"""Input checking and encoding shared by the pipelines: one error style for every bad input.

The value checks themselves are `nexusgen.validation`'s (shared with the command line and the server);
this module adds the ones that need the model: images, embeddings, the model's context. Every check raises
`ValueError` naming the offending value; the CLI turns it into one line on stderr. Prompts are
language-detected per prompt (`detect_language`: any CJK ideograph selects the Chinese templates), so a
batch may mix English and Chinese requests.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import torch
from PIL import Image

from nexusgen.processing.images import MAX_DECODED_PIXELS, to_rgb
from nexusgen.processing.templates import IMAGE_PLACEHOLDER, image_request_messages, template_key

# CJK unified ideographs (+ extension A, compatibility ideographs) and CJK punctuation / full-width forms.
_CJK = re.compile("[\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef]")


def detect_language(text: str) -> str:
    """"zh" if `text` holds a CJK character, else "en"."""
    return "zh" if _CJK.search(text) else "en"


def as_batch(value: Any, name: str, single_types: tuple[type, ...]) -> tuple[list, bool]:
    """(list of items, was_single): a single item of `single_types` becomes a one-item list.

    Raises:
        ValueError: an empty list, or something that is neither an item nor a list/tuple.
    """
    if isinstance(value, single_types):
        return [value], True
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError(f"{name}: empty list")
        return list(value), False
    raise ValueError(f"{name} must be {' or '.join(t.__name__ for t in single_types)} or a list of them, "
                     f"got {type(value).__name__}")


def check_image(image: Any, name: str = "image", max_pixels: int = MAX_DECODED_PIXELS) -> Image.Image:
    """An RGB copy of a PIL image (transparency onto white), or ValueError (not an image, too many pixels)."""
    if not isinstance(image, Image.Image):
        raise ValueError(f"{name} must be a PIL image, got {type(image).__name__}")
    width, height = image.size
    if width < 1 or height < 1:
        raise ValueError(f"{name} is empty ({width}x{height})")
    if width * height > max_pixels:
        raise ValueError(f"{name}: {width}x{height} pixels is more than the limit of {max_pixels}")
    return to_rgb(image)


def check_embeds(image_embeds: Any, batch: int | None, num_tokens: int, hidden_size: int) -> None:
    """ValueError unless `image_embeds` is a float (batch, num_tokens, hidden_size) tensor (any batch if None)."""
    expected = (batch if batch is not None else "B", num_tokens, hidden_size)
    ok = isinstance(image_embeds, torch.Tensor) and image_embeds.ndim == 3 and image_embeds.is_floating_point() \
        and tuple(image_embeds.shape[1:]) == expected[1:] and batch in (None, image_embeds.shape[0])
    if not ok:
        shape = tuple(image_embeds.shape) if isinstance(image_embeds, torch.Tensor) else type(image_embeds).__name__
        raise ValueError(f"image_embeds must be a float ({', '.join(map(str, expected))}) tensor, got {shape}")


def batch_seeds(seed: int | tuple[int, ...], batch: int) -> list[int]:
    """The noise seed of each of `batch` images: `seed + b`, or the given per-image seeds.

    Per-image seeds let a caller give an item the same noise whatever batch it lands in (resumed or
    re-batched runs then write the same files).
    """
    if isinstance(seed, tuple):
        if len(seed) != batch:
            raise ValueError(f"got {len(seed)} seeds for {batch} images")
        return list(seed)
    return [seed + b for b in range(batch)]


def image_request_inputs(processor, prompts: list[str], task: str,
                         images: list[Image.Image] | None = None) -> dict[str, torch.Tensor]:
    """Canonical generation / editing requests (docs/upstream.md §10), each in its own language, left-padded.

    The same text as `NexusGenProcessor.image_prompt_inputs`, with the language chosen per prompt.

    Returns:
        the processor's `pad` dict: input_ids (B, L), attention_mask (B, L), pixel_values (P, patch_dim),
        image_grid_thw (I, 3).
    """
    prefixes = processor.answer_prefixes
    samples = []
    for index, prompt in enumerate(prompts):
        key = template_key(task, detect_language(prompt))
        language = key.split("_")[1]
        messages = image_request_messages(prompt, task, language)
        source = images[index:index + 1] if images else None
        samples.append(processor.encode(messages, source, add_generation_prompt=True,
                                        assistant_prefix=prefixes[key] + IMAGE_PLACEHOLDER))
    return processor.pad(samples, padding_side="left")


def fit_context(processor, attention_mask: torch.Tensor, max_new_tokens: int = 1, *, reserve: int = 0,
                indices: list[int] | None = None) -> int:
    """The answer budget that fits the model's context (`max_new_tokens`, cut where the longest prompt
    leaves less room). A prompt that leaves no room, for `reserve` more tokens (an answer image's N) and one
    generated token, is a ValueError naming it, raised before anything is generated.

    Args:
        processor: the model's `NexusGenProcessor` (its `context_length`).
        attention_mask: (B, L) of the encoded prompts (1 at real tokens).
        max_new_tokens: the asked budget (0: the caller generates no text, only `reserve` positions).
        reserve: positions the answer needs besides its text.
        indices: the prompts' numbers in the caller's batch, for the message (default 0..B-1).
    """
    context = processor.context_length
    if context is None:
        return max_new_tokens
    lengths = attention_mask.sum(-1).tolist()
    needed = reserve + min(max_new_tokens, 1)
    what = f"the {reserve} tokens of the answer's image" if reserve else "an answer"
    for index, length in zip(indices or range(len(lengths)), lengths, strict=True):
        if length + needed > context:
            raise ValueError(f"prompt {index} is {length} tokens long (its images included): with {what} it "
                             f"does not fit the model's context of {context} tokens; shorten it")
    return min(max_new_tokens, context - max(lengths) - reserve)


def same_shape_groups(samples: list[dict[str, torch.Tensor]]) -> list[tuple[list[int], dict[str, torch.Tensor]]]:
    """Single encoded requests -> one padding-free batch per shape: (indices, batch) pairs, in first-seen order.

    A shape is the token length and the input images' grids. Left padding would move a request's tokens and
    change the blocks its attention and matrix products sum over, so a padded request's numbers would
    depend on its batch; requests of one shape batch exactly (`nexusgen.models.batch_invariance`).

    Args:
        samples: per request, input_ids (1, L), attention_mask (1, L), pixel_values (P, patch_dim),
            image_grid_thw (I, 3), as the processor pads a single request.
    """
    groups: dict[tuple, list[int]] = {}
    for index, sample in enumerate(samples):
        key = (sample["input_ids"].shape[1], tuple(map(tuple, sample["image_grid_thw"].tolist())))
        groups.setdefault(key, []).append(index)
    return [(members, {name: torch.cat([samples[i][name] for i in members]) for name in samples[members[0]]})
            for members in groups.values()]


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) floats in [0, 1] -> B RGB PIL images (rounded to 8 bits)."""
    array = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    array = array.permute(0, 2, 3, 1).cpu().numpy()  # (B, H, W, 3)
    return [Image.fromarray(np.ascontiguousarray(a)) for a in array]
