"""Tiny recipes: every stage at a CPU-sized preset on generated data, a few seconds per run.

Used by the smoke tests, the training benchmark and anyone checking an install. They are complete
configs: `nexusgen train tiny-vae --out RUN` needs nothing else.
"""

from __future__ import annotations

from nexusgen.train.config import (
    CheckpointConfig,
    DataConfig,
    OptimConfig,
    ScheduleConfig,
    StageConfig,
    TrainConfig,
)


def _tiny(stage: StageConfig, *, lr: float, image_size_px: int = 32, **data) -> TrainConfig:
    return TrainConfig(
        stage=stage, max_steps=20, batch_size=4, lr=lr, seed=0, save_every=10, log_every=1,
        optim=OptimConfig(grad_clip=1.0, weight_decay=0.0),
        schedule=ScheduleConfig(kind="constant", warmup_steps=2),
        checkpoint=CheckpointConfig(keep_last=2),
        data=DataConfig(num_samples=64, image_size_px=image_size_px, **data))


def tiny_vae() -> TrainConfig:
    """AutoencoderKL (8x down, 16 latent channels) on 32x32 ShapesWorld renders; L1 + tiny KL."""
    return _tiny(StageConfig(name="vae", preset="tiny", loss_weights={"l1": 1.0, "mse": 0.0, "kl": 1e-6}),
                 lr=1e-3, world="shapes")


def tiny_vlm() -> TrainConfig:
    """Understanding pre-training of a from-scratch tiny Qwen2.5-VL: CE only, ViT trainable."""
    return _tiny(StageConfig(name="vlm", preset="tiny"), lr=1e-3, image_size_px=56,
                 tasks=["understand"])


def tiny_ar() -> TrainConfig:
    """Phase 1 at tiny size: ViT frozen; LLM + vision head + prefill table; w_tok*CE + w_img*L_img."""
    return _tiny(StageConfig(name="ar", preset="tiny", loss_weights={"token": 1.0, "image": 1.0}),
                 lr=1e-3, image_size_px=56)


def tiny_generation_decoder() -> TrainConfig:
    """Phase 2 at tiny size: adapter + DiT reconstruct 32x32 images from ground-truth ViT embeddings."""
    return _tiny(StageConfig(name="generation_decoder", preset="tiny"), lr=1e-3, image_size_px=32,
                 tasks=["generate"])


def tiny_editing_decoder() -> TrainConfig:
    """Phase 3 at tiny size: merger + DiT from (predicted target, reference) embeddings."""
    return _tiny(StageConfig(name="editing_decoder", preset="tiny"), lr=1e-3, image_size_px=32,
                 tasks=["edit"])
