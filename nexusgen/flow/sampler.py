"""Euler sampling with classifier-free guidance, and the two decoder sampling entry points (they return
latents; `nexusgen.models.vae.latents_to_images` turns them into pixels).

Time convention: see `nexusgen.flow.path` (t = sigma; sampling runs from t = 1, noise, to t = 0, data).

Two kinds of guidance, both as upstream (docs/upstream.md §4.2):

* **embedded guidance**: a scalar (3.5 upstream) fed to the DiT's guidance embedder at every step; it is a
  property of the decoder's training, not a sampler knob, so it defaults to
  ``decoder.config.embedded_guidance``.
* **true classifier-free guidance** when ``guidance_scale != 1``: ``u = u_neg + s (u_pos - u_neg)``. With
  ``guidance_scale == 1`` the negative branch is never evaluated.

Which negative branch (see also ``negative_embeds`` below):

* official Nexus-GenV2 decoders were trained on image-embedding conditions only, and upstream's negative
  branch is the ordinary FLUX text path: T5-XXL embeddings of the negative prompt ("" by default, 512 tokens)
  with the CLIP pooled vector of that prompt. Pass them precomputed as ``negative_embeds`` (B or 1, S, C)
  and ``negative_pooled``; the pooled default is the decoder's stored CLIP("") vector, which is exact for
  the default negative prompt "". Upstream's defaults: generation scale 3.0, editing 1.0 (off).
* decoders trained with conditioning dropout (``cond_dropout_prob`` in `nexusgen.flow.loss`, e.g. the
  ShapesWorld models) use the **null branch** that needs no T5: the same decoder conditioned on all-zero
  image embeddings (for editing: zero target embeddings, same reference). It is used when
  ``negative_embeds`` is None. On an official decoder the null branch is untrained: keep scale 1 there.

The entry points duck-type their decoder (this package imports no model code): it must provide
``config.latent_channels``, ``config.embedded_guidance``, ``condition(...)``, ``text_condition(...)`` and
``velocity(...)`` (`nexusgen.models.decoder`). The latent size comes from the caller
(`nexusgen.models.vae.latent_size`), so the sampler needs no VAE.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch

from nexusgen.flow.schedule import DEFAULT_SHIFT, inference_sigmas

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(x_t (B, ...), t (B,)) -> predicted velocity (B, ...)."""

ProgressFn = Callable[[int, int], None]
"""Called as progress(steps_done, num_steps) after every step."""

