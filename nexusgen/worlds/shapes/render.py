"""Deterministic anti-aliased rendering of ShapesWorld scenes with Pillow.

Objects are drawn at `supersample` times the output size and box-filtered down: every output pixel is
the exact area average of its sub-pixels, so edges are anti-aliased and a pixel on an object's border
is a blend of the object's colour and the background (which the detector relies on). Any output size
works; 64 px is the default, 128 and 256 are tested.

Shape geometry lives here once, in a unit box [-1, 1]^2 (y down), and is reused for the detector's
templates so the two can never disagree.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from .scene import COLORS, SHAPES, Scene

DEFAULT_SIZE = 64
SUPERSAMPLE = 4
# Half width of a cross's arms, relative to the half side of its box.
CROSS_ARM = 0.36

# Vertices in the unit box [-1, 1]^2, y down. The circle is drawn as an ellipse of the full box.
_POLYGONS: dict[str, list[tuple[float, float]]] = {
    "square": [(-1, -1), (1, -1), (1, 1), (-1, 1)],
    "triangle": [(0, -1), (1, 1), (-1, 1)],  # apex up, base on the box's bottom edge
    "diamond": [(0, -1), (1, 0), (0, 1), (-1, 0)],
    "cross": [(-CROSS_ARM, -1), (CROSS_ARM, -1), (CROSS_ARM, -CROSS_ARM), (1, -CROSS_ARM), (1, CROSS_ARM),
              (CROSS_ARM, CROSS_ARM), (CROSS_ARM, 1), (-CROSS_ARM, 1), (-CROSS_ARM, CROSS_ARM),
              (-1, CROSS_ARM), (-1, -CROSS_ARM), (-CROSS_ARM, -CROSS_ARM)],
}


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, half: float, fill) -> None:
    """Draw one filled shape centred at (cx, cy) px with box half side `half` px."""
    if shape == "circle":
        draw.ellipse([cx - half, cy - half, cx + half, cy + half], fill=fill)
        return
    points = [(cx + u * half, cy + v * half) for u, v in _POLYGONS[shape]]
    draw.polygon(points, fill=fill)


def render_scene(scene: Scene, size: int = DEFAULT_SIZE, *, supersample: int = SUPERSAMPLE) -> Image.Image:
    """Render `scene` as an RGB image of `size` x `size` pixels.

    Args:
        scene: the scene graph (normalised coordinates).
        size: output side in pixels (>= 16).
        supersample: sub-pixels per output pixel along each axis (anti-aliasing quality).

    Returns:
        A PIL RGB image; identical bytes for identical arguments.
    """
    if size < 16:
        raise ValueError(f"image size must be >= 16 px, got {size}")
    big = size * supersample
    canvas = Image.new("RGB", (big, big), tuple(scene.background))
    draw = ImageDraw.Draw(canvas)
    for obj in scene.objects:
        # Pixel centres sit at integer + 0.5; the 0.5 shift keeps shapes symmetric about their centre.
        _draw_shape(draw, obj.shape, obj.x * big - 0.5, obj.y * big - 0.5, obj.half * big, COLORS[obj.color])
    return canvas.resize((size, size), Image.Resampling.BOX)


def shape_coverage(
    shape: str, cx: float, cy: float, half: float, width: int, height: int, *, supersample: int = 8
) -> np.ndarray:
    """Coverage of one shape over a `height` x `width` pixel window, drawn like `render_scene` draws.

    Args:
        shape: shape name.
        cx, cy: centre in window pixels (pixel u spans [u, u + 1)).
        half: half side of the shape's box in pixels.
        width, height: window size in pixels.
        supersample: sub-pixels per pixel along each axis.

    Returns:
        float32 array (height, width) in [0, 1]: the fraction of each pixel the shape covers.
    """
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}")
    canvas = Image.new("L", (width * supersample, height * supersample), 0)
    _draw_shape(ImageDraw.Draw(canvas), shape, cx * supersample - 0.5, cy * supersample - 0.5,
                half * supersample, 255)
    return np.asarray(canvas.resize((width, height), Image.Resampling.BOX), dtype=np.float32) / 255.0


def shape_template(shape: str, size: int = 32) -> np.ndarray:
    """Coverage mask (size, size) float32 in [0, 1] of `shape` filling the whole box."""
    return shape_coverage(shape, size / 2, size / 2, size / 2, size, size, supersample=SUPERSAMPLE)


def object_mask(scene: Scene, index: int, size: int) -> np.ndarray:
    """Coverage mask (size, size) float32 in [0, 1] of object `index` alone (for edit regions)."""
    obj = scene.objects[index]
    return shape_coverage(obj.shape, obj.x * size, obj.y * size, obj.half * size, size, size,
                          supersample=SUPERSAMPLE)


def cell_labels(scene: Scene, rows: int, cols: int, *, cell_px: int = 16,
                min_fraction: float = 0.02) -> tuple[np.ndarray, np.ndarray]:
    """What each cell of a rows x cols grid over the image shows: the shape and colour of the object
    covering most of it, for per-token supervision of a vision encoder (one cell = one LLM image token).

    Args:
        scene: the scene graph.
        rows, cols: the token grid over the (square or not) image.
        cell_px: resolution of the coverage computation, in pixels per cell side.
        min_fraction: least fraction of a cell an object must cover to name it.

    Returns:
        (shape_index, color_index), int64 arrays of rows * cols in raster order: indices into `SHAPES`
        and `COLORS` (insertion order), or -1 where no object covers enough of the cell.
    """
    height, width = rows * cell_px, cols * cell_px
    coverage = np.zeros((len(scene.objects), rows, cols), dtype=np.float32)
    for k, obj in enumerate(scene.objects):
        mask = shape_coverage(obj.shape, obj.x * width, obj.y * height, obj.half * min(width, height),
                              width, height, supersample=2)
        coverage[k] = mask.reshape(rows, cell_px, cols, cell_px).mean(axis=(1, 3))
    shapes = np.full(rows * cols, -1, dtype=np.int64)
    colors = np.full(rows * cols, -1, dtype=np.int64)
    if len(scene.objects):
        best = coverage.reshape(len(scene.objects), -1).argmax(axis=0)
        covered = coverage.reshape(len(scene.objects), -1).max(axis=0) >= min_fraction
        color_names = list(COLORS)
        for cell in np.flatnonzero(covered):
            obj = scene.objects[best[cell]]
            shapes[cell], colors[cell] = SHAPES.index(obj.shape), color_names.index(obj.color)
    return shapes, colors
