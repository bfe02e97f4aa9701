"""Instruction-based editing (docs/upstream.md §1.3): source image + instruction -> edited image.

Steps: validate -> encode (`<image> {instruction}` template, language per prompt; the source at the
bounded input size) -> AR (predicted target embeddings, one pass for the batch) -> denoise -> decode.

* `decoder="editing"` (default): the editing decoder is conditioned on [predicted target ; reference],
  the reference being the AR model's own `encode_images` of the source at the editing reference grid
  (`NexusGenConfig.reference_image_px`; None: the bounded input size). Sources whose reference grids
  differ are denoised in one decoder batch per grid.
* `decoder="generation"`: the generation decoder on the predicted embeddings only; the source reaches
  the output through the AR model alone (upstream's advice for large "conceptual" edits).

The output size is the requested one (default the model's), whatever the source's aspect ratio, as
upstream. Sample b is seeded with `seed + b` (or its own seed); on the CPU an edit gives the same image alone
or in any batch (`nexusgen.models.batch_invariance`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

from nexusgen.flow.sampler import edit_latents
from nexusgen.models.batch_invariance import items_apart
from nexusgen.models.vae import latent_size, latents_to_images
from nexusgen.pipelines.generate import GeneratePipeline, ImageSettings, image_settings
from nexusgen.pipelines.inputs import as_batch, batch_seeds, check_embeds, check_image, to_pil
from nexusgen.pipelines.predict import negative_kwargs, predict_embeds, reference_embeds
from nexusgen.validation import check_prompts

DECODERS = ("editing", "generation")


@dataclass
class EditOutput:
    """Attributes:
        images: one edited RGB image per source.
        image_embeds: (B, N, D) float32 CPU predicted target embeddings.
        seeds: the noise seed of each image.
        decoder: "editing" or "generation".
    """

    images: list[Image.Image]
    image_embeds: torch.Tensor
    seeds: list[int]
    decoder: str


class EditPipeline:
    """(source image, instruction) pairs -> edited images.

    Args:
        ar_model, processor, config, runtime, negative: as `GeneratePipeline`.
        editing_decoder: `EditingDecoder` or None.
        generation: the model's `GeneratePipeline` (for `decoder="generation"`), or None.
        vae: diffusers `AutoencoderKL`.
    """

    def __init__(self, ar_model, processor, editing_decoder, vae, config, runtime,
                 generation: GeneratePipeline | None = None, negative: dict | None = None):
        self.ar_model, self.processor = ar_model, processor
        self.editing_decoder, self.vae = editing_decoder, vae
        self.config, self.runtime, self.generation, self.negative = config, runtime, generation, negative

    @torch.inference_mode()
    def __call__(self, *, image: Image.Image | list[Image.Image], prompt: str | list[str],
                 decoder: str = "editing", height: int | None = None, width: int | None = None,
                 num_steps: int | None = None, guidance_scale: float | None = None, seed: int = 0,
                 progress: bool | None = None) -> EditOutput:
        """Edit each image by its instruction.

        Args:
            image: a PIL image or a list (one per prompt).
            prompt: an instruction or a list of them.
            decoder: "editing" or "generation".
            height, width, num_steps, guidance_scale, seed, progress: as `GeneratePipeline`.

        Returns:
            EditOutput (lists, also for a single pair).

        Raises:
            ValueError: bad image or prompt, mismatched counts, unknown decoder, bad settings.
        """
        images, prompts, settings = self._validate(image, prompt, decoder, height=height, width=width,
                                                   num_steps=num_steps, guidance_scale=guidance_scale,
                                                   seed=seed)
        seeds = batch_seeds(settings.seed, len(prompts))
        following = self.editing_decoder if decoder == "editing" else self.generation.decoder
        embeds = predict_embeds(self.ar_model, self.processor, self.runtime, prompts, "edit", images,
                                prefetch=(following, self.vae))
        if decoder == "generation":
            negative = negative_kwargs(self.config, self.negative, settings.guidance_scale)
            pixels = self.generation.decode(embeds, settings, seeds, negative, progress)
        else:
            pixels = self._edit(embeds, images, settings, seeds, progress)
        return EditOutput(to_pil(pixels), embeds.float().cpu(), seeds, decoder)

    @torch.inference_mode()
    def decode_edits(self, image_embeds: torch.Tensor, image: list[Image.Image], *, height: int | None = None,
                     width: int | None = None, num_steps: int | None = None, guidance_scale: float | None = None,
                     seed: int = 0, progress: bool | None = None) -> list[Image.Image]:
        """Given (B, N, D) target embeddings (e.g. `encode_images` of the true edit: the editing decoder's
        ceiling) and B source images -> B images with the editing decoder, settings and seeds as `__call__`."""
        images, _, settings = self._validate(image, ["-"] * len(image), "editing", height=height, width=width,
                                             num_steps=num_steps, guidance_scale=guidance_scale, seed=seed)
        check_embeds(image_embeds, len(images), self.config.num_output_tokens,
                     self.ar_model.config.qwen_config.text_config.hidden_size)
        seeds = batch_seeds(settings.seed, len(images))
        embeds = image_embeds.to(self.runtime.device, self.runtime.dtype)
        return to_pil(self._edit(embeds, images, settings, seeds, progress))

    def _validate(self, image, prompt, decoder, **settings) -> tuple[list, list[str], ImageSettings]:
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
        needed = self.editing_decoder if decoder == "editing" else self.generation
        if needed is None:
            raise ValueError(f"this model has no {decoder} decoder")
        images = as_batch(image, "image", (Image.Image,))[0]
        prompts = check_prompts(as_batch(prompt, "prompt", (str,))[0])
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        images = [check_image(im, f"image {i}") for i, im in enumerate(images)]
        return images, prompts, image_settings(self.config, edit=decoder == "editing", count=len(images),
                                               **settings)

    def _edit(self, embeds: torch.Tensor, images: list[Image.Image], settings: ImageSettings,
              seeds: list[int], progress: bool | None) -> torch.Tensor:
        """Editing decoder, one batch per distinct reference grid -> (B, 3, H, W) in [0, 1]."""
        negative = negative_kwargs(self.config, self.negative, settings.guidance_scale)
        references = reference_embeds(self.ar_model, self.processor, self.config, self.runtime, images)
        groups: dict[tuple[int, int], list[int]] = {}
        for index, (_, grid) in enumerate(references):
            groups.setdefault(grid, []).append(index)
        decoder = self.runtime.activate(self.editing_decoder)
        vae = self.runtime.place(self.vae)
        out: list[torch.Tensor | None] = [None] * len(images)
        dtype = self.runtime.dtype
        size = latent_size(vae, settings.height, settings.width)
        with self.runtime.progress_bar(settings.num_steps * len(groups), "editing", progress) as callback:
            for done, (grid, rows) in enumerate(groups.items()):
                reference = torch.stack([references[r][0] for r in rows]).to(dtype)  # (b, M, D)
                step = None if callback is None else (
                    lambda k, _n, done=done: callback(done * settings.num_steps + k, 0))
                with items_apart([decoder], len(rows)):
                    latents = edit_latents(decoder, embeds[rows].to(dtype), reference, grid, self.config.output_grid,
                                           size, num_steps=settings.num_steps,
                                           guidance_scale=settings.guidance_scale, seed=[seeds[r] for r in rows],
                                           progress=step, shift=self.config.sampling.shift, **negative)
                pixels = latents_to_images(vae, latents)
                for k, r in enumerate(rows):
                    out[r] = pixels[k]
        return torch.stack(out)
