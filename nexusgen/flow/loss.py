"""The flow-matching training loss with upstream's timestep weighting, and the decoders' training forward.

Time convention: see `nexusgen.flow.path`. Per sample: draw t from the training schedule, noise x_1 from a
CPU generator, ``x_t = (1 - t) x_0 + t x_1``, target ``u = x_1 - x_0``; the loss is
``mean_b( w(t_b) * mean(|u_hat_b - u_b|^2) )`` with upstream's Gaussian-bump weights w (mean 1 over the
grid; `nexusgen.flow.schedule.TrainingSchedule`).

Conditioning dropout (``cond_dropout_prob``) replaces a sample's image embeddings by zeros, the null
condition that the sampler's null negative branch uses for classifier-free guidance without T5.

Randomness: one CPU generator for the batch, or one generator per sample (training: seeded by the
sample's position in the run, so a sample draws the same dropout, t and noise whichever rank and
micro-batch it lands in). A per-sample generator draws, in order: the dropout decision, t, the noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from nexusgen.flow.path import interpolate, velocity_target
from nexusgen.flow.sampler import VelocityFn
from nexusgen.flow.schedule import TrainingSchedule

Generators = torch.Generator | Sequence[torch.Generator] | None
"""One CPU generator for a batch, or one per sample."""


def flow_matching_loss(velocity_fn: VelocityFn, x_0: torch.Tensor, *,
                       generator: Generators = None,
                       schedule: TrainingSchedule | None = None,
                       per_sample_timesteps: bool = True) -> dict[str, torch.Tensor]:
    """Weighted rectified-flow loss for one batch.

    Args:
        velocity_fn: model velocity (x_t (B, ...), t (B,)) -> (B, ...).
        x_0: data (B, ...), e.g. scaled VAE latents (B, C, h, w).
        generator: CPU generator for t and noise (reproducible on any device), or B of them, one per
            sample (each draws its sample's t, then its noise).
        schedule: training schedule; default `TrainingSchedule.upstream()` (shift 3, weighting on).
        per_sample_timesteps: one t per sample (default) or one per batch (upstream; needs one generator).

    Returns:
        dict with ``loss`` (scalar, weighted, differentiable), ``mse`` (scalar, unweighted, detached),
        ``sample_loss`` (B,) the weighted loss of each sample (differentiable; ``loss`` is its mean),
        ``sample_mse`` (B,) unweighted, detached, and ``t`` (B,) the drawn noise levels.
    """
    schedule = schedule if schedule is not None else TrainingSchedule.upstream()
    batch_size = x_0.shape[0]
    if _is_per_sample(generator, batch_size):
        if not per_sample_timesteps:
            raise ValueError("one t per batch needs one generator, not one per sample")
        draws = [(*schedule.sample(1, g), torch.randn(tuple(x_0.shape[1:]), generator=g)) for g in generator]
        t, weight, x_1 = (torch.cat([d[0] for d in draws]), torch.cat([d[1] for d in draws]),
                          torch.stack([d[2] for d in draws]))
    else:
        t, weight = schedule.sample(batch_size, generator, per_sample=per_sample_timesteps)
        x_1 = torch.randn(x_0.shape, generator=generator)
    x_1 = x_1.to(device=x_0.device, dtype=x_0.dtype)
    t, weight = t.to(x_0.device), weight.to(x_0.device)
    x_t = interpolate(x_0, x_1, t.to(x_0.dtype))
    prediction = velocity_fn(x_t, t)
    # Error in float32 whatever the model dtype (upstream computes it in bf16).
    mse = (prediction.float() - velocity_target(x_0, x_1).float()).pow(2).flatten(1).mean(1)  # (B,)
    sample_loss = weight * mse
    return {"loss": sample_loss.mean(), "mse": mse.mean().detach(), "sample_loss": sample_loss,
            "sample_mse": mse.detach(), "t": t}


def _is_per_sample(generator: Generators, batch_size: int) -> bool:
    if generator is None or isinstance(generator, torch.Generator):
        return False
    if len(generator) != batch_size:
        raise ValueError(f"{len(generator)} generators for a batch of {batch_size}: give one per sample")
    return True


def drop_condition(image_embeds: torch.Tensor, prob: float, generator: Generators) -> torch.Tensor:
    """Zero the embeddings of each sample with probability `prob` (conditioning dropout for CFG).

    Args:
        image_embeds: (B, N, D).
        prob: dropout probability in [0, 1].
        generator: CPU generator, or one per sample (each draws its own sample's decision).

    Returns:
        (B, N, D), dropped samples all zero.
    """
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"cond_dropout_prob must be in [0, 1], got {prob}")
    if prob == 0.0:
        return image_embeds
    if _is_per_sample(generator, image_embeds.shape[0]):
        draws = torch.cat([torch.rand(1, generator=g) for g in generator])
    else:
        draws = torch.rand(image_embeds.shape[0], generator=generator)
    keep = (draws >= prob).to(image_embeds.device)
    return image_embeds * keep.view(-1, 1, 1).to(image_embeds.dtype)


def decoder_training_loss(decoder: Any, latents: torch.Tensor, image_embeds: torch.Tensor, *,
                          generator: Generators = None, schedule: TrainingSchedule | None = None,
                          cond_dropout_prob: float = 0.0, per_sample_timesteps: bool = True,
                          embedded_guidance: float | None = None,
                          **condition_kwargs: Any) -> dict[str, torch.Tensor]:
    """Training forward of a generation or editing decoder (upstream phases 2 and 3, docs/upstream.md §3.2-3.3).

    Args:
        decoder: `GenerationDecoder` or `EditingDecoder` (duck-typed: ``condition`` and ``velocity``).
        latents: (B, C, h, w) VAE latents, already shifted and scaled
            (`nexusgen.models.vae.images_to_latents`).
        image_embeds: (B, N, D) conditioning embeddings (ground truth for generation, AR-predicted targets
            for editing).
        generator: CPU generator for dropout, t and noise (drawn in that order), or one per sample.
        schedule: training schedule (default upstream: shift 3, Gaussian-bump weighting).
        cond_dropout_prob: probability of replacing a sample's `image_embeds` by zeros (0 = upstream).
        per_sample_timesteps: one t per sample (default) or per batch (upstream).
        embedded_guidance: guidance-embedder value; default ``decoder.config.embedded_guidance`` (3.5).
        **condition_kwargs: editing only: ``reference_embeds`` (B, M, D), ``reference_grid``, ``target_grid``.

    Returns:
        dict from `flow_matching_loss` (``loss``, ``mse``, ``sample_loss``, ``sample_mse``, ``t``).
    """
    if latents.ndim != 4:
        raise ValueError(f"latents must be (B, C, h, w), got shape {tuple(latents.shape)}")
    if embedded_guidance is None:
        embedded_guidance = decoder.config.embedded_guidance
    image_embeds = drop_condition(image_embeds, cond_dropout_prob, generator)
    condition = decoder.condition(image_embeds, latent_size=tuple(latents.shape[-2:]), **condition_kwargs)

    def velocity_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return decoder.velocity(x_t, t, condition, guidance=embedded_guidance)

    return flow_matching_loss(velocity_fn, latents, generator=generator, schedule=schedule,
                              per_sample_timesteps=per_sample_timesteps)
