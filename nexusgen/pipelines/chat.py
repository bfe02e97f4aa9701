"""Multi-turn chat with interleaved text and images in and out.

A conversation is a list of `{"role": "system"|"user"|"assistant", "content": ...}` where content is a
string or a list of parts, each a string or a PIL image (an image in a user turn is an input; in an
assistant turn, an image the model produced earlier). The answer may hold images: the AR model opens
one with `<|vision_start|>`, its N positions are filled in one step with the prefill table
(`generate_interleaved`), and every predicted image is decoded to PIL with the generation decoder.

A user turn's images come first, then its text, in the official layouts the model was trained on:
`<image>\n{question}` to ask about an image, `<image> {instruction}` to edit it (the separator after an
image is chosen from the text: `nexusgen.processing.templates.join_image_text`). Text is literal: a typed
special token is text; `<image>` in text is refused, because a reply marks its own images with it and is
sent back as the next turn's history.

Steps: validate -> encode -> AR (KV-cached generation for the whole batch) -> denoise -> decode (all
images of all answers in one decoder batch). Conversation b has the seed `seed + b` (or `seed[b]` for a
list of seeds); image k of its answer is seeded with that + `IMAGE_SEED_STRIDE * k` (wrapping within the
generators' 64-bit range), and with
`temperature > 0` its tokens are sampled from a generator of its own seeded with it, so an answer does
not depend on the batch it is in. Greedy decoding (`temperature` 0, the default) ignores the seed for the
text. A model without a generation decoder, or `image_output=False`, answers in text only (image output
is banned).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from PIL import Image

from nexusgen.pipelines.generate import GeneratePipeline, image_settings
from nexusgen.pipelines.inputs import batch_seeds, check_image, fit_context, to_device, to_pil
from nexusgen.pipelines.predict import negative_kwargs
from nexusgen.processing.templates import IMAGE_PLACEHOLDER, IMAGE_SLOT, join_image_text
from nexusgen.validation import check_max_new_tokens, check_sampling, check_text, offset_seed

ROLES = ("system", "user", "assistant")
IMAGE_SEED_STRIDE = 1_000_003
"""Seed offset between the images of one answer (large, so it never meets another answer's seed)."""


@dataclass
class ChatReply:
    """Attributes:
        text: the answer, with `<image>` where each image stands.
        images: the decoded images, in order.
        message: `{"role": "assistant", "content": [parts]}`, ready to append to the conversation.
    """

    text: str
    images: list[Image.Image] = field(default_factory=list)
    message: dict = field(default_factory=dict)


@dataclass
class ChatOutput:
    """Attributes:
        replies: one `ChatReply` per conversation.
    """

    replies: list[ChatReply]


def flatten_conversation(messages: list[dict], index: int = 0) -> tuple[list[dict], list[Image.Image]]:
    """Parts-style messages -> messages of content parts (text, `IMAGE_SLOT`) and the images in order.

    A user turn's images and text are joined in the official layouts (`join_image_text`).

    Raises:
        ValueError: not a list of role/content dicts, a literal `<image>` in text, text that is not valid
            Unicode, a bad image, or a conversation that does not end with a user turn.
    """
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"conversation {index} must be a non-empty list of messages")
    flat, images = [], []
    for turn, message in enumerate(messages):
        where = f"conversation {index}, message {turn}"
        if not isinstance(message, dict) or set(message) - {"role", "content"}:
            raise ValueError(f"{where}: expected {{'role', 'content'}}, got {message!r}")
        role = message.get("role")
        if role not in ROLES:
            raise ValueError(f"{where}: unknown role {role!r}; expected one of {ROLES}")
        content = message.get("content")
        parts = [content] if isinstance(content, (str, Image.Image)) else content
        if not isinstance(parts, list):
            raise ValueError(f"{where}: content must be a string, an image or a list")
        out: list = []
        for part in parts:
            if isinstance(part, str):
                if IMAGE_PLACEHOLDER in check_text(part, f"{where} text"):
                    raise ValueError(f"{where}: pass images as PIL parts, not {IMAGE_PLACEHOLDER} in the text "
                                     f"(a reply marks its own images with {IMAGE_PLACEHOLDER})")
                out.append(part)
            else:
                images.append(check_image(part, f"{where} image"))
                out.append(IMAGE_SLOT)
        flat.append({"role": role, "content": join_image_text(out) if role == "user" else out})
    if flat[-1]["role"] != "user":
        raise ValueError(f"conversation {index} must end with a user message, got {flat[-1]['role']!r}")
    if not any(isinstance(p, str) and p.strip() for m in flat if m["role"] == "user" for p in m["content"]):
        raise ValueError(f"conversation {index} has no user text")
    return flat, images


def sampling_kwargs(temperature: float, top_p: float, seeds: list[int]) -> dict:
    """`generate_interleaved` arguments: greedy for temperature 0, else sampling with one generator per
    row seeded with that row's seed."""
    if temperature == 0:
        return {}
    generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    return {"do_sample": True, "temperature": float(temperature), "top_p": float(top_p), "generator": generators}


