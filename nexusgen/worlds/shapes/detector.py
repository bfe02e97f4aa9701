"""A programmatic object detector for ShapesWorld images: any size, clean, blurry or noisy.

It replaces GenEval's Mask2Former (and the VQA judges of editing benchmarks) with a parser that is
exact on ground-truth renders. Steps, for an RGB image of H x W pixels:

1. Background: the median colour of the image border.
2. Unmixing: every pixel p is explained as `bg + a * (c - bg)` for each palette colour c (least squares
   in RGB, a clipped to [0, 1.5]); the colour with the smallest residual labels the pixel and its `a`
   is the pixel's coverage ("alpha"). Anti-aliased or blurred edges are exactly such mixtures, so they
   get the right colour with a fractional alpha instead of a wrong "nearest colour" (red + background
   is pinkish, but it lies on the red line, not on the pink one).
3. Foreground = alpha > 0.5; 4-connected components (numpy min-label propagation, no scipy); tiny
   components (noise) are dropped.
4. Per component: colour = majority label of its core pixels; shape = best soft-IoU between the
   component's alpha crop (resampled to 32x32 over its box) and each shape's template; size = from the
   alpha mass (conserved by blur) and the shape's fill ratio; position = box centre.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from .render import shape_coverage, shape_template
from .scene import COLORS, GRID, SHAPES, SIZE_ORDER, SIZES

TEMPLATE_SIZE = 32
# Larger images are parsed at this side (area-averaged): the scene graph does not need more pixels.
MAX_SIDE = 128
# Components smaller than this fraction of the image are noise (a small triangle is ~0.011).
MIN_AREA_FRACTION = 0.002
# Blur levels (Gaussian sigma in pixels of a 64 px image) tried for each candidate shape.
BLUR_LEVELS = (0.0, 0.5, 1.0, 1.5, 2.0, 2.6, 3.2)
_PALETTE_NAMES = tuple(COLORS)
_PALETTE = np.array([COLORS[c] for c in _PALETTE_NAMES], dtype=np.float32)  # (K, 3)


@dataclass(frozen=True)
class Detection:
    """One detected object. Coordinates are normalised to [0, 1] (x right, y down)."""

    shape: str
    color: str
    size: str
    x: float
    y: float
    bbox: tuple[float, float, float, float]
    area: float
    shape_score: float
    color_residual: float

    @property
    def cell(self) -> tuple[int, int]:
        """(row, col) of the 3x3 grid cell holding the centre."""
        return (min(GRID - 1, int(self.y * GRID)), min(GRID - 1, int(self.x * GRID)))

    def to_dict(self) -> dict:
        return {"shape": self.shape, "color": self.color, "size": self.size, "x": round(self.x, 4),
                "y": round(self.y, 4), "bbox": [round(v, 4) for v in self.bbox], "area": round(self.area, 5),
                "shape_score": round(self.shape_score, 3), "color_residual": round(self.color_residual, 2)}


def to_rgb_array(image) -> np.ndarray:
    """PIL image or uint8/float array (H, W[, C]) -> float32 (S, S, 3) in [0, 255].

    A non-square image is resized (bilinear) to a square of its longer side: ShapesWorld scenes live
    on a square canvas, and shapes are recognised in that geometry.
    """
    if isinstance(image, Image.Image):
        image = image.convert("RGB")
        if image.width != image.height:
            side = max(image.size)
            image = image.resize((side, side), Image.Resampling.BILINEAR)
        if image.width > MAX_SIDE:
            # Area averaging keeps every pixel a background/colour mixture, which is what unmixing
            # assumes, and 128 px leaves even small objects ~19 px wide.
            image = image.resize((MAX_SIDE, MAX_SIDE), Image.Resampling.BOX)
        image = np.asarray(image)
    arr = np.asarray(image)
    resize = arr.ndim == 3 and (arr.shape[0] != arr.shape[1] or arr.shape[0] > MAX_SIDE)
    if resize and arr.shape[-1] in (3, 4):
        return to_rgb_array(Image.fromarray(np.clip(arr[..., :3], 0, 255).astype(np.uint8)))
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise ValueError(f"expected an RGB image (H, W, 3), got shape {arr.shape}")
    arr = arr[..., :3].astype(np.float32)
    if arr.shape[0] < 8 or arr.shape[1] < 8:
        raise ValueError(f"image too small to parse: {arr.shape[:2]}")
    return arr


def estimate_background(rgb: np.ndarray) -> np.ndarray:
    """Median colour of a 2-pixel frame around the image: (3,) float32."""
    frame = np.concatenate([rgb[:2].reshape(-1, 3), rgb[-2:].reshape(-1, 3),
                            rgb[:, :2].reshape(-1, 3), rgb[:, -2:].reshape(-1, 3)])
    return np.median(frame, axis=0).astype(np.float32)


def unmix(rgb: np.ndarray, background: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Explain each pixel as background + alpha * (palette colour - background).

    Returns:
        label (H, W) int palette index, alpha (H, W) float32 in [0, 1.5], residual (H, W) float32 (RGB
        distance of the pixel from its best line).
    """
    p = rgb - background  # (H, W, 3)
    d = _PALETTE - background  # (K, 3)
    dd = np.maximum((d * d).sum(-1), 1.0)  # (K,)
    pd = p @ d.T  # (H, W, K)
    a = np.clip(pd / dd, 0.0, 1.5)
    resid = (p * p).sum(-1, keepdims=True) - 2 * a * pd + a * a * dd  # (H, W, K)
    label = resid.argmin(-1)
    alpha = np.take_along_axis(a, label[..., None], -1)[..., 0]
    best = np.take_along_axis(resid, label[..., None], -1)[..., 0]
    return label, alpha, np.sqrt(np.maximum(best, 0.0))


