"""The sampling entry points on the real tiny decoders: determinism, CFG semantics, sizes, errors."""

import pytest
import torch

from nexusgen.flow import edit_images, euler_sample, generate_images, guided_velocity, inference_sigmas
from nexusgen.flow.sampler import initial_noise, round_size
from nexusgen.models.decoder import (
    DECODER_PRESETS,
    VAE_PRESETS,
    EditingDecoder,
    GenerationDecoder,
    build_vae,
    decode_latents,
)

D = DECODER_PRESETS["tiny"].embed_dim


@pytest.fixture(scope="module")
def parts():
    torch.manual_seed(0)
    gen = GenerationDecoder(DECODER_PRESETS["tiny"]).eval()
    edit = EditingDecoder(DECODER_PRESETS["tiny"]).eval()
    vae = build_vae(VAE_PRESETS["tiny"]).eval()
    return gen, edit, vae


def test_same_seed_same_image_other_seed_other_image(parts):
    gen, _, vae = parts
    embeds = torch.randn(2, 4, D)
    a = generate_images(gen, vae, embeds, 32, 32, 3, 1.0, 7)
    b = generate_images(gen, vae, embeds, 32, 32, 3, 1.0, 7)
    c = generate_images(gen, vae, embeds, 32, 32, 3, 1.0, 8)
    assert a.shape == (2, 3, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-4
    assert float(a.min()) >= 0 and float(a.max()) <= 1


def test_noise_comes_from_a_cpu_generator():
    expected = torch.randn((2, 16, 4, 6), generator=torch.Generator("cpu").manual_seed(5))
    assert torch.equal(initial_noise(2, 16, (4, 6), seed=5), expected)


def test_cfg_scale_one_equals_conditional_sampling(parts):
    gen, _, vae = parts
    embeds = torch.randn(1, 4, D)
    negative = torch.randn(1, 11, gen.config.context_dim)
    with_negative = generate_images(gen, vae, embeds, 32, 32, 3, 1.0, 0, negative_embeds=negative)
    plain = generate_images(gen, vae, embeds, 32, 32, 3, 1.0, 0)
    # the conditional-only Euler loop written out by hand
    with torch.no_grad():
        condition = gen.condition(embeds)
        velocity = lambda x, t: gen.velocity(x, t, condition, guidance=3.5)  # noqa: E731
        latents = euler_sample(velocity, initial_noise(1, 16, (4, 4), 0), inference_sigmas(3))
        manual = decode_latents(vae, latents)
    assert torch.equal(with_negative, plain)
    assert torch.allclose(plain, manual, atol=1e-6)
    guided = generate_images(gen, vae, embeds, 32, 32, 3, 4.0, 0, negative_embeds=negative)
    assert (guided - plain).abs().max() > 1e-4


def test_batched_null_branch_equals_two_separate_calls(parts):
    gen, _, _ = parts
    embeds = torch.randn(2, 4, D)
    with torch.no_grad():
        positive = gen.condition(embeds)
        null = gen.condition(torch.zeros_like(embeds))
        x, t = torch.randn(2, 16, 4, 4), torch.tensor([0.7, 0.3])
        batched = guided_velocity(gen, positive, null, 2.5, 3.5)(x, t)
        cond, uncond = gen.velocity(x, t, positive), gen.velocity(x, t, null)
    assert torch.allclose(batched, uncond + 2.5 * (cond - uncond), atol=1e-5)


def test_official_negative_branch_uses_text_condition(parts):
    gen, _, vae = parts
    embeds = torch.randn(1, 4, D)
    negative = torch.randn(1, 9, gen.config.context_dim)
    with torch.no_grad():
        cond = gen.text_condition(negative)
        assert cond.context_ids.abs().sum() == 0 and cond.context.shape == (1, 9, gen.config.context_dim)
        assert torch.equal(cond.pooled[0], gen.pooled_embeds)
    with pytest.raises(ValueError):
        generate_images(gen, vae, embeds, 32, 32, 2, 3.0, 0, negative_embeds=torch.randn(9, 64))


def test_sizes_round_up_to_16(parts):
    gen, _, vae = parts
    assert round_size(33, 16) == (48, 16)
    image = generate_images(gen, vae, torch.randn(1, 4, D), 20, 40, 1, 1.0, 0)
    assert image.shape == (1, 3, 32, 48)
    with pytest.raises(ValueError):
        round_size(0, 16)


def test_editing_entry_point_and_reference_dependence(parts):
    _, edit, vae = parts
    embeds, reference = torch.randn(1, 4, D), torch.randn(1, 9, D)
    progress = []
    a = edit_images(edit, vae, embeds, reference, (3, 3), (2, 2), 32, 32, 2, 1.0, 0,
                    progress=lambda done, total: progress.append((done, total)))
    b = edit_images(edit, vae, embeds, torch.randn(1, 9, D), (3, 3), (2, 2), 32, 32, 2, 1.0, 0)
    assert a.shape == (1, 3, 32, 32) and progress == [(1, 2), (2, 2)]
    assert (a - b).abs().max() > 1e-5
    null_cfg = edit_images(edit, vae, embeds, reference, (3, 3), (2, 2), 32, 32, 2, 2.0, 0)
    assert (null_cfg - a).abs().max() > 1e-5
    with pytest.raises(ValueError):
        edit_images(edit, vae, embeds, reference, (2, 3), (2, 2), 32, 32, 2, 1.0, 0)


def test_a_4x_vae_gives_the_requested_size_and_a_finer_latent(parts):
    from nexusgen.flow.sampler import vae_downsample
    from nexusgen.models.decoder import VAEConfig

    gen, _, vae8 = parts
    vae4 = build_vae(VAEConfig(block_out_channels=(8, 16, 16), layers_per_block=1, norm_num_groups=8)).eval()
    assert (vae_downsample(vae8), vae_downsample(vae4)) == (8, 4)
    seen = []
    image = generate_images(gen, vae4, torch.randn(1, 4, D), 24, 40, 2, 1.0, 0,
                            progress=lambda *a, **k: seen.append(1))
    # /4 then 2x2 packing: sides round up to multiples of 16 (max(16, 2*4)); 24x40 -> 32x48
    assert image.shape == (1, 3, 32, 48)
    with pytest.raises(ValueError, match="3 or 4 entries"):
        VAEConfig(block_out_channels=(8, 16))
