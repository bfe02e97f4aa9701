"""Stage `ar` (Nexus-Gen phase 1, docs/upstream.md §3.1): the autoregressive model learns to answer in text and to
predict image embeddings, on understanding + generation + editing samples.

ViT frozen; LLM, LM head, vision head and prefill table trainable; loss
w_tok * CE + w_img * (0.5 * MSE + 0.5 * (1 - cos)) from `NexusGenARModel.training_loss`, on batches
from `nexusgen.data.collate.collate_ar`. Stage `vlm` (vlm.py) reuses this file with other defaults.
"""

from __future__ import annotations

from pathlib import Path

import torch

from nexusgen.train.config import TrainConfig
from nexusgen.train.parallel import DistInfo
from nexusgen.train.stages import parts
from nexusgen.train.stages.common import (
    LOSS_TOTALS,
    SampleStream,
    Stage,
    generated_messages,
    message_files,
    set_trainable,
)

DEFAULT_LOSS_WEIGHTS = {"token": 1.0, "image": 1.0}
# Module-name prefixes (under the training module's `model.`) of the trainable parts.
AR_TRAINABLE = ("model.vlm.model.language_model", "model.vlm.lm_head", "model.vision_head",
                "model.image_prefill_embeds")


class ARTrainModule(torch.nn.Module):
    """forward(batch) -> {"loss", "ce", "image_loss", "image_mse", "image_cos"}, plus "ce_images_rolled"
    when gradients are off (the loop's evaluation; see `rolled_image_ce`)."""

    def __init__(self, model, weights: dict[str, float], ce_reduction: str = "token"):
        super().__init__()
        self.model = model
        self.token_weight, self.image_weight = weights["token"], weights["image"]
        self.ce_reduction = ce_reduction

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        out = self.model.training_loss(batch, token_weight=self.token_weight, image_weight=self.image_weight,
                                       ce_reduction=self.ce_reduction, totals=batch.get(LOSS_TOTALS))
        return self.with_diagnostics(out, batch)

    def loss_units(self, batch: dict) -> dict[str, int]:
        """`Stage.loss_units`: answer tokens, samples with an answer, image-regression tokens."""
        return self.model.loss_units(batch["labels"])

    def with_diagnostics(self, out: dict, batch: dict) -> dict:
        if not torch.is_grad_enabled():
            rolled = rolled_image_ce(self.model, batch)
            if rolled is not None:
                out["ce_images_rolled"] = rolled
        return out


def rolled_image_ce(model, batch: dict) -> torch.Tensor | None:
    """CE with every input image moved to the next sample that has an input image of the same grid.

    Does the model look? `ce_images_rolled - ce` is ~0 for a model that ignores its input images (what a
    from-scratch run showed before stage vlm had its pixel loss) and grows as answers come to depend on
    them. None if no two input images share a grid.
    """
    grids = batch.get("image_grid_thw")
    if grids is None or grids.numel() == 0:
        return None
    chunks = list(torch.split(batch["pixel_values"], grids.prod(-1).tolist()))
    inputs = [i for i in range(len(chunks)) if not batch["image_is_target"][i]]
    moved = False
    for grid in {tuple(grids[i].tolist()) for i in inputs}:
        same = [i for i in inputs if tuple(grids[i].tolist()) == grid]
        if len(same) > 1:
            originals = [chunks[i] for i in same]
            for k, i in enumerate(same):
                chunks[i] = originals[k - 1]
            moved = True
    if not moved:
        return None
    return model.training_loss({**batch, "pixel_values": torch.cat(chunks)}, image_weight=0.0,
                               totals=batch.get(LOSS_TOTALS))["ce"]


def message_sources(config: TrainConfig) -> list:
    """Message-format sources: JSONL files, or in-memory synthetic samples of `data.tasks`."""
    d = config.data
    if d.source == "embeds":
        raise ValueError(f"stage {config.stage.name} reads message JSONL (data.source=jsonl); precomputed "
                         "embeddings (data.source=embeds) are for the decoder stages")
    return message_files(config) if d.uses_files else generated_messages(config)


def make_collate(processor):
    from nexusgen.data.collate import collate_ar

    def collate(samples: list[dict]) -> dict:
        batch = collate_ar(samples, processor.tokenizer, processor.image_processor, processor.config)
        batch["position"] = torch.tensor([s["position"] for s in samples])
        return batch

    return collate


def count(batch: dict) -> dict[str, int]:
    return {"samples": int(batch["input_ids"].shape[0]), "tokens": int(batch["attention_mask"].sum())}


def build_ar_stage(config: TrainConfig, info: DistInfo, *, trainable, default_weights: dict,
                   module_class=ARTrainModule, make_stage_collate=make_collate) -> Stage:
    """Shared by `ar` and `vlm`: the AR model (parent or preset), its trainable parts and loss weights;
    `module_class(model, weights, ce_reduction=...)` is the training module, `make_stage_collate(processor)`
    the collate."""
    weights = {**default_weights, **config.stage.loss_weights}
    if set(weights) != set(default_weights):
        raise ValueError(f"{config.stage.name} loss terms are {sorted(default_weights)}, got {sorted(weights)}")
    sources = message_sources(config)  # before the model: a data error must not wait for a 7B build
    model, processor = parts.build_autoregressive(config, for_training=True)
    if config.stage.gradient_checkpointing:
        model.vlm.gradient_checkpointing_enable()
    module = module_class(model, weights, ce_reduction=config.stage.ce_reduction).to(info.device)
    set_trainable(module, trainable)
    vlm = model.vlm.model

    def export(trained: ARTrainModule, out_dir) -> None:
        parts.save_autoregressive(trained.model, processor, Path(out_dir))
        parts.copy_untouched_parts(config, Path(out_dir), {"autoregressive"})

    stream = SampleStream(sources, config.data.weights, seed=config.seed)
    return Stage(module=module, stream=stream, collate=make_stage_collate(processor), export=export, count=count,
                 loss_units=module.loss_units, shard_units=[*vlm.language_model.layers, *vlm.visual.blocks])


def build(config: TrainConfig, info: DistInfo) -> Stage:
    return build_ar_stage(config, info, trainable=AR_TRAINABLE, default_weights=DEFAULT_LOSS_WEIGHTS)
