"""The VAE of the decoders: a FLUX-style diffusers ``AutoencoderKL``, its presets, latents and their packing.

Pixels <-> latents: `images_to_latents` scales the posterior's latents as ``(z - shift_factor) *
scaling_factor`` (the FLUX convention) and `latents_to_images` inverts it; the DiT never sees pixels. The
DiT reads a latent as tokens of 2 x 2 latent cells (`pack_latents`), so an image side is a multiple of
``2 * downsample_factor(vae)`` (16 for the FLUX VAE's 8x downsampling), never less than `SIZE_MULTIPLE`.

Shape legend: B batch, c latent channels (16), h x w latent size, f VAE downsampling (8 or 4),
L = (h/2)(w/2) image tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL

SIZE_MULTIPLE = 16
"""Image sides are rounded up to this at least: VAE /8, then the DiT packs 2x2 latent patches into one token."""


@dataclass
class VAEConfig:
    """A FLUX-style diffusers ``AutoencoderKL`` (no quant convs; 8x downsampling with 4 blocks as FLUX, or 4x
    with 3 blocks for small images)."""

    latent_channels: int = 16
    """c: latent channels (16 for FLUX)."""
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    """Channels per resolution; len 4 gives the /8 of FLUX, len 3 a /4 VAE (small images keep detail)."""
    layers_per_block: int = 2
    """ResNet blocks per resolution in the encoder (the decoder has one more)."""
    norm_num_groups: int = 32
    """GroupNorm groups; must divide every channel count."""
    scaling_factor: float = 0.3611
    """Latents are ``(z - shift_factor) * scaling_factor`` (FLUX values)."""
    shift_factor: float = 0.1159

    def __post_init__(self):
        self.block_out_channels = tuple(int(c) for c in self.block_out_channels)
        if len(self.block_out_channels) not in (3, 4):
            raise ValueError(f"block_out_channels must have 3 or 4 entries (4x or 8x downsampling), "
                             f"got {self.block_out_channels}")
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ValueError(f"norm_num_groups {self.norm_num_groups} must divide {self.block_out_channels}")


VAE_PRESETS: dict[str, VAEConfig] = {
    "tiny": VAEConfig(block_out_channels=(8, 16, 32, 32), layers_per_block=1, norm_num_groups=8),
    "mid": VAEConfig(block_out_channels=(16, 32, 64, 64), layers_per_block=1, norm_num_groups=8),
    # /4 for 64-px ShapesWorld images: a 16x16x16 latent keeps edges sharp (64 DiT tokens).
    "shapes-mini": VAEConfig(block_out_channels=(32, 64, 64), layers_per_block=1, norm_num_groups=8),
    "nexus-gen-v2": VAEConfig(),  # FLUX.1-dev ae.safetensors
}


def build_vae(config: VAEConfig) -> AutoencoderKL:
    """A randomly initialised diffusers ``AutoencoderKL`` with the FLUX layout described by `config`."""
    blocks = len(config.block_out_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=config.latent_channels,
        down_block_types=("DownEncoderBlock2D",) * blocks, up_block_types=("UpDecoderBlock2D",) * blocks,
        block_out_channels=config.block_out_channels, layers_per_block=config.layers_per_block,
        norm_num_groups=config.norm_num_groups, scaling_factor=config.scaling_factor,
        shift_factor=config.shift_factor, use_quant_conv=False, use_post_quant_conv=False)


def images_to_latents(vae: AutoencoderKL, images: torch.Tensor, generator: torch.Generator | None = None,
                  sample: bool = False) -> torch.Tensor:
    """Scaled latents of images: what the decoders are trained to produce.

    Args:
        vae: diffusers ``AutoencoderKL``.
        images: (B, 3, H, W) in [0, 1], H and W multiples of 8.
        generator: used only when `sample` is True.
        sample: draw from the posterior instead of taking its mean (upstream takes the mean).

    Returns:
        (B, c, H/f, W/f) latents (f = 8 for 4 blocks, 4 for 3) ``(z - shift_factor) * scaling_factor``
        in the VAE's dtype.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
    parameter = next(vae.parameters())
    pixels = images.to(device=parameter.device, dtype=parameter.dtype) * 2 - 1  # [-1, 1]
    posterior = vae.encode(pixels).latent_dist
    z = posterior.sample(generator) if sample else posterior.mode()
    return (z - vae.config.shift_factor) * vae.config.scaling_factor


