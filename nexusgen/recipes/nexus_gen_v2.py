"""Fine-tuning recipes for the released Nexus-GenV2, with the upstream hyper-parameters (docs/upstream.md §3.1-3.3).

They need the user's data: `--set data.paths='["my.jsonl"]'` (message JSONL; for the decoders also the
embedding JSONLs of `nexusgen prepare-embeds`), `--image-root DIR` where its paths are relative to another
folder (the official files: their repository root), and the model: `--set stage.parent=MODEL_DIR`.
Global batch 128 as upstream (8 GPUs x 2 x 8 accumulation for AR, 8 x 1 x 16 for the decoders).
"""

from __future__ import annotations

from nexusgen.train.config import (
    CheckpointConfig,
    DataConfig,
    DistConfig,
    OptimConfig,
    ScheduleConfig,
    StageConfig,
    TrainConfig,
)


def nexus_gen_v2_ar() -> TrainConfig:
    """Phase 1 fine-tune: full LLM + heads, ViT frozen, w_tok = w_img = 3.0, lr 1e-5 cosine, 5% warm-up."""
    max_steps = 2000
    return TrainConfig(
        stage=StageConfig(name="ar", preset="nexus-gen-v2", parent=None, gradient_checkpointing=True,
                          loss_weights={"token": 3.0, "image": 3.0}),
        max_steps=max_steps, batch_size=128, lr=1e-5, save_every=1000, log_every=10,
        precision="auto", deterministic=False,
        optim=OptimConfig(grad_clip=1.0, weight_decay=0.0, grad_accum_steps=8),
        schedule=ScheduleConfig(kind="cosine", warmup_steps=max_steps // 20, min_lr_ratio=0.0),
        checkpoint=CheckpointConfig(keep_last=2), dist=DistConfig(strategy="fsdp"),
        data=DataConfig(source="jsonl"))


def _decoder(stage: str) -> TrainConfig:
    return TrainConfig(
        stage=StageConfig(name=stage, preset="nexus-gen-v2", gradient_checkpointing=True),
        max_steps=4000, batch_size=128, lr=1e-5, save_every=500, log_every=10,
        precision="auto", deterministic=False,
        optim=OptimConfig(grad_clip=1.0, weight_decay=0.0, grad_accum_steps=16),
        schedule=ScheduleConfig(kind="constant", warmup_steps=100),
        checkpoint=CheckpointConfig(keep_last=2), dist=DistConfig(strategy="fsdp"),
        data=DataConfig(source="jsonl", image_size_px=512))


def nexus_gen_v2_generation_decoder() -> TrainConfig:
    """Phase 2 fine-tune: adapter + DiT on ground-truth embeddings, lr 1e-5 constant after 100 steps."""
    return _decoder("generation_decoder")


def nexus_gen_v2_editing_decoder() -> TrainConfig:
    """Phase 3 fine-tune: merger + DiT on (predicted target, source) embeddings, as phase 2 otherwise; the
    source is resized to 504 x 504 for the reference, as upstream prepares it."""
    config = _decoder("editing_decoder")
    config.data.reference_image_px = 504
    return config