def apply_guidance(cond: torch.Tensor, uncond: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """Classifier-free guidance ``u_uncond + s (u_cond - u_uncond)``; s = 1 returns `cond` exactly."""
    if guidance_scale == 1.0:
        return cond
    return uncond + guidance_scale * (cond - uncond)


def euler_sample(velocity_fn: VelocityFn, noise: torch.Tensor, sigmas: torch.Tensor,
                 progress: ProgressFn | None = None) -> torch.Tensor:
    """Integrate ``dx/dt = u(x, t)`` with explicit Euler over the given noise levels.

    Args:
        velocity_fn: the (guided) velocity field.
        noise: x at ``t = sigmas[0]`` (usually pure noise at t = 1), (B, ...).
        sigmas: (K + 1,) decreasing noise levels; K steps, the last level is usually 0.
        progress: optional callback.

    Returns:
        x at ``t = sigmas[-1]``, same shape and dtype as `noise`. The state is kept in float32 whatever the
        model dtype, so rounding does not accumulate over the steps.
    """
    if sigmas.ndim != 1 or sigmas.shape[0] < 2:
        raise ValueError(f"sigmas must be 1-D with at least 2 levels, got shape {tuple(sigmas.shape)}")
    x = noise.float()
    num_steps = sigmas.shape[0] - 1
    for step in range(num_steps):
        t = torch.full((x.shape[0],), float(sigmas[step]), device=x.device)
        velocity = velocity_fn(x, t).float()
        x = x + float(sigmas[step + 1] - sigmas[step]) * velocity
        if progress is not None:
            progress(step + 1, num_steps)
    return x.to(noise.dtype)


def _can_batch(condition: Any, negative: Any) -> bool:
    """True if both branches fit in one forward pass (same context length and RoPE ids)."""
    return (condition.context.shape == negative.context.shape
            and torch.equal(condition.context_ids, negative.context_ids))


def guided_velocity(decoder: Any, condition: Any, negative_condition: Any | None, guidance_scale: float,
                    embedded_guidance: float) -> VelocityFn:
    """The velocity field the sampler integrates: conditional, or CFG-combined with a negative branch.

    When both branches have the same context shape (the null branch) they run as one batch of 2B.
    """
    def conditional(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return decoder.velocity(x, t, condition, guidance=embedded_guidance)

    if guidance_scale == 1.0 or negative_condition is None:
        return conditional

    if _can_batch(condition, negative_condition):
        both = dataclasses.replace(
            condition, context=torch.cat([condition.context, negative_condition.context]),
            pooled=torch.cat([condition.pooled, negative_condition.pooled]))

        def batched(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            x, t = torch.cat([x, x]), torch.cat([t, t])  # (2B, ...), (2B,)
            velocity = decoder.velocity(x, t, both, guidance=embedded_guidance)
            cond, uncond = velocity.chunk(2)  # (B, ...) each
            return apply_guidance(cond, uncond, guidance_scale)
        return batched

    def separate(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        uncond = decoder.velocity(x, t, negative_condition, guidance=embedded_guidance)
        return apply_guidance(conditional(x, t), uncond, guidance_scale)
    return separate


def initial_noise(batch_size: int, channels: int, latent_size: tuple[int, int],
                  seed: int | Sequence[int]) -> torch.Tensor:
    """Gaussian noise (B, C, h, w) float32 drawn from a CPU generator: the same seed gives the same image on
    any device (upstream draws on the compute device, so its seeds are device-dependent).

    `seed` may also be one seed per sample: row b is then drawn alone from `seed[b]`, so a sample's noise
    does not depend on the batch it is in (the pipelines use seed + index).
    """
    if not isinstance(seed, Sequence):
        generator = torch.Generator("cpu").manual_seed(int(seed))
        return torch.randn((batch_size, channels, *latent_size), generator=generator)
    if len(seed) != batch_size:
        raise ValueError(f"{len(seed)} seeds for a batch of {batch_size}")
    return torch.cat([initial_noise(1, channels, latent_size, int(s)) for s in seed])


def _negative_condition(decoder: Any, image_embeds: torch.Tensor, guidance_scale: float,
                        negative_embeds: torch.Tensor | None, negative_pooled: torch.Tensor | None,
                        condition_kwargs: dict) -> Any | None:
    if guidance_scale == 1.0:
        return None
    batch = image_embeds.shape[0]
    if negative_embeds is not None:  # official branch: precomputed T5 embeddings of the negative prompt
        if negative_embeds.ndim != 3 or negative_embeds.shape[0] not in (1, batch):
            raise ValueError(f"negative_embeds must be (B or 1, S, C), got {tuple(negative_embeds.shape)}")
        negative_embeds = negative_embeds.expand(batch, -1, -1)
        if negative_pooled is not None:
            negative_pooled = negative_pooled.reshape(-1, negative_pooled.shape[-1]).expand(batch, -1)
        return decoder.text_condition(negative_embeds, negative_pooled)
    # Null branch: what conditioning dropout trains (zero image embeddings, reference kept for editing).
    return decoder.condition(torch.zeros_like(image_embeds), **condition_kwargs)


def _sample(decoder: Any, image_embeds: torch.Tensor, latent_size: tuple[int, int], condition_kwargs: dict, *,
            num_steps: int, guidance_scale: float, seed: int | Sequence[int],
            negative_embeds: torch.Tensor | None, negative_pooled: torch.Tensor | None,
            progress: ProgressFn | None, embedded_guidance: float | None, shift: float) -> torch.Tensor:
    if image_embeds.ndim != 3:
        raise ValueError(f"image_embeds must be (B, N, D), got shape {tuple(image_embeds.shape)}")
    latent_size = (int(latent_size[0]), int(latent_size[1]))
    if latent_size[0] < 2 or latent_size[1] < 2 or latent_size[0] % 2 or latent_size[1] % 2:
        raise ValueError(f"latent_size must be two even sizes >= 2 (the DiT packs 2x2 cells), got {latent_size}")
    condition_kwargs = {**condition_kwargs, "latent_size": latent_size}
    condition = decoder.condition(image_embeds, **condition_kwargs)
    negative = _negative_condition(decoder, image_embeds, guidance_scale, negative_embeds, negative_pooled,
                                   condition_kwargs)
    if embedded_guidance is None:
        embedded_guidance = decoder.config.embedded_guidance
    velocity_fn = guided_velocity(decoder, condition, negative, guidance_scale, embedded_guidance)
    noise = initial_noise(image_embeds.shape[0], decoder.config.latent_channels, latent_size, seed)
    return euler_sample(velocity_fn, noise.to(image_embeds.device), inference_sigmas(num_steps, shift),
                        progress=progress)


@torch.no_grad()
def generate_latents(decoder: Any, image_embeds: torch.Tensor, latent_size: tuple[int, int], num_steps: int = 50,
                     guidance_scale: float = 1.0, seed: int | Sequence[int] = 0,
                     negative_embeds: torch.Tensor | None = None, progress: ProgressFn | None = None, *,
                     negative_pooled: torch.Tensor | None = None, embedded_guidance: float | None = None,
                     shift: float = DEFAULT_SHIFT) -> torch.Tensor:
    """Latents of images drawn from predicted image embeddings by the generation decoder (docs/upstream.md §1.3,
    generation).

    Args:
        decoder: a `nexusgen.models.decoder.GenerationDecoder` (on the compute device).
        image_embeds: (B, N, D) embeddings in the vision encoder's output space (N = 81 upstream).
        latent_size: (h, w) of the latent, both even (`nexusgen.models.vae.latent_size` of the image size).
        num_steps: Euler steps (50 upstream).
        guidance_scale: true CFG scale; 1 disables the negative branch.
        seed: noise seed (CPU generator: device-independent), or one seed per sample.
        negative_embeds: precomputed T5 embeddings of the negative prompt (B or 1, S, C) for the official
            negative branch; None uses the null branch (see the module docstring).
        progress: optional callback progress(steps_done, num_steps).
        negative_pooled: CLIP pooled vector of the negative prompt (B or 1, P); default the stored CLIP("").
        embedded_guidance: DiT guidance-embedder value; default ``decoder.config.embedded_guidance`` (3.5).
        shift: schedule shift (3 upstream).

    Returns:
        (B, c, h, w) float32 latents at t = 0, on the device of `image_embeds`.
    """
    return _sample(decoder, image_embeds, latent_size, {}, num_steps=num_steps, guidance_scale=guidance_scale,
                   seed=seed, negative_embeds=negative_embeds, negative_pooled=negative_pooled, progress=progress,
                   embedded_guidance=embedded_guidance, shift=shift)


@torch.no_grad()
def edit_latents(decoder: Any, image_embeds: torch.Tensor, reference_embeds: torch.Tensor,
                 reference_grid: tuple[int, int], target_grid: tuple[int, int], latent_size: tuple[int, int],
                 num_steps: int = 50, guidance_scale: float = 1.0, seed: int | Sequence[int] = 0,
                 negative_embeds: torch.Tensor | None = None, progress: ProgressFn | None = None, *,
                 negative_pooled: torch.Tensor | None = None, embedded_guidance: float | None = None,
                 shift: float = DEFAULT_SHIFT) -> torch.Tensor:
    """Latents of edited images drawn by the editing decoder (docs/upstream.md §1.3, editing with the editing
    decoder).

    Args:
        decoder: a `nexusgen.models.decoder.EditingDecoder`.
        image_embeds: (B, N, D) predicted target embeddings on `target_grid` (N = h * w; 9x9 upstream).
        reference_embeds: (B, M, D) vision-encoder embeddings of the source image on `reference_grid`
            (M = h * w; 18x18 upstream, any grid works).
        reference_grid, target_grid: (h, w) in merged tokens (one token = 28x28 source pixels).
        Other arguments as in `generate_latents`.

    Returns:
        (B, c, h, w) float32 latents at t = 0.
    """
    condition_kwargs = {"reference_embeds": reference_embeds, "reference_grid": tuple(reference_grid),
                        "target_grid": tuple(target_grid)}
    return _sample(decoder, image_embeds, latent_size, condition_kwargs, num_steps=num_steps,
                   guidance_scale=guidance_scale, seed=seed, negative_embeds=negative_embeds,
                   negative_pooled=negative_pooled, progress=progress, embedded_guidance=embedded_guidance,
                   shift=shift)
