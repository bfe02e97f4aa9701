"""`NexusGenProcessor`: conversations (chat text) + PIL images -> the autoregressive model's inputs.

transformers' `Qwen2_5_VLProcessor` cannot be built without torchvision (its video slot), so this small
class does the same job for text and images (no video), with the PIL image processor (`Qwen2VLImageProcessorPil`):
render the chat (templates.py), size every image by the one preprocessing rule (images.py), tokenize,
and repeat each `<|image_pad|>` once per image token ((h / token_px) * (w / token_px) for an h x w image).

Settings come from the model's config (an `ARConfig`, duck-typed here so that processing never imports
models): `output_image_px` (H, W) of generation targets, `max_input_pixels` / `min_input_pixels` of
input images, `system_prompt`, `answer_prefixes` (None: the canonical templates, `model_templates`).

Batches are padded on the left for inference (every prompt ends at the last column, where generation
continues) and on the right for training (collate_ar).

Shapes: B batch, L sequence length, P image patches (rows of `patch_dim` = 3 * 2 * patch^2 values),
I images in the batch in order of appearance (row by row).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from PIL import Image

from nexusgen.processing.images import resize_bounded, resize_fixed
from nexusgen.processing.templates import (
    IMAGE_PLACEHOLDER,
    decode_with_image_markers,
    image_request_messages,
    model_templates,
    render_chat,
    template_key,
)
from nexusgen.processing.tokenizers import special_token_ids

IGNORE_INDEX = -100


@dataclass
class EncodedSample:
    """One tokenized conversation (lists, unpadded).

    Attributes:
        input_ids: token ids with `<|image_pad|>` repeated per image token.
        labels: id where the token is a training target, else -100 (assistant image tokens keep the
            image token id: they are regression targets, excluded from CE by the model).
        pixel_values: (P, patch_dim) float32, or None without images.
        image_grid_thw: (I, 3) int64 patch grids, in order of appearance.
        image_is_target: (I,) bool, True for assistant (generated) images.
    """

    input_ids: list[int]
    labels: list[int]
    pixel_values: torch.Tensor | None = None
    image_grid_thw: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 3, dtype=torch.long))
    image_is_target: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.bool))


class NexusGenProcessor:
    """Qwen2.5-VL text + image processing without torchvision.

    Args:
        tokenizer: a Qwen2 tokenizer holding the Qwen2.5-VL special tokens.
        image_processor: a `Qwen2VLImageProcessorPil` (its patch and merge sizes define `token_px`).
        config: the model's `ARConfig` (or any object with the attributes listed in the module docstring).
    """

    def __init__(self, tokenizer, image_processor, config):
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.config = config
        self.system_prompt, self.answer_prefixes = model_templates(config)
        self.ids = special_token_ids(tokenizer)
        self.control_ids: dict[str, int] = {}
        self.merge_size = int(image_processor.merge_size)
        self.token_px = int(image_processor.patch_size) * self.merge_size
        height, width = config.output_image_px
        if height % self.token_px or width % self.token_px:
            raise ValueError(f"output_image_px {config.output_image_px} is not a multiple of the "
                             f"{self.token_px}-px token of the image processor")

    @property
    def context_length(self) -> int | None:
        """The model's context in tokens (its LLM's `max_position_embeddings`: prompt and answer must fit);
        None for a config that states none."""
        qwen = getattr(self.config, "qwen_config", None)
        length = getattr(getattr(qwen, "text_config", qwen), "max_position_embeddings", None)
        return None if length is None else int(length)

    # -- images -------------------------------------------------------------------------------------
    def prepare_image(self, image: Image.Image, is_target: bool) -> Image.Image:
        """Apply the preprocessing rule: fixed output size for targets, bounded size for inputs."""
        if is_target:
            return resize_fixed(image, tuple(self.config.output_image_px))
        cfg = self.config
        return resize_bounded(image, self.token_px, cfg.max_input_pixels, cfg.min_input_pixels)

    def process_images(self, images: list[Image.Image], is_target: list[bool]) -> dict[str, torch.Tensor]:
        """Images -> {"pixel_values": (P, patch_dim) float32, "image_grid_thw": (I, 3) int64}."""
        prepared = [self.prepare_image(im, t) for im, t in zip(images, is_target, strict=True)]
        out = self.image_processor(images=prepared, do_resize=False, return_tensors="pt")
        return {"pixel_values": out["pixel_values"].float(), "image_grid_thw": out["image_grid_thw"].long()}

    def process_references(self, images: list[Image.Image],
                           size_hw: tuple[int, int] | None) -> dict[str, torch.Tensor]:
        """Source images as the editing decoder's reference, like `process_images`.

        At `size_hw` (the fixed-slot rule: centre-crop + resize) when given, else at the bounded input
        size the AR model sees. Training and inference both call this, so the reference grid a decoder
        learns on is the one it is used with.
        """
        if size_hw is None:
            return self.process_images(images, [False] * len(images))
        prepared = [resize_fixed(im, tuple(size_hw)) for im in images]
        out = self.image_processor(images=prepared, do_resize=False, return_tensors="pt")
        return {"pixel_values": out["pixel_values"].float(), "image_grid_thw": out["image_grid_thw"].long()}

    # -- conversations ------------------------------------------------------------------------------
    def encode(self, messages: list[dict], images: list[Image.Image] | None = None, *,
               add_generation_prompt: bool = False, assistant_prefix: str = "") -> EncodedSample:
        """Tokenize one conversation in the official message format.

        Args:
            messages: `[{"role", "content"}, ...]`; `<image>` in a user turn is an input image, in an
                assistant turn a generation target.
            images: PIL images in `<image>` order.
            add_generation_prompt: open an assistant turn at the end (inference).
            assistant_prefix: start of the open assistant turn; ending it with `<image>` leaves the
                sequence ending in `<|vision_start|>`, ready for image prediction.

        Raises:
            ValueError: image count differs from the number of `<image>` placeholders.
        """
        images = list(images or [])
        chat = render_chat(messages, system_prompt=self.system_prompt, add_generation_prompt=add_generation_prompt,
                           assistant_prefix=assistant_prefix)
        if len(chat.image_roles) != len(images):
            raise ValueError(f"{len(chat.image_roles)} {IMAGE_PLACEHOLDER} placeholders but {len(images)} "
                             "images")
        is_target = [role == "assistant" for role in chat.image_roles]
        sample = EncodedSample(input_ids=[], labels=[])
        counts: list[int] = []
        if images:
            vision = self.process_images(images, is_target)
            sample.pixel_values, sample.image_grid_thw = vision["pixel_values"], vision["image_grid_thw"]
            sample.image_is_target = torch.tensor(is_target, dtype=torch.bool)
            counts = (sample.image_grid_thw.prod(-1) // self.merge_size**2).tolist()
        self._tokenize_into(sample, chat, counts)
        return sample

    def _tokenize_into(self, sample: EncodedSample, chat, counts: list[int]) -> None:
        """Tokenize the rendered segments: text with special-token parsing off (a typed `<|im_end|>` stays
        text), control segments as their one token each."""
        texts = [segment.text for segment in chat.segments if not segment.control]
        batch = self.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True,
                               split_special_tokens=True) if texts else {"input_ids": [], "offset_mapping": []}
        encoded = iter(zip(batch["input_ids"], batch["offset_mapping"], strict=True))
        image_index, position = 0, 0
        for segment in chat.segments:
            if segment.control:
                tokens = [(self._control_id(segment.text), 0)]
            else:
                ids, offsets = next(encoded)
                tokens = [(token, start) for token, (start, _) in zip(ids, offsets, strict=True)]
            for token, start in tokens:
                trainable = any(a <= position + start < b for a, b in chat.trainable_spans)
                label = token if trainable else IGNORE_INDEX
                repeat = 1
                if segment.control and token == self.ids["image_pad"]:
                    repeat = counts[image_index]
                    image_index += 1
                sample.input_ids += [token] * repeat
                sample.labels += [label] * repeat
            position += len(segment.text)
        if image_index != len(counts):
            raise ValueError(f"the text holds {image_index} image tokens for {len(counts)} images")

    def _control_id(self, token: str) -> int:
        token_id = self.control_ids.get(token)
        if token_id is None:
            token_id = self.control_ids[token] = int(self.tokenizer.convert_tokens_to_ids(token))
        return token_id

    def pad(self, samples: list[EncodedSample], padding_side: str = "left") -> dict[str, torch.Tensor]:
        """Pad encoded samples into one batch.

        Returns:
            input_ids (B, L) int64, attention_mask (B, L) int64, labels (B, L) int64,
            mm_token_type_ids (B, L) int32 (1 at image tokens: required for 3-D M-RoPE in transformers
            5.x), pixel_values (P, patch_dim) float32 (P = 0 without images), image_grid_thw (I, 3)
            int64 and image_is_target (I,) bool, images ordered row by row.
        """
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        length = max(len(s.input_ids) for s in samples)
        ids = torch.full((len(samples), length), self.ids["pad"], dtype=torch.long)
        labels = torch.full_like(ids, IGNORE_INDEX)
        mask = torch.zeros_like(ids)
        for row, s in enumerate(samples):
            n = len(s.input_ids)
            cols = slice(length - n, length) if padding_side == "left" else slice(0, n)
            ids[row, cols] = torch.tensor(s.input_ids)
            labels[row, cols] = torch.tensor(s.labels)
            mask[row, cols] = 1
        pixels = [s.pixel_values for s in samples if s.pixel_values is not None]
        patch_dim = self._patch_dim()
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "labels": labels,
            "mm_token_type_ids": ((ids == self.ids["image_pad"]) & (mask == 1)).int(),
            "pixel_values": torch.cat(pixels) if pixels else torch.zeros(0, patch_dim),
            "image_grid_thw": torch.cat([s.image_grid_thw for s in samples]),
            "image_is_target": torch.cat([s.image_is_target for s in samples]),
        }

    def _patch_dim(self) -> int:
        ip = self.image_processor
        return 3 * int(ip.temporal_patch_size) * int(ip.patch_size) ** 2

    # -- inference builders -------------------------------------------------------------------------
    def image_prompt_inputs(self, prompts: str | list[str], images: list[Image.Image] | None = None, *,
                            language: str = "en", task: str = "generate") -> dict[str, torch.Tensor]:
        """Canonical generation / editing prompts -> left-padded inputs for `predict_image_embeds`.

        Each sequence is: system turn, user turn (template of docs/upstream.md §4.1), assistant turn opened with the
        canonical answer prefix (with its trailing space in English) and `<|vision_start|>`.

        Args:
            prompts: one description / instruction or a list of them.
            images: for task "edit", one source image per prompt.
            language: "en" or "zh".
            task: "generate" or "edit".

        Returns:
            input_ids (B, L), attention_mask (B, L), pixel_values (P, patch_dim) and image_grid_thw (I, 3)
            of the source images (P = I = 0 for generation): `model.predict_image_embeds(**inputs)`.

        Raises:
            ValueError: empty prompt, wrong number of images, unknown task or language.
        """
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            raise ValueError("no prompts given")
        key = template_key(task, language)
        images = list(images or [])
        expected = len(prompts) if task == "edit" else 0
        if len(images) != expected:
            raise ValueError(f"task {task!r} needs {expected} images for {len(prompts)} prompts, "
                             f"got {len(images)}")
        prefix = self.answer_prefixes[key] + IMAGE_PLACEHOLDER
        samples = [self.encode(image_request_messages(p, task, language), images[i:i + 1] if images else None,
                               add_generation_prompt=True, assistant_prefix=prefix)
                   for i, p in enumerate(prompts)]
        return _model_inputs(self.pad(samples, padding_side="left"))

    def decode_answer(self, token_ids) -> str:
        """Generated ids -> text, each image span `<|vision_start|> ... <|vision_end|>` written `<image>`."""
        return decode_with_image_markers(self.tokenizer, token_ids, self.ids["vision_start"], self.ids["vision_end"])

    def chat_inputs(self, conversations: list[list[dict]], images: list[list[Image.Image]] | None = None, *,
                    assistant_prefix: str = "") -> dict[str, torch.Tensor]:
        """Conversations (each ending with a user turn) -> left-padded inputs for `generate_interleaved`.

        Args:
            conversations: a list of message lists.
            images: per conversation, its images in `<image>` order.
            assistant_prefix: forced start of every answer (end it with `<image>` to force an image).

        Returns:
            input_ids, attention_mask, pixel_values, image_grid_thw: `model.generate_interleaved(**inputs)`.
        """
        images = images or [[] for _ in conversations]
        if len(images) != len(conversations):
            raise ValueError(f"{len(conversations)} conversations but {len(images)} image lists")
        samples = [self.encode(m, im, add_generation_prompt=True, assistant_prefix=assistant_prefix)
                   for m, im in zip(conversations, images, strict=True)]
        return _model_inputs(self.pad(samples, padding_side="left"))


def _model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inference keys of a padded batch (the model derives image-token types from the ids itself)."""
    return {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw")}


def build_image_processor(*, patch_size: int, merge_size: int, temporal_patch_size: int = 2,
                          min_pixels: int, max_pixels: int):
    """A `Qwen2VLImageProcessorPil` (no torchvision) for a given patch geometry and pixel bounds.

    Its own resize is never used by nexusgen (`do_resize=False`; images are sized by images.py), but the
    bounds are stored so that a saved folder also works with stock transformers.
    """
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(patch_size=patch_size, merge_size=merge_size,
                                    temporal_patch_size=temporal_patch_size, min_pixels=min_pixels,
                                    max_pixels=max_pixels)


def build_image_prompt_inputs(prompts: str | list[str], tokenizer, image_processor, config,
                              images: list[Image.Image] | None = None, *, language: str = "en",
                              task: str = "generate") -> dict[str, torch.Tensor]:
    """(prompts, optional source images, "en"/"zh", "generate"/"edit") -> inputs of `predict_image_embeds`.

    The exact canonical text of docs/upstream.md §10 (system turn, user template, answer prefix with its trailing
    space, `<|vision_start|>`); see `NexusGenProcessor.image_prompt_inputs`.

    Example:
        >>> inputs = build_image_prompt_inputs("a red circle", tokenizer, image_processor, model.config)
        >>> embeds = model.predict_image_embeds(inputs["input_ids"], inputs["attention_mask"])  # (1, N, D)
    """
    processor = NexusGenProcessor(tokenizer, image_processor, config)
    return processor.image_prompt_inputs(prompts, images, language=language, task=task)
