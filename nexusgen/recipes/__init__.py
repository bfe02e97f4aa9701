"""Training recipes: Python functions returning complete `TrainConfig`s.

`RECIPES` maps the name given to `nexusgen train` to the function. Every stage has a `tiny-<stage>`
recipe that runs on generated data in seconds. The decoder stages' old names (`gen_decoder`,
`edit_decoder`) are accepted in recipe names for one release: `tiny-gen_decoder` is `tiny-generation_decoder`.
"""

from __future__ import annotations

from collections.abc import Callable

from nexusgen.recipes import nexus_gen_v2, shapes_mini, tiny, worlds  # noqa: F401 (worlds registers ShapesWorld)
from nexusgen.train.config import TrainConfig, apply_overrides, current_name

RECIPES: dict[str, Callable[[], TrainConfig]] = {
    "tiny-vae": tiny.tiny_vae,
    "tiny-vlm": tiny.tiny_vlm,
    "tiny-ar": tiny.tiny_ar,
    "tiny-generation_decoder": tiny.tiny_generation_decoder,
    "tiny-editing_decoder": tiny.tiny_editing_decoder,
    "nexus-gen-v2-ar": nexus_gen_v2.nexus_gen_v2_ar,
    "nexus-gen-v2-generation_decoder": nexus_gen_v2.nexus_gen_v2_generation_decoder,
    "nexus-gen-v2-editing_decoder": nexus_gen_v2.nexus_gen_v2_editing_decoder,
    **{f"shapes-mini-{stage}": make for stage, make in shapes_mini.STAGES.items()},
}

MULTI_STAGE_RECIPES: dict[str, dict[str, Callable[[], TrainConfig]]] = {
    "shapes-mini": shapes_mini.STAGES,
    "tiny": {"vae": tiny.tiny_vae, "vlm": tiny.tiny_vlm, "ar": tiny.tiny_ar,
             "generation_decoder": tiny.tiny_generation_decoder, "editing_decoder": tiny.tiny_editing_decoder},
    "nexus-gen-v2": {"ar": nexus_gen_v2.nexus_gen_v2_ar,
                     "generation_decoder": nexus_gen_v2.nexus_gen_v2_generation_decoder,
                     "editing_decoder": nexus_gen_v2.nexus_gen_v2_editing_decoder},
}
"""Multi-stage recipes (`nexusgen.train.multistage`): stage name -> recipe, in training order."""


def get_recipe(name: str) -> TrainConfig:
    """The config of recipe `name` (old decoder stage names accepted); ValueError naming the known recipes
    otherwise."""
    if current_name(name) not in RECIPES:
        known = ", ".join(sorted([*RECIPES, *MULTI_STAGE_RECIPES]))
        raise ValueError(f"unknown recipe {name!r}; known: {known}")
    return RECIPES[current_name(name)]()


def resolve_recipe(name: str, overrides: list[str]) -> TrainConfig:
    """Recipe `name` with the `--set key=value` overrides applied (ValueError for an unknown recipe or field)."""
    return apply_overrides(get_recipe(name), overrides)
