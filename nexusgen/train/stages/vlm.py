"""Stage `vlm` (from-scratch models only): understanding pre-training that makes the vision encoder
semantic -- the role Qwen2.5-VL's own pre-training plays for the real model (DESIGN.md stages).

CE only (image weight 0) on understanding / caption samples; the ViT (with its merger), the LLM and the
LM head are trained; the vision head and prefill table are left for stage `ar`.
"""

from __future__ import annotations

from nexusgen.train.config import TrainConfig
from nexusgen.train.parallel import DistInfo
from nexusgen.train.stages.ar import build_ar_stage
from nexusgen.train.stages.common import Stage

VLM_TRAINABLE = ("model.vlm.model.visual", "model.vlm.model.language_model", "model.vlm.lm_head")


def build(config: TrainConfig, info: DistInfo) -> Stage:
    return build_ar_stage(config, info, trainable=VLM_TRAINABLE, default_weights={"token": 1.0, "image": 0.0})
