"""The sampling entry points on the real tiny decoders: determinism, CFG semantics, latent sizes, errors."""

import pytest
import torch

from nexusgen.flow import edit_latents, euler_sample, generate_latents, guided_velocity, inference_sigmas
from nexusgen.flow.sampler import initial_noise
from nexusgen.models.decoder import DECODER_PRESETS, EditingDecoder, GenerationDecoder

D = DECODER_PRESETS["tiny"].embed_dim


@pytest.fixture(scope="module")
def parts():
    torch.manual_seed(0)
    gen = GenerationDecoder(DECODER_PRESETS["tiny"]).eval()
    edit = EditingDecoder(DECODER_PRESETS["tiny"]).eval()
    return gen, edit


def test_same_seed_same_latents_other_seed_other_latents(parts):
    gen, _ = parts
    embeds = torch.randn(2, 4, D)
    a = generate_latents(gen, embeds, (4, 4), 3, 1.0, 7)
    b = generate_latents(gen, embeds, (4, 4), 3, 1.0, 7)
    c = generate_latents(gen, embeds, (4, 4), 3, 1.0, 8)
    assert a.shape == (2, 16, 4, 4) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-4


def test_noise_comes_from_a_cpu_generator():
    expected = torch.randn((2, 16, 4, 6), generator=torch.Generator("cpu").manual_seed(5))
    assert torch.equal(initial_noise(2, 16, (4, 6), seed=5), expected)


def test_cfg_scale_one_equals_conditional_sampling(parts):
    gen, _ = parts
    embeds = torch.randn(1, 4, D)
    negative = torch.randn(1, 11, gen.config.context_dim)
    with_negative = generate_latents(gen, embeds, (4, 4), 3, 1.0, 0, negative_embeds=negative)
    plain = generate_latents(gen, embeds, (4, 4), 3, 1.0, 0)
    # the conditional-only Euler loop written out by hand
    with torch.no_grad():
        condition = gen.condition(embeds)
        velocity = lambda x, t: gen.velocity(x, t, condition, guidance=3.5)  # noqa: E731
        manual = euler_sample(velocity, initial_noise(1, 16, (4, 4), 0), inference_sigmas(3))
    assert torch.equal(with_negative, plain)
    assert torch.equal(plain, manual)
    guided = generate_latents(gen, embeds, (4, 4), 3, 4.0, 0, negative_embeds=negative)
    assert (guided - plain).abs().max() > 1e-4


def test_batched_null_branch_equals_two_separate_calls(parts):
    gen, _ = parts
    embeds = torch.randn(2, 4, D)
    with torch.no_grad():
        positive = gen.condition(embeds)
        null = gen.condition(torch.zeros_like(embeds))
        x, t = torch.randn(2, 16, 4, 4), torch.tensor([0.7, 0.3])
        batched = guided_velocity(gen, positive, null, 2.5, 3.5)(x, t)
        cond, uncond = gen.velocity(x, t, positive), gen.velocity(x, t, null)
    assert torch.allclose(batched, uncond + 2.5 * (cond - uncond), atol=1e-5)


def test_official_negative_branch_uses_text_condition(parts):
    gen, _ = parts
    embeds = torch.randn(1, 4, D)
    negative = torch.randn(1, 9, gen.config.context_dim)
    with torch.no_grad():
        cond = gen.text_condition(negative)
        assert cond.context_ids.abs().sum() == 0 and cond.context.shape == (1, 9, gen.config.context_dim)
        assert torch.equal(cond.pooled[0], gen.pooled_embeds)
    with pytest.raises(ValueError):
        generate_latents(gen, embeds, (4, 4), 2, 3.0, 0, negative_embeds=torch.randn(9, 64))


def test_the_latent_size_is_the_callers_and_must_pack_into_2x2_cells(parts):
    gen, _ = parts
    assert generate_latents(gen, torch.randn(1, 4, D), (4, 6), 1, 1.0, 0).shape == (1, 16, 4, 6)
    for bad in ((3, 4), (0, 4)):
        with pytest.raises(ValueError, match="latent_size"):
            generate_latents(gen, torch.randn(1, 4, D), bad, 1, 1.0, 0)


def test_editing_entry_point_and_reference_dependence(parts):
    _, edit = parts
    embeds, reference = torch.randn(1, 4, D), torch.randn(1, 9, D)
    progress = []
    a = edit_latents(edit, embeds, reference, (3, 3), (2, 2), (4, 4), 2, 1.0, 0,
                     progress=lambda done, total: progress.append((done, total)))
    b = edit_latents(edit, embeds, torch.randn(1, 9, D), (3, 3), (2, 2), (4, 4), 2, 1.0, 0)
    assert a.shape == (1, 16, 4, 4) and progress == [(1, 2), (2, 2)]
    assert (a - b).abs().max() > 1e-5
    null_cfg = edit_latents(edit, embeds, reference, (3, 3), (2, 2), (4, 4), 2, 2.0, 0)
    assert (null_cfg - a).abs().max() > 1e-5
    with pytest.raises(ValueError):
        edit_latents(edit, embeds, reference, (2, 3), (2, 2), (4, 4), 2, 1.0, 0)
