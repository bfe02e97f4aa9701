"""The straight-line probability path. **The time convention of the whole project is stated here, once.**

Time convention (rectified flow, as FLUX and upstream Nexus-Gen / DiffSynth use it):

* ``t`` in [0, 1] is the noise level (FLUX calls it sigma). **t = 0 is data, t = 1 is pure noise.**
* ``x_0`` is a data sample (VAE latents), ``x_1 ~ N(0, I)`` is noise (flow_matching's names, FLUX's
  direction).
* The path is the straight line ``x_t = (1 - t) * x_0 + t * x_1``.
* Its velocity ``u = d x_t / d t = x_1 - x_0`` is what the DiT predicts (the training target).
* Sampling integrates ``dx/dt = u`` from t = 1 down to t = 0; one Euler step from t to t' < t is
  ``x_{t'} = x_t + (t' - t) * u`` (see `nexusgen.flow.sampler`).
* diffusers' ``FluxTransformer2DModel`` takes ``timestep = t`` and multiplies it by 1000 itself; DiffSynth
  (upstream) feeds ``1000 * t`` to its own DiT. The decoders here always receive ``t`` (docs/upstream.md §10).

Shapes: ``x_0``, ``x_1``, ``x_t`` are (B, ...) of one shape; ``t`` is a float, a 0-d tensor or (B,).
"""

from __future__ import annotations

import torch


def _broadcast_time(t: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """Return t as a tensor that broadcasts against `like` (B, ...) along the batch dimension."""
    t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    if t.ndim == 0:
        return t
    if t.ndim != 1 or t.shape[0] != like.shape[0]:
        raise ValueError(f"t must be a scalar or have shape ({like.shape[0]},), got {tuple(t.shape)}")
    return t.view(-1, *([1] * (like.ndim - 1)))


def interpolate(x_0: torch.Tensor, x_1: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """Point on the path: ``x_t = (1 - t) x_0 + t x_1``.

    Args:
        x_0: data, (B, ...).
        x_1: noise, same shape as `x_0`.
        t: noise level in [0, 1], scalar or (B,).

    Returns:
        x_t, same shape as `x_0`.
    """
    if x_0.shape != x_1.shape:
        raise ValueError(f"x_0 {tuple(x_0.shape)} and x_1 {tuple(x_1.shape)} must have the same shape")
    t = _broadcast_time(t, x_0)
    return (1 - t) * x_0 + t * x_1


def velocity_target(x_0: torch.Tensor, x_1: torch.Tensor) -> torch.Tensor:
    """The path's velocity ``d x_t / dt = x_1 - x_0`` (independent of t): the DiT's training target."""
    return x_1 - x_0


def data_from_velocity(x_t: torch.Tensor, velocity: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """Recover the data end of the line through x_t with the given velocity: ``x_0 = x_t - t u``."""
    return x_t - _broadcast_time(t, x_t) * velocity


def noise_from_velocity(x_t: torch.Tensor, velocity: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """Recover the noise end of the line through x_t with the given velocity: ``x_1 = x_t + (1 - t) u``."""
    return x_t + (1 - _broadcast_time(t, x_t)) * velocity
