"""The VAE (models/vae.py): latents and their scaling, 2x2 packing (parity with diffusers), latent sizes."""

import pytest
import torch
from diffusers import FluxPipeline

from nexusgen.models.vae import (
    VAE_PRESETS,
    VAEConfig,
    build_vae,
    downsample_factor,
    images_to_latents,
    latent_size,
    latents_to_images,
    pack_latents,
    round_size,
    unpack_latents,
)


def test_packing_matches_diffusers():
    latents = torch.randn(2, 16, 6, 8)
    packed = pack_latents(latents)
    assert torch.equal(packed, FluxPipeline._pack_latents(latents, 2, 16, 6, 8))
    assert torch.equal(unpack_latents(packed, (6, 8)), latents)
    with pytest.raises(ValueError, match="even"):
        pack_latents(torch.randn(1, 16, 5, 8))


def test_vae_round_trip_shapes_and_scaling():
    torch.manual_seed(0)
    vae = build_vae(VAE_PRESETS["tiny"]).eval()
    images = torch.rand(2, 3, 32, 48)
    with torch.no_grad():
        latents = images_to_latents(vae, images)
        mean = vae.encode(images * 2 - 1).latent_dist.mean
        decoded = latents_to_images(vae, latents)
        # each image is decoded alone (its pixels must not depend on its batch), so it equals a batch of one
        by_hand = [(vae.decode(latents[b:b + 1] / 0.3611 + 0.1159).sample / 2 + 0.5).clamp(0, 1) for b in range(2)]
        batched = (vae.decode(latents / 0.3611 + 0.1159).sample / 2 + 0.5).clamp(0, 1)
    assert latents.shape == (2, 16, 4, 6)
    assert torch.allclose(latents, (mean - 0.1159) * 0.3611, atol=1e-6)
    assert decoded.shape == images.shape and float(decoded.min()) >= 0 and float(decoded.max()) <= 1
    assert torch.equal(decoded, torch.cat(by_hand))
    assert torch.allclose(decoded, batched, atol=1e-5)


def test_sizes_round_up_to_16_and_a_4x_vae_gives_a_finer_latent():
    vae8 = build_vae(VAE_PRESETS["tiny"])
    vae4 = build_vae(VAEConfig(block_out_channels=(8, 16, 16), layers_per_block=1, norm_num_groups=8))
    assert (downsample_factor(vae8), downsample_factor(vae4)) == (8, 4)
    assert round_size(33, 16) == (48, 16)
    # /8: 20x40 -> 32x48 pixels -> 4x6 latent; /4 then 2x2 packing: multiples of max(16, 2*4); 24x40 -> 32x48
    assert latent_size(vae8, 20, 40) == (4, 6)
    assert latent_size(vae4, 24, 40) == (8, 12)
    with pytest.raises(ValueError):
        round_size(0, 16)


def test_config_validation():
    with pytest.raises(ValueError, match="3 or 4 entries"):
        VAEConfig(block_out_channels=(8, 16), norm_num_groups=8)
    with pytest.raises(ValueError, match="must divide"):
        VAEConfig(block_out_channels=(8, 16, 12), norm_num_groups=8)