def connected_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """4-connected components of a boolean mask, in numpy.

    Every foreground pixel starts with its own flat index as label; labels then take the minimum over
    4-neighbours until nothing changes, with pointer jumping (label <- label[label]) so that long
    components converge in a few dozen sweeps.

    Returns:
        labels (H, W) int32: 0 for background, 1..n for components (ordered by first pixel in raster
        order); n.
    """
    h, w = mask.shape
    big = h * w
    lab = np.where(mask, np.arange(big, dtype=np.int64).reshape(h, w), big)
    while True:
        prev = lab
        cur = lab.copy()
        cur[1:] = np.minimum(cur[1:], lab[:-1])
        cur[:-1] = np.minimum(cur[:-1], lab[1:])
        cur[:, 1:] = np.minimum(cur[:, 1:], lab[:, :-1])
        cur[:, :-1] = np.minimum(cur[:, :-1], lab[:, 1:])
        cur = np.where(mask, cur, big)
        flat = np.append(cur.ravel(), big)
        cur = np.where(mask, flat[flat[cur]], big)  # pointer jumping: labels are pixel indices
        lab = cur
        if np.array_equal(lab, prev):
            break
    roots, inverse = np.unique(lab, return_inverse=True)
    inverse = inverse.reshape(h, w).astype(np.int32) + 1
    n = len(roots) - (1 if roots[-1] == big else 0)
    return np.where(mask, inverse, 0).astype(np.int32), int(n)


@lru_cache(maxsize=1)
def _shape_stats() -> tuple[np.ndarray, np.ndarray]:
    """Per shape: fill ratio of its box (S,) and centroid offset from the box centre in half sides (S, 2).

    Only the triangle's centroid is off centre (a third of a half side below the box centre).
    """
    fills, offsets = [], []
    n = TEMPLATE_SIZE
    coords = (np.arange(n) + 0.5 - n / 2) / (n / 2)
    for shape in SHAPES:
        t = shape_template(shape, n)
        fills.append(t.mean())
        offsets.append(((t.sum(0) * coords).sum() / t.sum(), (t.sum(1) * coords).sum() / t.sum()))
    return np.array(fills), np.array(offsets)


