"""Collation for the autoregressive model: message-format samples -> one padded, teacher-forced batch.

Understanding (input image + text answer), generation (assistant image target) and editing (input image
+ assistant image target) samples mix freely in one batch. Every image is sized by the preprocessing
rule of `nexusgen.processing.images` (targets: the output grid, centre-cropped; inputs: bounded, aspect
kept), the text by the chat template of `nexusgen.processing.templates`.

Labels follow upstream (docs/upstream.md §3.1): assistant text and its `<|im_end|>` are CE targets; assistant image
tokens carry the image token id (regression targets, excluded from CE by the model); everything else,
user images included, is -100. Sequences are padded on the right.
"""

from __future__ import annotations

import torch

from nexusgen.processing.processor import NexusGenProcessor


def collate_ar(samples: list[dict], tokenizer, image_processor, config, *,
               max_length: int | None = None) -> dict[str, torch.Tensor]:
    """Tokenize and pad a list of samples for `NexusGenARModel.training_loss`.

    Args:
        samples: dicts `{"messages": [{"role", "content"}, ...], "images": [PIL.Image, ...]}` with the
            images in `<image>` order (an `"id"` key, if present, is used in error messages).
        tokenizer: the model's tokenizer.
        image_processor: the model's `Qwen2VLImageProcessorPil`.
        config: the model's `ARConfig` (output image size, input pixel bounds, system prompt).
        max_length: raise if a sample is longer (sequences are never truncated: a cut would split an
            image span).

    Returns:
        input_ids (B, L) int64, attention_mask (B, L) int64, labels (B, L) int64, mm_token_type_ids
        (B, L) int32, pixel_values (P, patch_dim) float32, image_grid_thw (I, 3) int64 and
        image_is_target (I,) bool; images are ordered sample by sample, in `<image>` order.

    Raises:
        ValueError: empty batch, a malformed sample, image count mismatch, or a sample over max_length.
    """
    if not samples:
        raise ValueError("collate_ar: empty batch")
    processor = NexusGenProcessor(tokenizer, image_processor, config)
    encoded = []
    for index, sample in enumerate(samples):
        name = sample.get("id", f"#{index}") if isinstance(sample, dict) else f"#{index}"
        if not isinstance(sample, dict) or not isinstance(sample.get("messages"), list):
            raise ValueError(f"sample {name}: expected a dict with a 'messages' list")
        try:
            item = processor.encode(sample["messages"], sample.get("images") or [])
        except ValueError as err:
            raise ValueError(f"sample {name}: {err}") from err
        if max_length is not None and len(item.input_ids) > max_length:
            raise ValueError(f"sample {name}: {len(item.input_ids)} tokens > max_length {max_length}")
        encoded.append(item)
    return processor.pad(encoded, padding_side="right")
