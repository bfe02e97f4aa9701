"""Per-token scene labels of a world's images: what each LLM image token's cell shows.

Stage `vlm` supervises the vision encoder with them (`nexusgen/train/stages/vlm.py`): a from-scratch ViT
learns colours and places from the language loss alone but not shapes, whose evidence is spread over
several tokens. Samples of a world with scene labels (ShapesWorld) carry their scene graphs
(`meta["scenes"]`, one per image), so the label of every token is exact; the world's `SceneLabels`
(`nexusgen.data.worlds`) turn a scene graph into cell classes.
"""

from __future__ import annotations

import torch

from nexusgen.data.worlds import SceneLabels

IGNORE = -100


def token_labels(samples: list[dict], image_grid_thw: torch.Tensor, merge_size: int,
                 labels: SceneLabels) -> torch.Tensor:
    """(T, 2) int64 [shape class, colour class] for every LLM image token of a collated batch.

    Args:
        samples: the batch's samples, in collate order; a sample's `meta["scenes"]` (if any) holds one
            scene dict per image, in `<image>` order.
        image_grid_thw: (I, 3) patch grids of all images, sample by sample (as `collate_ar` orders them).
        merge_size: patches per token side.
        labels: the world's cell labels.

    Returns:
        Classes of `labels` with one extra background class last (`labels.num_classes`); `IGNORE` for every
        token of an image without a scene graph.
    """
    scenes = []
    for sample in samples:
        per_image = (sample.get("meta") or {}).get("scenes")
        count = len(sample.get("images") or [])
        scenes += per_image if per_image is not None and len(per_image) == count else [None] * count
    if len(scenes) != image_grid_thw.shape[0]:
        raise ValueError(f"{len(scenes)} images in the samples but {image_grid_thw.shape[0]} grids")
    background = torch.tensor([labels.num_shapes, labels.num_colors])
    rows = []
    for scene, (_, height, width) in zip(scenes, image_grid_thw.tolist(), strict=True):
        grid = (height // merge_size, width // merge_size)
        if scene is None:
            rows.append(torch.full((grid[0] * grid[1], 2), IGNORE, dtype=torch.int64))
            continue
        shapes, colors = labels.cells(scene, *grid)
        cells = torch.stack([torch.from_numpy(shapes), torch.from_numpy(colors)], dim=1)
        cells[cells[:, 0] < 0] = background
        rows.append(cells)
    return torch.cat(rows) if rows else torch.zeros(0, 2, dtype=torch.int64)