class ChatPipeline:
    """Conversations -> interleaved text + image answers.

    Args:
        ar_model: `NexusGenARModel`.
        processor: its `NexusGenProcessor`.
        runtime: `Runtime`.
        generation: the model's `GeneratePipeline` (decodes answer images), or None for text only.
        config: the model's `NexusGenConfig`.
        negative: stored T5 negative embeddings, or None.
    """

    def __init__(self, ar_model, processor, runtime, generation: GeneratePipeline | None, config,
                 negative: dict | None = None):
        self.ar_model, self.processor, self.runtime = ar_model, processor, runtime
        self.generation, self.config, self.negative = generation, config, negative

    @torch.inference_mode()
    def __call__(self, *, messages: list, max_new_tokens: int = 256, height: int | None = None,
                 width: int | None = None, num_steps: int | None = None, guidance_scale: float | None = None,
                 seed: int | list[int] = 0, image_output: bool = True, temperature: float = 0.0,
                 top_p: float = 1.0, progress: bool | None = None) -> ChatOutput:
        """Answer each conversation.

        Args:
            messages: one conversation (a list of message dicts) or a list of conversations.
            max_new_tokens: generation budget per answer (an image block counts N + 2 tokens; cut to what the
                model's context leaves).
            height, width, num_steps, guidance_scale, progress: image settings, as `GeneratePipeline`.
            seed: conversation b uses `seed + b`, or `seed[b]` for a list (one per conversation).
            image_output: False bans images from the answers (text only).
            temperature: 0 decodes greedily; > 0 samples at this temperature.
            top_p: nucleus sampling mass in (0, 1] when sampling (1 = off).

        Returns:
            ChatOutput with one reply per conversation.

        Raises:
            ValueError: malformed conversations or settings.
        """
        conversations = [messages] if messages and isinstance(messages[0], dict) else messages  # validate
        if not isinstance(conversations, list) or not conversations:
            raise ValueError("messages must be a conversation (list of dicts) or a list of conversations")
        check_max_new_tokens(max_new_tokens)
        check_sampling(temperature, 0, top_p)
        settings = image_settings(self.config, height=height, width=width, num_steps=num_steps,
                                  guidance_scale=guidance_scale, seed=seed, count=len(conversations))
        # one seed per conversation (a list: each its own), not per image: answers hold any number of
        # images, so image k of conversation b is seeded with seeds[b] + IMAGE_SEED_STRIDE * k
        if isinstance(settings.seed, tuple) and len(settings.seed) != len(conversations):
            raise ValueError(f"{len(settings.seed)} seeds for {len(conversations)} conversations: chat takes one "
                             "seed per conversation, or one int")
        seeds = batch_seeds(settings.seed, len(conversations))
        flat = [flatten_conversation(c, i) for i, c in enumerate(conversations)]
        inputs = self.processor.chat_inputs([m for m, _ in flat], [ims for _, ims in flat])  # encode
        max_new_tokens = fit_context(self.processor, inputs["attention_mask"], max_new_tokens)
        inputs = to_device(inputs, self.runtime.device)
        model = self.runtime.activate(self.ar_model)  # AR
        pixels = inputs["pixel_values"].to(self.runtime.dtype)
        out = model.generate_interleaved(inputs["input_ids"], inputs["attention_mask"], pixels,
                                         inputs["image_grid_thw"], max_new_tokens=max_new_tokens,
                                         max_images=None if self.generation is not None and image_output else 0,
                                         **sampling_kwargs(temperature, top_p, seeds))
        texts = [self.processor.decode_answer(s) for s in out.sequences]
        pictures = self._decode_images(out.image_embeds, settings, seeds, progress)  # denoise, decode
        return ChatOutput([self._reply(t, images) for t, images in zip(texts, pictures, strict=True)])

    def _decode_images(self, image_embeds: list[list[torch.Tensor]], settings, seeds: list[int],
                       progress) -> list[list[Image.Image]]:
        jobs = [(b, k) for b, row in enumerate(image_embeds) for k in range(len(row))]
        pictures: list[list[Image.Image]] = [[] for _ in image_embeds]
        if not jobs:
            return pictures
        embeds = torch.stack([image_embeds[b][k] for b, k in jobs])  # (J, N, D)
        image_seeds = [offset_seed(seeds[b], IMAGE_SEED_STRIDE * k) for b, k in jobs]
        negative = negative_kwargs(self.config, self.negative, settings.guidance_scale)
        images = to_pil(self.generation.decode(embeds, settings, image_seeds, negative, progress))
        for (b, _), image in zip(jobs, images, strict=True):
            pictures[b].append(image)
        return pictures

    @staticmethod
    def _reply(text: str, images: list[Image.Image]) -> ChatReply:
        pieces = text.split(IMAGE_PLACEHOLDER)
        parts: list = []
        for k, piece in enumerate(pieces):
            if piece:
                parts.append(piece)
            if k < len(images):
                parts.append(images[k])
        return ChatReply(text, images, {"role": "assistant", "content": parts})
