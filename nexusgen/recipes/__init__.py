"""Training recipes: Python functions returning complete `TrainConfig`s (STYLE rule 10).

`RECIPES` maps the name given to `nexusgen train` to the function. Every stage has a `tiny-<stage>`
recipe that runs on generated data in seconds.
"""

from __future__ import annotations

from collections.abc import Callable

from nexusgen.recipes import nexus_gen_v2, shapes_mini, tiny
from nexusgen.train.config import TrainConfig

RECIPES: dict[str, Callable[[], TrainConfig]] = {
    "tiny-vae": tiny.tiny_vae,
    "tiny-vlm": tiny.tiny_vlm,
    "tiny-ar": tiny.tiny_ar,
    "tiny-gen_decoder": tiny.tiny_gen_decoder,
    "tiny-edit_decoder": tiny.tiny_edit_decoder,
    "nexus-gen-v2-ar": nexus_gen_v2.nexus_gen_v2_ar,
    "nexus-gen-v2-gen_decoder": nexus_gen_v2.nexus_gen_v2_gen_decoder,
    "nexus-gen-v2-edit_decoder": nexus_gen_v2.nexus_gen_v2_edit_decoder,
    **{f"shapes-mini-{stage}": make for stage, make in {**shapes_mini.STAGES, **shapes_mini.EXPERIMENTS}.items()},
}

PIPELINES: dict[str, dict[str, Callable[[], TrainConfig]]] = {
    "shapes-mini": shapes_mini.STAGES,
    "tiny": {"vae": tiny.tiny_vae, "vlm": tiny.tiny_vlm, "ar": tiny.tiny_ar,
             "gen_decoder": tiny.tiny_gen_decoder, "edit_decoder": tiny.tiny_edit_decoder},
    "nexus-gen-v2": {"ar": nexus_gen_v2.nexus_gen_v2_ar, "gen_decoder": nexus_gen_v2.nexus_gen_v2_gen_decoder,
                     "edit_decoder": nexus_gen_v2.nexus_gen_v2_edit_decoder},
}
"""Multi-stage recipes (train/pipeline.py): stage name -> recipe, in training order."""


def get_recipe(name: str) -> TrainConfig:
    """The config of recipe `name`; ValueError naming the known recipes otherwise."""
    if name not in RECIPES:
        known = ", ".join(sorted([*RECIPES, *PIPELINES]))
        raise ValueError(f"unknown recipe {name!r}; known: {known}")
    return RECIPES[name]()