def _dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    out = mask.copy()
    for _ in range(steps):
        grown = out.copy()
        grown[1:] |= out[:-1]
        grown[:-1] |= out[1:]
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        out = grown
    return out


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of a 2-D array, zero outside it (mass blurred past the border is lost)."""
    if sigma <= 0:
        return image

    def matrix(n: int) -> np.ndarray:
        i = np.arange(n)
        k = np.exp(-0.5 * ((i[:, None] - i[None, :]) / sigma) ** 2)
        return k / (sigma * np.sqrt(2 * np.pi))  # the full kernel's sum, so truncation loses mass

    return matrix(image.shape[0]) @ image @ matrix(image.shape[1]).T


def classify_shape(soft: np.ndarray,
                   blur_sigmas: tuple[float, ...] = (0.0,)) -> tuple[str, float, tuple, float]:
    """Analysis by synthesis: which shape, drawn at the soft mask's mass and centroid, explains it best.

    For each candidate shape the box side follows from the mask's coverage mass and the shape's fill
    ratio, and the box centre from the mask's centroid; the candidate is drawn at that sub-pixel place,
    blurred by each of `blur_sigmas` (pixels) and compared with the mask by soft IoU (sum of minima /
    sum of maxima). Mass and centroid are unchanged by blur, so the candidates stay well placed on
    blurry images, and blurring the candidates keeps a blurred cross from looking like a diamond.

    Args:
        soft: (h, w) float coverage of one object (0 elsewhere), with a margin around it.
        blur_sigmas: Gaussian blur levels to try, in pixels.

    Returns:
        (shape, IoU in [0, 1], centre (x, y) in window pixels, half side in pixels).
    """
    h, w = soft.shape
    mass = float(soft.sum())
    if mass <= 0:
        raise ValueError("empty mask")
    ys, xs = np.mgrid[0:h, 0:w]
    cx, cy = float((soft * (xs + 0.5)).sum() / mass), float((soft * (ys + 0.5)).sum() / mass)
    fills, offsets = _shape_stats()
    supersample = 8 if max(h, w) <= 40 else 4
    support = soft > 0
    best = ("", -1.0, (0.0, 0.0), 0.0)
    for k, shape in enumerate(SHAPES):
        half = 0.5 * float(np.sqrt(mass / fills[k]))
        centre = (cx - offsets[k, 0] * half, cy - offsets[k, 1] * half)
        sharp = shape_coverage(shape, centre[0], centre[1], half, w, h, supersample=supersample)
        for sigma in blur_sigmas:
            cov = np.where(support, gaussian_blur(sharp, sigma), 0.0)
            iou = float(np.minimum(cov, soft).sum() / max(np.maximum(cov, soft).sum(), 1e-6))
            if iou > best[1]:
                best = (shape, iou, centre, half)
    return best


def size_class(half: float) -> str:
    """Nearest size class on a log scale for a normalised half side."""
    logs = np.log([SIZES[s] for s in SIZE_ORDER])
    return SIZE_ORDER[int(np.abs(logs - np.log(max(half, 1e-6))).argmin())]


def _describe(comp: np.ndarray, others: np.ndarray, label, alpha, resid) -> Detection:
    """Attributes of one component (boolean mask `comp`); `others` marks the other components."""
    h, w = comp.shape
    scale = float(np.sqrt(h * w)) / 64.0  # blur levels and margins are set for a 64 px image
    core = comp & (alpha > 0.75)
    votes = np.bincount(label[core if core.sum() >= 3 else comp], minlength=len(_PALETTE_NAMES))
    color_index = int(votes.argmax())
    # The object's soft support: its component grown by a few pixels (anti-aliased / blurred rim),
    # never reaching into another object, counting only pixels of its own colour.
    grow = max(2, int(round(3 * scale)))
    region = _dilate(comp, grow) & ~_dilate(others, 1) & (label == color_index)
    ys, xs = np.nonzero(region)
    y0, y1, x0, x1 = max(ys.min() - 2, 0), min(ys.max() + 3, h), max(xs.min() - 2, 0), min(xs.max() + 3, w)
    soft = np.where(region, np.clip(alpha, 0, 1), 0.0)[y0:y1, x0:x1]
    shape, score, (cx, cy), half = classify_shape(soft, tuple(f * scale for f in BLUR_LEVELS))
    cx, cy = (cx + x0) / w, (cy + y0) / h
    half_n = half / float(np.sqrt(h * w))
    return Detection(
        shape=shape, color=_PALETTE_NAMES[color_index], size=size_class(half_n), x=float(cx), y=float(cy),
        bbox=(float(cx - half / w), float(cy - half / h), float(cx + half / w), float(cy + half / h)),
        area=float(soft.sum() / (h * w)), shape_score=score,
        color_residual=float(resid[core if core.any() else comp].mean()),
    )


def detect(image, *, background=None, min_area_fraction: float = MIN_AREA_FRACTION) -> list[Detection]:
    """Parse an image into ShapesWorld objects.

    Args:
        image: PIL image or array (H, W, 3) uint8/float in [0, 255], any size >= 8 px.
        background: RGB background colour; default the median of the image border.
        min_area_fraction: components smaller than this fraction of the image are ignored.

    Returns:
        Detections in raster order of their first pixel.
    """
    rgb = to_rgb_array(image)
    bg = estimate_background(rgb) if background is None else np.asarray(background, dtype=np.float32)
    label, alpha, resid = unmix(rgb, bg)
    comps, n = connected_components(alpha > 0.5)
    min_pixels = max(3, min_area_fraction * comps.size)
    sizes = np.bincount(comps.ravel(), minlength=n + 1)
    keep = [i for i in range(1, n + 1) if sizes[i] >= min_pixels]
    kept_mask = np.isin(comps, keep)
    detections = []
    for i in keep:
        comp = comps == i
        detections.append(_describe(comp, kept_mask & ~comp, label, alpha, resid))
    return detections


def robustness_report(num: int = 300, seed: int = 0) -> dict:
    """Whole-scene exact-match rate of the detector on ground-truth renders, clean and perturbed.

    Scenes come from `sample_scene` with generator seeds seed .. seed + num - 1; blur sigmas are in
    pixels of a 64 px image (scaled with the size), noise is Gaussian with the given std (0-255 scale).
    """
    from PIL import ImageFilter

    from .render import render_scene
    from .scene import sample_scene

    def rate(size: int, perturb) -> float:
        hits = 0
        for i in range(num):
            scene = sample_scene(np.random.default_rng(seed + i))
            image = perturb(render_scene(scene, size), i)
            want = sorted((o.cell, o.shape, o.color, o.size) for o in scene.objects)
            hits += want == sorted((d.cell, d.shape, d.color, d.size) for d in detect(image))
        return hits / num

    def blur(sigma):
        return lambda im, i: im.filter(ImageFilter.GaussianBlur(sigma * im.size[0] / 64))

    def noise(std):
        def apply(im, i):
            arr = np.asarray(im, dtype=np.float64)
            arr = arr + np.random.default_rng(10_000 + i).normal(0, std, arr.shape)
            return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
        return apply

    return {"num_scenes": num,
            "clean": {str(s): rate(s, lambda im, i: im) for s in (64, 128, 256)},
            "blur_64px": {str(b): rate(64, blur(b)) for b in (0.5, 1.0, 1.5, 2.0, 3.0)},
            "noise_64px": {str(n): rate(64, noise(n)) for n in (10, 20, 30, 50)}}

