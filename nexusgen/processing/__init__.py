"""Processing without torchvision: images (the one resize rule, every image mode), chat templates (EN/ZH),
tokenizers, and `NexusGenProcessor`, which turns conversations and PIL images into the autoregressive
model's inputs.

The names below are imported on first use: `nexusgen.processing.images` and `.templates` need only Pillow,
so the commands can read and check an image before torch loads (a bad input answers in milliseconds).
"""

from __future__ import annotations

import importlib

_LAZY = {
    "load_image": "images", "resize_bounded": "images", "resize_fixed": "images", "to_rgb": "images",
    "IGNORE_INDEX": "processor", "EncodedSample": "processor", "NexusGenProcessor": "processor",
    "CANONICAL_ANSWER_PREFIXES": "templates", "DEFAULT_SYSTEM_PROMPT": "templates",
    "IMAGE_PLACEHOLDER": "templates", "decode_with_image_markers": "templates", "render_chat": "templates",
    "user_text": "templates",
    "build_byte_tokenizer": "tokenizers", "build_qwen25_tokenizer": "tokenizers",
    "check_special_token_ids": "tokenizers", "load_tokenizer": "tokenizers", "special_token_ids": "tokenizers",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"nexusgen.processing.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'nexusgen.processing' has no attribute {name!r}")
