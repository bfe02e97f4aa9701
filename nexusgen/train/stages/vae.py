"""Stage `vae`: train a diffusers AutoencoderKL from scratch by reconstruction (from-scratch models only).

Loss: w_l1 * L1 + w_mse * MSE on pixels in [-1, 1] + w_kl * KL(q(z|x) || N(0, I)) per latent element,
each a mean over the global batch's pixels / latent elements.
The posterior sample z = mean + std * eps uses per-sample noise (see stages/common.py), so the loss
of a batch does not depend on how the batch is split across ranks.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from nexusgen.data.worlds import SYNTHETIC, World, get_world
from nexusgen.train.config import TrainConfig
from nexusgen.train.parallel import DistInfo
from nexusgen.train.stages import parts
from nexusgen.train.stages.common import (
    SampleStream,
    Stage,
    message_files,
    per_sample_randn,
    sample_generators,
    samples_units,
    total,
)

DEFAULT_LOSS_WEIGHTS = {"l1": 1.0, "mse": 0.0, "kl": 1e-6}


class GeneratedImages:
    """Procedural images: a background colour with 1-3 axis-aligned rectangles and discs.

    Deterministic per index (generator seeded by (seed, index)): the images of the built-in "synthetic"
    world.
    Each sample: {"image": float32 (3, size, size) in [-1, 1]}.
    """

    def __init__(self, num_samples: int, size: int, seed: int):
        self.num_samples, self.size, self.seed = num_samples, size, seed

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.num_samples:
            raise IndexError(index)
        g = torch.Generator().manual_seed(self.seed * 7_368_787 + index)
        s = self.size
        image = torch.rand(3, 1, 1, generator=g).expand(3, s, s).clone()
        yy, xx = torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")
        for _ in range(int(torch.randint(1, 4, (), generator=g))):
            color = torch.rand(3, 1, 1, generator=g)
            cy, cx, r = (torch.rand(3, generator=g) * torch.tensor([s, s, s / 3])).tolist()
            r = max(r, s / 10)
            if torch.rand((), generator=g) < 0.5:
                mask = ((yy - cy) ** 2 + (xx - cx) ** 2) <= r * r
            else:
                mask = ((yy - cy).abs() <= r) & ((xx - cx).abs() <= r)
            image = torch.where(mask, color, image)
        return {"image": image * 2 - 1}


class WorldImages(GeneratedImages):
    """Scenes of a registered world (`nexusgen.data.worlds`), deterministic per (seed, index)."""

    _cache_limit = 4096
    """Rendered images are kept (deterministic per index; supersampled rendering costs more than a
    tiny training step)."""

    def __init__(self, world: World, num_samples: int, size: int, seed: int):
        super().__init__(num_samples, size, seed)
        self.world = world

    def __getitem__(self, index: int) -> dict:
        import numpy as np

        if not 0 <= index < self.num_samples:
            raise IndexError(index)
        cache = self.__dict__.setdefault("_cache", {})
        if index not in cache:
            rendered = self.world.render(index, self.seed, self.size)
            pixels = np.asarray(rendered.convert("RGB"), dtype=np.float32)
            image = torch.from_numpy(pixels).permute(2, 0, 1) / 127.5 - 1.0
            if len(cache) >= self._cache_limit:
                return {"image": image}
            cache[index] = image
        return {"image": cache[index]}


def image_sources(config: TrainConfig) -> list:
    """The stage's image sources: generated (the built-in shapes, or `data.world`'s scenes) or message-JSONL
    target images."""
    d = config.data
    if d.source == "embeds":
        raise ValueError("the vae stage reads images (data.source=jsonl), not precomputed embeddings")
    if d.uses_files:
        return [JsonlImages(dataset, d.image_size_px) for dataset in message_files(config)]
    if d.world == SYNTHETIC:
        return [GeneratedImages(d.num_samples, d.image_size_px, config.seed)]
    return [WorldImages(get_world(d.world), d.num_samples, d.image_size_px, config.seed)]


class JsonlImages:
    """Every sample's first image, resized to a square of `size` px, as a tensor in [-1, 1]."""

    def __init__(self, dataset, size: int):
        self.dataset, self.size = dataset, size

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        import numpy as np

        image = self.dataset[index]["images"][0].convert("RGB").resize((self.size, self.size))
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)
        return {"image": pixels / 127.5 - 1.0}


class VAETrainModule(torch.nn.Module):
    """forward(batch) -> {"loss", "l1", "mse", "kl"}; batch["image"]: (B, 3, H, W) in [-1, 1]."""

    def __init__(self, vae, loss_weights: dict[str, float], seed: int):
        super().__init__()
        self.vae = vae
        self.loss_weights, self.seed = loss_weights, seed

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        images = batch["image"]                                             # (B, 3, H, W)
        posterior = self.vae.encode(images).latent_dist
        generators = sample_generators(batch["position"].tolist(), self.seed)
        eps = per_sample_randn(posterior.mean.shape[1:], generators, device=images.device)
        latents = posterior.mean + posterior.std * eps                      # (B, C, H/8, W/8)
        recon = self.vae.decode(latents).sample                             # (B, 3, H, W)
        samples = total(batch, "samples", images.shape[0])                  # the global batch's count
        pixels = samples * math.prod(images.shape[1:])
        l1 = (recon - images).abs().sum() / pixels
        mse = (recon - images).pow(2).sum() / pixels
        kl = posterior.kl().sum() / (samples * math.prod(posterior.mean.shape[1:]))  # per latent element
        w = self.loss_weights
        loss = w["l1"] * l1 + w["mse"] * mse + w["kl"] * kl
        return {"loss": loss, "l1": l1, "mse": mse, "kl": kl}


def collate(samples: list[dict]) -> dict:
    return {"image": torch.stack([s["image"] for s in samples]),
            "position": torch.tensor([s["position"] for s in samples])}


def export(module: VAETrainModule, out_dir) -> None:
    """Write the VAE as the `vae/` part of a model folder (diffusers format)."""
    module.vae.save_pretrained(str(Path(out_dir) / "vae"), safe_serialization=True)


def build(config: TrainConfig, info: DistInfo) -> Stage:
    unknown = set(config.stage.loss_weights) - set(DEFAULT_LOSS_WEIGHTS)
    if unknown:
        raise ValueError(f"vae stage has no loss terms {sorted(unknown)}; "
                         f"it has {sorted(DEFAULT_LOSS_WEIGHTS)}")
    sources = image_sources(config)
    vae = parts.build_vae(config)
    if config.stage.gradient_checkpointing:
        vae.enable_gradient_checkpointing()
    vae.to(info.device).train()
    module = VAETrainModule(vae, {**DEFAULT_LOSS_WEIGHTS, **config.stage.loss_weights}, config.seed)
    stream = SampleStream(sources, config.data.weights, seed=config.seed)
    return Stage(module=module, stream=stream, collate=collate, export=export, loss_units=samples_units,
                 count=lambda batch: {"samples": len(batch["image"]), "images": len(batch["image"])})

