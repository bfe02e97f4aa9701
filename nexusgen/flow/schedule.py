"""Noise-level schedules: the shifted sigma grid for sampling, and the training timesteps with their weights.

Time convention: see `nexusgen.flow.path` (t = sigma, 1 = noise, 0 = data).

Upstream (DiffSynth ``FlowMatchScheduler`` as Nexus-Gen uses it, docs/upstream.md §3.2 and §4.2):

* sigmas ``linspace(1, sigma_min, n)`` with ``sigma_min = 0.003 / 1.002``, then the fixed shift
  ``s' = shift * s / (1 + (shift - 1) * s)`` with shift 3 (not FLUX's resolution-dependent shift);
* sampling appends a final 0, so n steps visit n + 1 levels;
* training uses the same grid with n = 1000 and a weight per index: a Gaussian bump over the timestep
  value ``T = 1000 s'``, ``exp(-2 ((T - 500) / 1000)^2)``, shifted to minimum 0 and rescaled to mean 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SIGMA_MIN = 0.003 / 1.002
"""Smallest sigma of the upstream grid (DiffSynth FlowMatchScheduler default)."""

DEFAULT_SHIFT = 3.0
"""Upstream's fixed schedule shift."""

NUM_TRAIN_TIMESTEPS = 1000


def shift_sigmas(sigmas: torch.Tensor, shift: float = DEFAULT_SHIFT) -> torch.Tensor:
    """Apply the time shift ``s' = shift s / (1 + (shift - 1) s)``; shift > 1 spends more steps at high noise.

    Args:
        sigmas: noise levels in [0, 1], any shape.
        shift: the shift factor (> 0); 1 is the identity.

    Returns:
        Shifted sigmas, same shape; 0 and 1 are fixed points.
    """
    if shift <= 0:
        raise ValueError(f"shift must be positive, got {shift}")
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def _base_grid(num_levels: int, sigma_min: float) -> torch.Tensor:
    # float64 so that the grid is identical on every device and in every dtype policy.
    return torch.linspace(1.0, sigma_min, num_levels, dtype=torch.float64)


def inference_sigmas(num_steps: int, shift: float = DEFAULT_SHIFT,
                     sigma_min: float = SIGMA_MIN) -> torch.Tensor:
    """Noise levels visited by an `num_steps`-step sampler, from 1 down to a final 0.

    Args:
        num_steps: number of denoising steps (>= 1).
        shift: schedule shift (upstream 3).
        sigma_min: last non-zero level before the shift.

    Returns:
        (num_steps + 1,) float64, decreasing, first element 1, last element 0.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    sigmas = shift_sigmas(_base_grid(num_steps, sigma_min), shift)
    return torch.cat([sigmas, sigmas.new_zeros(1)])


@dataclass(frozen=True)
class TrainingSchedule:
    """The discrete training noise levels and the upstream per-level loss weights.

    Attributes:
        sigmas: (num_train_timesteps,) float64 shifted noise levels, decreasing from 1.
        weights: (num_train_timesteps,) float64 loss weights, mean 1.
    """

    sigmas: torch.Tensor
    weights: torch.Tensor

    @classmethod
    def upstream(cls, shift: float = DEFAULT_SHIFT, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS,
                 sigma_min: float = SIGMA_MIN, use_weighting: bool = True) -> TrainingSchedule:
        """The schedule Nexus-Gen's decoders were trained with (weights all 1 if `use_weighting` is False)."""
        sigmas = shift_sigmas(_base_grid(num_train_timesteps, sigma_min), shift)
        if not use_weighting:
            return cls(sigmas, torch.ones_like(sigmas))
        timesteps = sigmas * num_train_timesteps
        bump = torch.exp(-2 * ((timesteps - num_train_timesteps / 2) / num_train_timesteps) ** 2)
        bump = bump - bump.min()
        return cls(sigmas, bump * (num_train_timesteps / bump.sum()))

    def sample(self, batch_size: int, generator: torch.Generator | None = None,
               per_sample: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw training noise levels uniformly over the discrete grid.

        Upstream draws one index per batch; `per_sample=True` (our default) draws one per sample, which
        gives the same expected loss with less gradient variance (docs/upstream.md §9.11).

        Args:
            batch_size: B.
            generator: a CPU generator, so a seed gives the same draws on any device.
            per_sample: one level per sample (True) or one shared by the batch (upstream).

        Returns:
            sigma (B,) float32 and weight (B,) float32, on the CPU.
        """
        count = batch_size if per_sample else 1
        index = torch.randint(0, self.sigmas.shape[0], (count,), generator=generator)
        index = index.expand(batch_size)
        return self.sigmas[index].float(), self.weights[index].float()
