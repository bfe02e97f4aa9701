"""Training stages: one module per stage, each exposing `build(config, info) -> Stage`.

The loop (`train/loop.py`) is the same for all of them; a stage only says what is trained, on what
data and with which losses.
"""

from __future__ import annotations

import importlib

from nexusgen.train.config import STAGES, TrainConfig
from nexusgen.train.parallel import DistInfo
from nexusgen.train.stages.common import Stage, set_trainable
from nexusgen.train.stages.parent import check_parent


def build_stage(config: TrainConfig, info: DistInfo) -> Stage:
    """Build the stage named by `config.stage.name`, then apply `stage.trainable` if it is given."""
    if config.stage.name not in STAGES:
        raise ValueError(f"unknown stage {config.stage.name!r}; known: {STAGES}")
    check_parent(config.stage.name, config.stage.parent, config.stage.ar_parent)  # before data and models: one line
    stage = importlib.import_module(f"nexusgen.train.stages.{config.stage.name}").build(config, info)
    if config.stage.trainable:
        set_trainable(stage.module, config.stage.trainable)
    return stage


__all__ = ["Stage", "build_stage"]
