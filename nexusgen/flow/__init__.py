"""Flow-matching maths: path (the time convention), schedule, sampler, loss. Knows nothing about the networks.

Time convention (stated in `nexusgen.flow.path`): t = sigma in [0, 1], t = 0 data, t = 1 noise,
``x_t = (1 - t) x_0 + t x_1``, velocity ``x_1 - x_0``.
"""

from nexusgen.flow.loss import decoder_training_loss, drop_condition, flow_matching_loss
from nexusgen.flow.path import data_from_velocity, interpolate, noise_from_velocity, velocity_target
from nexusgen.flow.sampler import apply_guidance, edit_latents, euler_sample, generate_latents, guided_velocity
from nexusgen.flow.schedule import DEFAULT_SHIFT, SIGMA_MIN, TrainingSchedule, inference_sigmas, shift_sigmas

__all__ = [
    "DEFAULT_SHIFT", "SIGMA_MIN", "TrainingSchedule", "apply_guidance", "data_from_velocity",
    "decoder_training_loss", "drop_condition", "edit_latents", "euler_sample", "flow_matching_loss",
    "generate_latents", "guided_velocity", "inference_sigmas", "interpolate", "noise_from_velocity",
    "shift_sigmas", "velocity_target",
]
