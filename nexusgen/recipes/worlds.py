"""ShapesWorld plugged into training as the world "shapes" (`nexusgen.data.worlds`).

The data and train packages never import a world; the recipes, which train the bundled model on
ShapesWorld, register it here when `nexusgen.recipes` is imported. A training config selects it with
`data.world = "shapes"`; `data.world_options` are `nexusgen.worlds.shapes.SampleConfig` fields.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from nexusgen.data.worlds import Sample, SceneLabels, World, register_world
from nexusgen.worlds import shapes
from nexusgen.worlds.shapes.render import cell_labels


def _sampler(options: dict[str, Any]) -> Sample:
    config = shapes.SampleConfig.from_options(**options)  # ValueError for a bad option, before any sample

    def sample(index: int, seed: int) -> tuple[dict[str, Any], list[Image.Image]]:
        drawn = shapes.make_sample(index, seed=seed, config=config)
        record = drawn.to_record([f"<memory:{k}>" for k in range(len(drawn.images))])
        record["task"] = drawn.task  # checked against the task the image roles give
        return record, drawn.images

    return sample


def _render(index: int, seed: int, size_px: int) -> Image.Image:
    return shapes.render_scene(shapes.sample_scene(np.random.default_rng([seed, index])), size_px)


def _cells(scene: dict, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    return cell_labels(shapes.Scene.from_dict(scene), rows, cols)


SHAPES_WORLD = World(name="shapes", sampler=_sampler, render=_render,
                     scene_labels=SceneLabels(num_shapes=len(shapes.SHAPES), num_colors=len(shapes.COLORS),
                                              cells=_cells))
register_world(SHAPES_WORLD)
