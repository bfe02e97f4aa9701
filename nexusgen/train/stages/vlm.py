"""Stage `vlm` (from-scratch models only): understanding pre-training that makes the vision encoder
semantic -- the role Qwen2.5-VL's own pre-training plays for the real model (docs/architecture.md §5).

Loss  w_tok * CE + w_pix * MSE(pixel_head(token), the token's pixels)
      + w_sem * [CE(shape_head(token), shape in the token's cell) + CE(colour_head(token), colour)]
on understanding / caption samples; the ViT (with its merger), the LLM and the LM head are trained; the
vision head and prefill table are left for stage `ar`. The two auxiliary terms are ours, both measured on
shapes-mini:
* pixels: with CE alone a from-scratch ViT collapsed to an image-independent vector within a few hundred
  steps and the LLM never learned to look (CE with the batch's images permuted equalled CE with the right
  ones to 1e-4 after 2,500 steps). Reconstructing each token's 16 x 16 pixels keeps the image in the
  tokens, and the decoders later need that appearance too.
* semantic (a world with scene labels, `data.scene_labels`; the heads exist only then): with CE + pixels
  the model read
  colours, counts and places from the image after 5,000 steps but not shapes (per-word caption CE ~1.4
  nats on shape words, ~0.1 on colours): a shape's evidence is spread over several pixel-coded tokens.
  Per-token labels make the tokens say what they show, as a pre-trained encoder's do.
The heads are training-only modules; the export holds the AR model alone. Watch
`eval/ce_images_rolled - eval/ce` in metrics.jsonl: it is ~0 while the model ignores its images.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from nexusgen.data.scene_labels import IGNORE, token_labels
from nexusgen.data.worlds import SYNTHETIC, SceneLabels, get_world
from nexusgen.train.config import TrainConfig
from nexusgen.train.parallel import DistInfo
from nexusgen.train.stages.ar import ARTrainModule, build_ar_stage, make_collate
from nexusgen.train.stages.common import LOSS_TOTALS, Stage, total

VLM_TRAINABLE = ("model.vlm.model.visual", "model.vlm.model.language_model", "model.vlm.lm_head", "pixel_head")
SEMANTIC_HEADS = ("shape_head", "color_head")
"""Trainable too where the world has scene labels (the heads exist only then)."""
DEFAULT_LOSS_WEIGHTS = {"token": 1.0, "image": 0.0, "pixels": 1.0, "semantic": 1.0}


def token_pixels(pixel_values: torch.Tensor, vision_config) -> torch.Tensor:
    """The processor's patches regrouped per LLM image token: (P, patch_dim) -> (P / m^2, m^2 * patch_dim).

    The Qwen2-VL image processor emits the m x m patches of each merged token consecutively (in the
    order the ViT merger concatenates them), so a token's pixels are m^2 consecutive rows.
    """
    group = vision_config.spatial_merge_size ** 2
    if pixel_values.shape[0] % group:
        raise ValueError(f"{pixel_values.shape[0]} patches do not split into tokens of {group} patches")
    return pixel_values.reshape(pixel_values.shape[0] // group, -1)


class VLMTrainModule(ARTrainModule):
    """forward(batch) -> ARTrainModule's terms + "pixel_mse" and "semantic_ce".

    Args:
        model: the `NexusGenARModel`.
        weights: loss weights (`DEFAULT_LOSS_WEIGHTS` keys).
        ce_reduction: "token" or "sample".
        label_classes: (shape classes, colour classes) of the world's scene labels; None (a world without
            them): no semantic heads, the term is zero.
    """

    def __init__(self, model, weights: dict[str, float], ce_reduction: str = "token",
                 label_classes: tuple[int, int] | None = None):
        super().__init__(model, weights, ce_reduction)
        self.pixel_weight = weights["pixels"]
        vision = model.vlm.config.vision_config
        patch_dim = vision.in_channels * vision.temporal_patch_size * vision.patch_size ** 2
        self.pixel_head = torch.nn.Linear(vision.out_hidden_size, vision.spatial_merge_size ** 2 * patch_dim)
        self.semantic_weight = weights["semantic"]
        self.shape_head = self.color_head = None
        if label_classes is not None:
            self.shape_head = torch.nn.Linear(vision.out_hidden_size, label_classes[0])
            self.color_head = torch.nn.Linear(vision.out_hidden_size, label_classes[1])

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        grids = batch.get("image_grid_thw")
        if grids is None or grids.numel() == 0:
            out = super().forward(batch)
            tokens = None
        else:
            per_image = self.model.encode_images(batch["pixel_values"], grids)
            out = self.model.training_loss(batch, token_weight=self.token_weight, image_weight=self.image_weight,
                                           image_embeds=per_image, ce_reduction=self.ce_reduction,
                                           totals=batch.get(LOSS_TOTALS))
            tokens = torch.cat(per_image)
        pixel_mse = self._pixel_mse(tokens, batch)
        semantic = self._semantic_ce(tokens, batch)
        out["loss"] = out["loss"] + self.pixel_weight * pixel_mse + self.semantic_weight * semantic
        out["pixel_mse"], out["semantic_ce"] = pixel_mse.detach(), semantic.detach()
        return self.with_diagnostics(out, batch)

    def loss_units(self, batch: dict) -> dict[str, int]:
        """The AR units plus the ViT tokens (pixel loss) and the labelled tokens per semantic head."""
        units = super().loss_units(batch)
        grids = batch.get("image_grid_thw")
        merge = self.model.vlm.config.vision_config.spatial_merge_size
        units["vision_tokens"] = int(grids.prod(-1).sum()) // merge ** 2 if grids is not None else 0
        labels = batch.get("token_labels")
        for column, unit in enumerate(("shape_labels", "color_labels")):
            units[unit] = int((labels[:, column] != IGNORE).sum()) if labels is not None else 0
        return units

    def _pixel_mse(self, tokens, batch: dict) -> torch.Tensor:
        if tokens is None:
            return 0.0 * self.pixel_head.weight.sum()  # keeps the head in the graph (DDP/FSDP)
        target = token_pixels(batch["pixel_values"], self.model.vlm.config.vision_config).float()
        squared = (self.pixel_head(tokens).float() - target).pow(2).sum()
        return squared / (total(batch, "vision_tokens", tokens.shape[0]) * target.shape[-1])

    def _semantic_ce(self, tokens, batch: dict) -> torch.Tensor:
        """Shape + colour classification of each token's cell (`data.scene_labels`); 0 without labels."""
        labels = batch.get("token_labels")
        if self.shape_head is None:
            return torch.zeros((), device=self.pixel_head.weight.device)
        if tokens is None or labels is None or not (labels != IGNORE).any():
            return 0.0 * (self.shape_head.weight.sum() + self.color_head.weight.sum())
        terms = []
        for column, (head, unit) in enumerate(((self.shape_head, "shape_labels"), (self.color_head, "color_labels"))):
            wanted = labels[:, column]
            summed = F.cross_entropy(head(tokens).float(), wanted, ignore_index=IGNORE, reduction="sum")
            terms.append(summed / total(batch, unit, int((wanted != IGNORE).sum())))
        return terms[0] + terms[1]


