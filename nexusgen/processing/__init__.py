"""Processing without torchvision: images (the one resize rule), chat templates (EN/ZH), tokenizers,
and `NexusGenProcessor`, which turns conversations and PIL images into the autoregressive model's inputs."""

from nexusgen.processing.images import load_image, resize_bounded, resize_fixed, to_rgb
from nexusgen.processing.processor import IGNORE_INDEX, EncodedSample, NexusGenProcessor
from nexusgen.processing.templates import (
    CANONICAL_ANSWER_PREFIXES,
    DEFAULT_SYSTEM_PROMPT,
    IMAGE_PLACEHOLDER,
    decode_with_image_markers,
    render_chat,
    user_text,
)
from nexusgen.processing.tokenizers import (
    build_byte_tokenizer,
    build_qwen25_tokenizer,
    check_special_token_ids,
    load_tokenizer,
    special_token_ids,
)

__all__ = [
    "CANONICAL_ANSWER_PREFIXES", "DEFAULT_SYSTEM_PROMPT", "IGNORE_INDEX", "IMAGE_PLACEHOLDER",
    "EncodedSample", "NexusGenProcessor", "build_byte_tokenizer", "build_qwen25_tokenizer",
    "check_special_token_ids", "decode_with_image_markers", "load_image", "load_tokenizer",
    "render_chat", "resize_bounded", "resize_fixed", "special_token_ids", "to_rgb", "user_text",
]
