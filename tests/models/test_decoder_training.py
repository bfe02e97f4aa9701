"""A tiny decoder trained for a few hundred steps on a handful of images reconstructs them.

Latents come from the (random) tiny VAE on four synthetic images; each image gets fixed random embeddings
(stand-ins for vision-encoder outputs). After training, sampling from each image's embeddings must land
far closer to that image's latents than the untrained decoder does, and closer to its own target than to
any other image's (no collapse to the mean). About 3 s per decoder on 2 CPU cores.
"""

import pytest
import torch

from nexusgen.flow import decoder_training_loss, euler_sample, guided_velocity, inference_sigmas
from nexusgen.flow.sampler import initial_noise
from nexusgen.models.decoder import DECODER_PRESETS, EditingDecoder, GenerationDecoder
from nexusgen.models.vae import VAE_PRESETS, build_vae, images_to_latents

TINY = DECODER_PRESETS["tiny"]
NUM_IMAGES = 4
TRAIN_STEPS = 400


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matmuls gain nothing from 2 threads, and on a shared, busy 2-core machine the second thread's
    spin-waiting makes this test 10-20x slower; one thread keeps it at a few seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _latents():
    torch.manual_seed(0)
    vae = build_vae(VAE_PRESETS["tiny"]).eval()
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 32), torch.linspace(0, 1, 32), indexing="ij")
    images = torch.stack([torch.stack([(xx * k) % 1, (yy * (k + 1)) % 1, (xx + yy) / 2 * (k % 2)])
                          for k in range(NUM_IMAGES)])  # (4, 3, 32, 32)
    with torch.no_grad():
        latents = images_to_latents(vae, images)  # (4, 16, 4, 4)
    return latents / latents.std()  # the random VAE's latents are tiny; give them unit scale


def _psnr(prediction, target):
    """Per-image PSNR (dB) with the target latents' range as the peak."""
    peak = target.max() - target.min()
    return 10 * torch.log10(peak**2 / (prediction - target).pow(2).flatten(1).mean(1))


def _sample(decoder, embeds, extra, latent_size, steps=8):
    decoder.eval()
    with torch.no_grad():
        condition = decoder.condition(embeds, latent_size=latent_size, **extra)
        velocity = guided_velocity(decoder, condition, None, 1.0, decoder.config.embedded_guidance)
        noise = initial_noise(embeds.shape[0], 16, latent_size, seed=0)
        result = euler_sample(velocity, noise, inference_sigmas(steps))
    decoder.train()
    return result


@pytest.mark.parametrize("kind", ["generation", "editing"])
def test_training_reconstructs_a_handful_of_images(kind):
    latents = _latents()
    embeds = torch.randn(NUM_IMAGES, 4, TINY.embed_dim)
    extra = {}
    if kind == "generation":
        decoder = GenerationDecoder(TINY)
    else:
        decoder = EditingDecoder(TINY)
        extra = dict(reference_embeds=torch.randn(NUM_IMAGES, 9, TINY.embed_dim), reference_grid=(3, 3),
                     target_grid=(2, 2))
    latent_size = tuple(latents.shape[-2:])
    untrained = _psnr(_sample(decoder, embeds, extra, latent_size), latents)

    optimizer = torch.optim.AdamW(decoder.parameters(), lr=2e-3, weight_decay=0.0)
    generator = torch.Generator().manual_seed(0)
    for _ in range(TRAIN_STEPS):
        loss = decoder_training_loss(decoder, latents, embeds, generator=generator, **extra)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    samples = _sample(decoder, embeds, extra, latent_size)
    trained = _psnr(samples, latents)
    assert float(trained.min()) > float(untrained.max()) + 6, (untrained, trained)
    distances = torch.cdist(samples.flatten(1), latents.flatten(1))  # (4, 4)
    assert torch.equal(distances.argmin(dim=1), torch.arange(NUM_IMAGES))