def latents_to_images(vae: AutoencoderKL, latents: torch.Tensor) -> torch.Tensor:
    """Images from scaled latents (B, c, h, w) -> (B, 3, f*h, f*w) float32 in [0, 1], f = `downsample_factor`.

    The one decoding step of every image nexusgen draws: the sampler returns latents, the pipelines call this.
    On the CPU images are decoded one at a time: the convolutions and group norms pick their kernels by batch
    size, so a batched decode would make an image's last bits depend on its batch (this costs throughput:
    docs/batch.md). On a GPU the batched kernels differ by shape anyway (`nexusgen.models.batch_invariance`),
    so the batch is decoded at once.
    """
    parameter = next(vae.parameters())
    latents = latents.to(device=parameter.device, dtype=parameter.dtype)
    scaled = latents / vae.config.scaling_factor + vae.config.shift_factor
    if scaled.device.type != "cpu":
        pixels = vae.decode(scaled).sample
    else:
        pixels = torch.cat([vae.decode(scaled[b:b + 1]).sample for b in range(scaled.shape[0])])
    return (pixels.float() / 2 + 0.5).clamp(0, 1)


def downsample_factor(vae: AutoencoderKL) -> int:
    """Pixels per latent cell: 2 ** (number of blocks - 1) (8 for the FLUX VAE)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def round_size(height: int, width: int, multiple: int = SIZE_MULTIPLE) -> tuple[int, int]:
    """Round an image size up to multiples of `multiple` (16 as upstream: VAE /8 times the DiT's 2x2
    packing). Raises ValueError for sizes < 1."""
    if height < 1 or width < 1:
        raise ValueError(f"height and width must be positive, got {height}x{width}")
    return (-(-height // multiple) * multiple, -(-width // multiple) * multiple)


def latent_size(vae: AutoencoderKL, height: int, width: int) -> tuple[int, int]:
    """(h, w) of the latent an image of about `height` x `width` pixels is drawn in: the size rounded up to
    multiples of max(16, 2 f), divided by f (the drawn image is `f * h` x `f * w`)."""
    down = downsample_factor(vae)
    height, width = round_size(height, width, max(SIZE_MULTIPLE, 2 * down))
    return height // down, width // down


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """(B, c, h, w) -> (B, (h/2)(w/2), 4c): 2x2 latent patches, raster order, channel-major (as FLUX)."""
    B, c, h, w = latents.shape
    if h % 2 or w % 2:
        raise ValueError(f"latent size must be even, got {h}x{w}")
    x = latents.view(B, c, h // 2, 2, w // 2, 2)  # (B, c, h/2, 2, w/2, 2)
    x = x.permute(0, 2, 4, 1, 3, 5)  # (B, h/2, w/2, c, 2, 2)
    return x.reshape(B, (h // 2) * (w // 2), c * 4)  # (B, L, 4c)


def unpack_latents(tokens: torch.Tensor, latent_size: tuple[int, int]) -> torch.Tensor:
    """Inverse of `pack_latents`: (B, L, 4c) -> (B, c, h, w)."""
    B, L, packed = tokens.shape
    h, w = latent_size
    x = tokens.view(B, h // 2, w // 2, packed // 4, 2, 2)  # (B, h/2, w/2, c, 2, 2)
    x = x.permute(0, 3, 1, 4, 2, 5)  # (B, c, h/2, 2, w/2, 2)
    return x.reshape(B, packed // 4, h, w)
