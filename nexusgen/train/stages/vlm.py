"""Stage `vlm` (from-scratch models only): understanding pre-training that makes the vision encoder
semantic -- the role Qwen2.5-VL's own pre-training plays for the real model (DESIGN.md stages).

Loss  w_tok * CE + w_pix * MSE(pixel_head(ViT token), the token's own pixels)  on understanding /
caption samples; the ViT (with its merger), the LLM and the LM head are trained; the vision head and
prefill table are left for stage `ar`. The pixel term is ours: with CE alone a from-scratch ViT
collapses to an image-independent vector within a few hundred steps (the language prior is learnt
first, and then nothing pulls image content through), and the LLM never learns to look -- measured on
shapes-mini: CE with the batch's images permuted equalled CE with the right ones to 1e-4 after 2,500
steps. Making each token reconstruct its 16 x 16 pixels keeps the image in the tokens until the LLM
starts to read them (after ~600 steps there). It is also what the decoders later need: the image
embeddings must carry appearance, not only answers. The pixel head is a training-only module; the
export holds the AR model alone. Watch `eval/ce_images_rolled - eval/ce` in metrics.jsonl (`--set
eval_every=250`): it is ~0 while the model ignores its images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nexusgen.train.config import TrainConfig
from nexusgen.train.parallel import DistInfo
from nexusgen.train.stages.ar import ARTrainModule, build_ar_stage
from nexusgen.train.stages.common import Stage

VLM_TRAINABLE = ("model.vlm.model.visual", "model.vlm.model.language_model", "model.vlm.lm_head", "pixel_head")
DEFAULT_LOSS_WEIGHTS = {"token": 1.0, "image": 0.0, "pixels": 1.0}


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
    """forward(batch) -> ARTrainModule's terms + "pixel_mse"."""

    def __init__(self, model, weights: dict[str, float]):
        super().__init__(model, weights)
        self.pixel_weight = weights["pixels"]
        vision = model.vlm.config.vision_config
        patch_dim = vision.in_channels * vision.temporal_patch_size * vision.patch_size ** 2
        self.pixel_head = torch.nn.Linear(vision.out_hidden_size, vision.spatial_merge_size ** 2 * patch_dim)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        grids = batch.get("image_grid_thw")
        if grids is None or grids.numel() == 0:
            out = super().forward(batch)
            pixel_mse = 0.0 * self.pixel_head.weight.sum()  # keeps the head in the graph (DDP/FSDP)
        else:
            per_image = self.model.encode_images(batch["pixel_values"], grids)
            out = self.model.training_loss(batch, token_weight=self.token_weight, image_weight=self.image_weight,
                                           image_embeds=per_image)
            predicted = self.pixel_head(torch.cat(per_image)).float()
            target = token_pixels(batch["pixel_values"], self.model.vlm.config.vision_config).float()
            pixel_mse = F.mse_loss(predicted, target)
        out["loss"] = out["loss"] + self.pixel_weight * pixel_mse
        out["pixel_mse"] = pixel_mse.detach()
        return self.with_diagnostics(out, batch)


def build(config: TrainConfig, info: DistInfo) -> Stage:
    return build_ar_stage(config, info, trainable=VLM_TRAINABLE, default_weights=DEFAULT_LOSS_WEIGHTS,
                          module_class=VLMTrainModule)
