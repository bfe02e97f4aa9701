"""Text-to-image generation (docs/upstream.md §1.3): prompt -> AR image embeddings (one pass) -> generation decoder.

Steps, always in this order: validate -> encode (canonical template, language per prompt) -> AR
(`predict_image_embeds`, one forward pass for the whole batch) -> denoise (one decoder batch,
`nexusgen.flow.generate_latents`) -> decode (`nexusgen.models.vae.latents_to_images`). Sample b is
seeded with `seed + b` (or its own seed), and on the CPU every step computes a prompt's numbers as a batch of
one does (`nexusgen.models.batch_invariance`), so a prompt gives the same image alone or in any batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

from nexusgen.flow.sampler import generate_latents
from nexusgen.models.batch_invariance import items_apart
from nexusgen.models.vae import latent_size, latents_to_images
from nexusgen.pipelines.inputs import as_batch, batch_seeds, check_embeds, to_pil
from nexusgen.pipelines.predict import negative_kwargs, predict_embeds
from nexusgen.validation import check_guidance, check_output_size, check_prompts, check_seed, check_steps


@dataclass
class GenerateOutput:
    """Attributes:
        images: one RGB image per prompt.
        image_embeds: (B, N, D) float32 CPU predicted embeddings that conditioned the decoder.
        seeds: the noise seed of each image.
    """

    images: list[Image.Image]
    image_embeds: torch.Tensor
    seeds: list[int]


@dataclass
class ImageSettings:
    """Validated sampling settings of one call (defaults from the model config)."""

    height: int
    width: int
    num_steps: int
    guidance_scale: float
    seed: int | tuple[int, ...]


def image_settings(config, *, height, width, num_steps, guidance_scale, seed, count: int = 1,
                   edit: bool = False) -> ImageSettings:
    """Fill defaults from `config.sampling` and check every value by the rules of `nexusgen.validation`
    (ValueError names the bad one); `seed` must serve `count` images."""
    sampling = config.sampling
    default_scale = sampling.edit_guidance_scale if edit else sampling.guidance_scale
    default_steps = (sampling.edit_num_steps or sampling.num_steps) if edit else sampling.num_steps
    height, width = check_output_size(sampling.height if height is None else height,
                                      sampling.width if width is None else width)
    return ImageSettings(height=height, width=width,
                         num_steps=check_steps(default_steps if num_steps is None else num_steps),
                         guidance_scale=check_guidance(default_scale if guidance_scale is None else guidance_scale),
                         seed=check_seed(seed, count))


class GeneratePipeline:
    """Prompts -> images with the generation decoder.

    Args:
        ar_model: `NexusGenARModel`.
        processor: its `NexusGenProcessor`.
        decoder: `GenerationDecoder`.
        vae: diffusers `AutoencoderKL`.
        config: the model's `NexusGenConfig` (sampling defaults, negative branch).
        runtime: `Runtime` (device, dtype, residency, progress).
        negative: stored T5 negative embeddings for the "t5" negative branch, or None.
    """

    def __init__(self, ar_model, processor, decoder, vae, config, runtime, negative: dict | None = None):
        self.ar_model, self.processor, self.decoder, self.vae = ar_model, processor, decoder, vae
        self.config, self.runtime, self.negative = config, runtime, negative

    @torch.inference_mode()
    def __call__(self, *, prompt: str | list[str], height: int | None = None, width: int | None = None,
                 num_steps: int | None = None, guidance_scale: float | None = None, seed: int | list[int] = 0,
                 progress: bool | None = None) -> GenerateOutput:
        """Generate one image per prompt.

        Args:
            prompt: a description or a list of them (English or Chinese, detected per prompt).
            height, width: output size in pixels, multiples of 16 (others are refused); default the model's.
            num_steps: Euler steps; default the model's.
            guidance_scale: true CFG scale; default the model's (1 = no negative branch).
            seed: image b uses noise seed `seed + b`; or a list with each image's seed.
            progress: show a progress bar (default: when stderr is a terminal).

        Returns:
            GenerateOutput (lists, also for a single prompt).

        Raises:
            ValueError: empty prompt, bad size / steps / scale / seed, or a scale the model cannot do.
        """
        prompts = check_prompts(as_batch(prompt, "prompt", (str,))[0])  # validate
        settings = image_settings(self.config, height=height, width=width, num_steps=num_steps,
                                  guidance_scale=guidance_scale, seed=seed, count=len(prompts))
        negative = negative_kwargs(self.config, self.negative, settings.guidance_scale)
        # encode, AR
        embeds = predict_embeds(self.ar_model, self.processor, self.runtime, prompts, "generate",
                                prefetch=(self.decoder, self.vae))
        seeds = batch_seeds(settings.seed, len(prompts))
        images = self.decode(embeds, settings, seeds, negative, progress)  # denoise, decode
        return GenerateOutput(to_pil(images), embeds.float().cpu(), seeds)

    @torch.inference_mode()
    def decode_images(self, image_embeds: torch.Tensor, *, height: int | None = None, width: int | None = None,
                      num_steps: int | None = None, guidance_scale: float | None = None, seed: int | list[int] = 0,
                      progress: bool | None = None) -> list[Image.Image]:
        """Validated (B, N, D) embeddings -> B images, with the settings and seeds of `__call__`."""
        check_embeds(image_embeds, None, self.config.num_output_tokens,
                     self.ar_model.config.qwen_config.text_config.hidden_size)
        settings = image_settings(self.config, height=height, width=width, num_steps=num_steps,
                                  guidance_scale=guidance_scale, seed=seed, count=image_embeds.shape[0])
        negative = negative_kwargs(self.config, self.negative, settings.guidance_scale)
        seeds = batch_seeds(settings.seed, image_embeds.shape[0])
        embeds = image_embeds.to(self.runtime.device, self.runtime.dtype)
        return to_pil(self.decode(embeds, settings, seeds, negative, progress))

    def decode(self, embeds: torch.Tensor, settings: ImageSettings, seeds: list[int], negative: dict,
               progress: bool | None = None) -> torch.Tensor:
        """(B, N, D) embeddings -> (B, 3, H, W) images in [0, 1] with the generation decoder."""
        decoder = self.runtime.activate(self.decoder)
        vae = self.runtime.place(self.vae)
        size = latent_size(vae, settings.height, settings.width)
        with self.runtime.progress_bar(settings.num_steps, "generating", progress) as callback, \
                items_apart([decoder], embeds.shape[0]):
            latents = generate_latents(decoder, embeds.to(self.runtime.dtype), size, num_steps=settings.num_steps,
                                       guidance_scale=settings.guidance_scale, seed=seeds, progress=callback,
                                       shift=self.config.sampling.shift, **negative)
        return latents_to_images(vae, latents)
