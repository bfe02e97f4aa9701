"""Per-token scene labels of ShapesWorld images: what each LLM image token's cell shows.

Stage `vlm` supervises the vision encoder with them (`nexusgen/train/stages/vlm.py`): a from-scratch ViT
learns colours and places from the language loss alone but not shapes, whose evidence is spread over
several tokens. ShapesWorld samples carry their scene graphs (`meta["scenes"]`, one per image), so the
label of every token is exact.
"""

from __future__ import annotations

import torch

from nexusgen.worlds.shapes import COLORS, SHAPES, Scene
from nexusgen.worlds.shapes.render import cell_labels

IGNORE = -100
NUM_SHAPE_CLASSES = len(SHAPES) + 1  # + background
NUM_COLOR_CLASSES = len(COLORS) + 1
BACKGROUND_SHAPE, BACKGROUND_COLOR = len(SHAPES), len(COLORS)


def token_labels(samples: list[dict], image_grid_thw: torch.Tensor, merge_size: int) -> torch.Tensor:
    """(T, 2) int64 [shape class, colour class] for every LLM image token of a collated batch.

    Args:
        samples: the batch's samples, in collate order; a sample's `meta["scenes"]` (if any) holds one
            scene dict per image, in `<image>` order.
        image_grid_thw: (I, 3) patch grids of all images, sample by sample (as `collate_ar` orders them).
        merge_size: patches per token side.

    Returns:
        Classes index `SHAPES` / `COLORS` with one extra background class; `IGNORE` for every token of an
        image without a scene graph.
    """
    scenes = []
    for sample in samples:
        per_image = (sample.get("meta") or {}).get("scenes")
        count = len(sample.get("images") or [])
        scenes += per_image if per_image is not None and len(per_image) == count else [None] * count
    if len(scenes) != image_grid_thw.shape[0]:
        raise ValueError(f"{len(scenes)} images in the samples but {image_grid_thw.shape[0]} grids")
    rows = []
    for scene, (_, height, width) in zip(scenes, image_grid_thw.tolist(), strict=True):
        grid = (height // merge_size, width // merge_size)
        if scene is None:
            rows.append(torch.full((grid[0] * grid[1], 2), IGNORE, dtype=torch.int64))
            continue
        shapes, colors = cell_labels(Scene.from_dict(scene), *grid)
        labels = torch.stack([torch.from_numpy(shapes), torch.from_numpy(colors)], dim=1)
        labels[labels[:, 0] < 0] = torch.tensor([BACKGROUND_SHAPE, BACKGROUND_COLOR])
        rows.append(labels)
    return torch.cat(rows) if rows else torch.zeros(0, 2, dtype=torch.int64)
