"""Image understanding (docs/upstream.md §1.3): image(s) + question -> text, stock Qwen2.5-VL chat generation.

Steps: validate -> encode (user turn `<image>\\n{question}` as in the training data, system prompt, open
assistant turn; images at the bounded input size) -> AR (`models.text_generation.generate_text`: KV cache,
no per-token host round trips, greedy unless a temperature is given, image output banned) -> decode (text,
special tokens skipped). Questions of equal length and image grids share one generation (no padding), and
on the CPU each decoding step computes a question's numbers as a batch of one does
(`nexusgen.models.batch_invariance`), so an answer does not depend on the batch it is asked in.

As the official app: up to 1024 new tokens; a question without an image is answered as text; an empty
question about an image asks for its description (`DESCRIBE_PROMPT`, the app's wording).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

from nexusgen.models.batch_invariance import items_apart
from nexusgen.models.text_generation import generate_text
from nexusgen.pipelines.inputs import as_batch, batch_seeds, check_image, fit_context, same_shape_groups, to_device
from nexusgen.processing.templates import IMAGE_SLOT
from nexusgen.validation import (
    DEFAULT_MAX_NEW_TOKENS,
    check_max_new_tokens,
    check_prompts,
    check_sampling,
    check_seed,
)

DESCRIBE_PROMPT = "Please give a brief description of the image."
"""What the official app asks when the question about an image is empty."""


@dataclass
class UnderstandOutput:
    """Attributes:
        texts: one answer per prompt.
        num_new_tokens: generated tokens per answer (end-of-turn included when sampled).
    """

    texts: list[str]
    num_new_tokens: list[int]


def understanding_messages(prompt: str, num_images: int) -> list[dict]:
    """The user turn of a question about `num_images` images in the training data's layout: the images
    first, each on its own line, then the question (literal text: nothing typed in it places an image or a
    control token)."""
    return [{"role": "user", "content": [*[IMAGE_SLOT, "\n"] * num_images, prompt]}]


class UnderstandPipeline:
    """Questions about images -> answers.

    Args:
        ar_model: `NexusGenARModel`.
        processor: its `NexusGenProcessor`.
        runtime: `Runtime`.
    """

    def __init__(self, ar_model, processor, runtime):
        self.ar_model, self.processor, self.runtime = ar_model, processor, runtime

    @torch.inference_mode()
    def __call__(self, *, image, prompt: str | list[str], max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                 temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                 seed: int | list[int] = 0) -> UnderstandOutput:
        """Answer each prompt about its image(s).

        Args:
            image: for a single prompt, a PIL image, a list of them, or None (text only); for a list of
                prompts, a list with one such entry per prompt.
            prompt: a question or a list of them; "" with an image asks for the image's description.
            max_new_tokens: generation budget per answer (cut to what the model's context leaves).
            temperature: 0 (default) decodes greedily; above 0 samples at this temperature.
            top_k: when sampling, keep the k most likely tokens (0: all).
            top_p: when sampling, keep the smallest set of tokens with this much probability (1: all).
            seed: sampling seed; answer b of a list draws from its own generator seeded with seed + b, or
                seed[b] for a list of seeds.

        Returns:
            UnderstandOutput (lists, also for a single prompt).

        Raises:
            ValueError: empty prompt without an image, bad image, mismatched counts, bad settings, a prompt
                past the model's context.
        """
        prompts, single = as_batch(prompt, "prompt", (str,))
        check_max_new_tokens(max_new_tokens)
        check_sampling(temperature, top_k, top_p)
        seed = check_seed(seed, len(prompts))
        per_prompt = [image] if single else image
        if not isinstance(per_prompt, (list, tuple)) or len(per_prompt) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts need a list of {len(prompts)} image entries, got "
                             f"{type(image).__name__}")
        images = [self._images(entry, index) for index, entry in enumerate(per_prompt)]
        prompts = check_prompts([DESCRIBE_PROMPT if isinstance(p, str) and not p.strip() and ims else p
                                 for p, ims in zip(prompts, images, strict=True)])
        seeds = batch_seeds(seed, len(prompts))
        samples = [self.processor.chat_inputs([understanding_messages(p, len(ims))], [ims])
                   for p, ims in zip(prompts, images, strict=True)]  # encode
        groups = same_shape_groups(samples)
        # each group's budget: what its own length leaves (the length a question has alone)
        budgets = [fit_context(self.processor, batch["attention_mask"], max_new_tokens, indices=members)
                   for members, batch in groups]
        model = self.runtime.activate(self.ar_model)  # AR
        sequences: list[torch.Tensor | None] = [None] * len(prompts)
        for (members, batch), budget in zip(groups, budgets, strict=True):
            inputs = to_device(batch, self.runtime.device)
            # one generator per answer, on the device: answer b's tokens do not depend on its batch, and drawing
            # them needs no host round trip
            generator = [torch.Generator(self.runtime.device).manual_seed(seeds[b]) for b in members] \
                if temperature > 0 else None
            with items_apart([model], len(members), skip=[model.vlm.model.visual]):
                out = generate_text(model, inputs["input_ids"], inputs["attention_mask"],
                                    inputs["pixel_values"].to(self.runtime.dtype), inputs["image_grid_thw"],
                                    max_new_tokens=budget, do_sample=temperature > 0,
                                    temperature=temperature or 1.0, top_k=top_k, top_p=top_p, generator=generator)
            for index, sequence in zip(members, out.sequences, strict=True):
                sequences[index] = sequence
        texts = [self.processor.decode_answer(s) for s in sequences]  # decode
        return UnderstandOutput(texts, [len(s) for s in sequences])

    @staticmethod
    def _images(entry, index: int) -> list[Image.Image]:
        if entry is None:
            return []
        entries = entry if isinstance(entry, (list, tuple)) else [entry]
        return [check_image(im, f"image {index}") for im in entries]
