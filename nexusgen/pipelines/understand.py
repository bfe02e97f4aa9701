"""Image understanding (SPEC 1.3): image(s) + question -> text, stock Qwen2.5-VL chat generation.

Steps: validate -> encode (user turn `<image>\\n{question}` as in the training data, system prompt,
open assistant turn; images at the bounded input size) -> AR (greedy decoding with the KV cache via
`generate_interleaved`, image output banned) -> decode (text, special tokens skipped). The whole batch is
one left-padded generation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

from nexusgen.pipelines.inputs import as_batch, check_image, check_positive, check_prompts, to_device
from nexusgen.processing.templates import IMAGE_PLACEHOLDER


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
    first, then the question."""
    return [{"role": "user", "content": f"{IMAGE_PLACEHOLDER}\n" * num_images + prompt}]


class UnderstandPipeline:
    """Questions about images -> answers.

    Args:
        ar_model: `NexusGenARModel`.
        processor: its `ImageOnlyProcessor`.
        runtime: `Runtime`.
    """

    def __init__(self, ar_model, processor, runtime):
        self.ar_model, self.processor, self.runtime = ar_model, processor, runtime

    @torch.inference_mode()
    def __call__(self, *, image, prompt: str | list[str], max_new_tokens: int = 256) -> UnderstandOutput:
        """Answer each prompt about its image(s).

        Args:
            image: for a single prompt, a PIL image, a list of them, or None (text only); for a list of
                prompts, a list with one such entry per prompt.
            prompt: a question or a list of them.
            max_new_tokens: generation budget per answer.

        Returns:
            UnderstandOutput (lists, also for a single prompt).

        Raises:
            ValueError: empty prompt, bad image, mismatched counts, max_new_tokens < 1.
        """
        prompts, single = as_batch(prompt, "prompt", (str,))
        prompts = check_prompts(prompts)
        check_positive("max_new_tokens", max_new_tokens)
        per_prompt = [image] if single else image
        if not isinstance(per_prompt, (list, tuple)) or len(per_prompt) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts need a list of {len(prompts)} image entries, got "
                             f"{type(image).__name__}")
        images = [self._images(entry, index) for index, entry in enumerate(per_prompt)]
        conversations = [understanding_messages(p, len(ims)) for p, ims in zip(prompts, images, strict=True)]
        inputs = to_device(self.processor.chat_inputs(conversations, images), self.runtime.device)  # encode
        model = self.runtime.activate(self.ar_model)  # AR
        pixels = inputs["pixel_values"].to(self.runtime.dtype)
        out = model.generate_interleaved(inputs["input_ids"], inputs["attention_mask"], pixels,
                                         inputs["image_grid_thw"], max_new_tokens=max_new_tokens,
                                         max_images=0, tokenizer=self.processor.tokenizer)
        return UnderstandOutput(list(out.texts), [len(s) for s in out.sequences])  # decode

    @staticmethod
    def _images(entry, index: int) -> list[Image.Image]:
        if entry is None:
            return []
        entries = entry if isinstance(entry, (list, tuple)) else [entry]
        return [check_image(im, f"image {index}") for im in entries]
