"""Analytic tests of the flow-matching maths: the time convention, schedule, Euler sampler, loss."""

import math

import pytest
import torch

from nexusgen.flow import (
    SIGMA_MIN,
    TrainingSchedule,
    apply_guidance,
    data_from_velocity,
    euler_sample,
    flow_matching_loss,
    inference_sigmas,
    interpolate,
    noise_from_velocity,
    shift_sigmas,
    velocity_target,
)


def _pair(seed=0, shape=(3, 4, 2, 2)):
    g = torch.Generator().manual_seed(seed)
    x_0 = torch.randn(shape, generator=g, dtype=torch.float64)
    return x_0, torch.randn(shape, generator=g, dtype=torch.float64)


def test_time_convention_endpoints():
    x_0, x_1 = _pair()
    assert torch.equal(interpolate(x_0, x_1, 0.0), x_0)  # t = 0 is data
    assert torch.equal(interpolate(x_0, x_1, 1.0), x_1)  # t = 1 is noise
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    x_t = interpolate(x_0, x_1, t)
    assert torch.allclose(x_t[1], 0.5 * (x_0[1] + x_1[1]))


def test_velocity_identity():
    x_0, x_1 = _pair(1)
    t, h = 0.37, 1e-6
    finite_difference = (interpolate(x_0, x_1, t + h) - interpolate(x_0, x_1, t - h)) / (2 * h)
    velocity = velocity_target(x_0, x_1)
    assert torch.allclose(finite_difference, velocity, atol=1e-7)
    x_t = interpolate(x_0, x_1, t)
    assert torch.allclose(data_from_velocity(x_t, velocity, t), x_0)
    assert torch.allclose(noise_from_velocity(x_t, velocity, t), x_1)


def test_time_must_match_batch():
    x_0, x_1 = _pair()
    with pytest.raises(ValueError):
        interpolate(x_0, x_1, torch.zeros(2))


def test_shifted_schedule():
    sigmas = inference_sigmas(50)
    assert sigmas.shape == (51,)
    assert sigmas[0] == 1.0 and sigmas[-1] == 0.0
    assert torch.all(sigmas[1:] < sigmas[:-1])
    base = torch.linspace(1.0, SIGMA_MIN, 50, dtype=torch.float64)
    assert torch.allclose(sigmas[:-1], 3 * base / (1 + 2 * base))
    # shift 1 is the identity; shift keeps the endpoints
    unshifted = torch.linspace(1.0, SIGMA_MIN, 10, dtype=torch.float64)
    assert torch.allclose(inference_sigmas(10, shift=1.0)[:-1], unshifted)
    assert shift_sigmas(torch.tensor([0.0, 1.0]), 7.0).tolist() == [0.0, 1.0]
    assert math.isclose(float(shift_sigmas(torch.tensor(0.5), 3.0)), 0.75)


def test_training_weights_are_upstream_bump():
    schedule = TrainingSchedule.upstream()
    assert schedule.sigmas.shape == schedule.weights.shape == (1000,)
    assert math.isclose(float(schedule.weights.mean()), 1.0, rel_tol=1e-9)
    assert math.isclose(float(schedule.weights.min()), 0.0, abs_tol=1e-12)
    peak = int(schedule.weights.argmax())
    assert abs(float(schedule.sigmas[peak]) * 1000 - 500) < 2  # the bump is centred on timestep 500
    flat = TrainingSchedule.upstream(use_weighting=False)
    assert torch.equal(flat.weights, torch.ones(1000, dtype=torch.float64))


def test_timestep_sampling_is_seeded_and_on_grid():
    schedule = TrainingSchedule.upstream()
    a, wa = schedule.sample(8, torch.Generator().manual_seed(3))
    b, wb = schedule.sample(8, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and torch.equal(wa, wb)
    assert all(bool((schedule.sigmas.float() == s).any()) for s in a)
    shared, _ = schedule.sample(8, torch.Generator().manual_seed(3), per_sample=False)
    assert torch.all(shared == shared[0])


def test_euler_follows_straight_lines_exactly():
    # Field of the straight paths towards one data point x_0: u(x, t) = (x - x_0) / t. Every Euler step stays
    # on the line, so any step count lands exactly on x_0.
    x_0, x_1 = _pair(2)
    result = euler_sample(lambda x, t: (x - x_0) / t.view(-1, 1, 1, 1), x_1, inference_sigmas(7, shift=3.0))
    assert torch.allclose(result, x_0.float().to(result.dtype), atol=1e-5)


def test_euler_on_exponential_field_is_first_order():
    # dx/dt = x from t = 1 to 0: x(0) = x(1) * exp(-1). Euler's error halves when the step count doubles.
    x_1 = torch.ones(1, 1)
    errors = []
    for steps in (50, 100, 200):
        sigmas = torch.linspace(1, 0, steps + 1, dtype=torch.float64)
        errors.append(abs(float(euler_sample(lambda x, t: x, x_1, sigmas)) - math.exp(-1)))
    assert errors[2] < errors[1] < errors[0] < 0.01
    assert 1.8 < errors[0] / errors[1] < 2.2 and 1.8 < errors[1] / errors[2] < 2.2


def test_euler_transports_gaussian_to_gaussian():
    # Data N(mu, s^2), noise N(0, 1): the marginal velocity field is affine and its flow map is
    # x(0) = mu + s * x(1). Integrating the analytic field reproduces it.
    mu, s = 1.5, 0.4

    def field(x, t):
        t = t.view(-1, 1).double()
        var = (1 - t) ** 2 * s**2 + t**2
        return -mu + (t - (1 - t) * s**2) / var * (x - (1 - t) * mu)

    x_1 = torch.linspace(-2, 2, 9, dtype=torch.float64).view(-1, 1)
    x_0 = euler_sample(field, x_1, inference_sigmas(400, shift=1.0))
    assert torch.allclose(x_0, mu + s * x_1, atol=5e-3)


def test_guidance_scale_one_is_conditional():
    cond, uncond = torch.randn(2, 3), torch.randn(2, 3)
    assert torch.equal(apply_guidance(cond, uncond, 1.0), cond)
    assert torch.allclose(apply_guidance(cond, uncond, 3.0), uncond + 3.0 * (cond - uncond))
    assert torch.equal(apply_guidance(cond, uncond, 0.0), uncond)


def test_loss_is_zero_for_the_exact_velocity_and_weighted_otherwise():
    x_0 = torch.randn(4, 2, 3, 3)
    oracle = lambda x_t, t: (x_t - x_0) / t.view(-1, 1, 1, 1)  # noqa: E731  the true velocity of each line
    out = flow_matching_loss(oracle, x_0, generator=torch.Generator().manual_seed(0))
    assert float(out["loss"]) < 1e-8
    zero = flow_matching_loss(lambda x_t, t: torch.zeros_like(x_t), x_0,
                              generator=torch.Generator().manual_seed(0))
    # Replay the draws: t first, then the noise, from the same CPU generator.
    g = torch.Generator().manual_seed(0)
    schedule = TrainingSchedule.upstream()
    t, w = schedule.sample(4, g)
    x_1 = torch.randn(x_0.shape, generator=g)
    expected = (w * (x_1 - x_0).pow(2).flatten(1).mean(1)).mean()
    assert torch.allclose(zero["loss"], expected) and torch.equal(zero["t"], t)