def make_vlm_collate(processor, labels: SceneLabels | None):
    """The AR collate plus `token_labels` (T, 2) from the samples' scene graphs, where the world has labels
    and the samples have scene graphs."""
    collate = make_collate(processor)
    merge = processor.image_processor.merge_size

    def collate_with_labels(samples: list[dict]) -> dict:
        batch = collate(samples)
        grids = batch.get("image_grid_thw")
        if labels is not None and grids is not None and grids.numel():
            batch["token_labels"] = token_labels(samples, grids, merge, labels)
        return batch

    return collate_with_labels


def scene_labels(config: TrainConfig) -> SceneLabels | None:
    """The scene labels of the configured world (None for the built-in synthetic world)."""
    return None if config.data.world == SYNTHETIC else get_world(config.data.world).scene_labels


def build(config: TrainConfig, info: DistInfo) -> Stage:
    labels = scene_labels(config)
    classes = labels.num_classes if labels is not None else None
    trainable = VLM_TRAINABLE + (SEMANTIC_HEADS if labels is not None else ())
    return build_ar_stage(config, info, trainable=trainable, default_weights=DEFAULT_LOSS_WEIGHTS,
                          module_class=functools.partial(VLMTrainModule, label_classes=classes),
                          make_stage_collate=functools.partial(make_vlm_collate, labels=labels))
