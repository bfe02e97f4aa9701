"""Metrics of the ShapesWorld benchmark, in numpy: PSNR, SSIM, answer matching, GenEval's rules.

- `psnr`, `ssim`: full-reference image metrics on uint8-range RGB, optionally restricted to a mask
  (preservation outside an edited region). SSIM follows Wang et al. 2004: 11x11 Gaussian window with
  sigma 1.5, K1 = 0.01, K2 = 0.03, per channel, averaged; the image is reflect-padded so the SSIM map
  has the image's size (our images are small, cropping the border would drop much of them).
- `normalise_answer`, `answer_matches`: VQA-style normalised exact match; for closed-vocabulary
  questions (numbers, yes/no, colours, shapes) a free-form answer that names exactly one vocabulary
  item counts as that item, in English or Chinese.
- `geneval_correct`: GenEval's per-image rule (`evaluate` in geneval/evaluation/evaluate_images.py) on
  detector output, with shapes as classes; `relative_position` is GenEval's, threshold 0.1.
- `geneval_overall`: GenEval's aggregation, the mean of the per-category means.
- `edit_embedding_gain`: how much of an edit the AR model's predicted embeddings carry, before any
  decoder draws them.
"""

from __future__ import annotations

import math
import re
import string

import numpy as np

from nexusgen.worlds.shapes.language import SYNONYMS

# Identical images have infinite PSNR; cap it (8-bit quantisation noise alone is ~59 dB).
PSNR_CAP_DB = 60.0
POSITION_THRESHOLD = 0.1  # GenEval's
_SSIM_SIGMA, _SSIM_RADIUS = 1.5, 5
_PUNCT = set(string.punctuation) | set("，。？！、：；“”‘’（）《》…　")
_ARTICLES = {"a", "an", "the"}


def _as_float(image) -> np.ndarray:
    arr = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image, dtype=np.float64)
    return arr[..., None] if arr.ndim == 2 else arr


def _check_pair(a: np.ndarray, b: np.ndarray, mask) -> np.ndarray:
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    if mask is None:
        return np.ones(a.shape[:2], dtype=bool)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != a.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} does not match image {a.shape[:2]}")
    return mask


def psnr(a, b, mask=None, *, data_range: float = 255.0, cap: float = PSNR_CAP_DB) -> float:
    """Peak signal-to-noise ratio in dB, over the pixels where `mask` is True (all channels).

    Args:
        a, b: images (PIL or arrays (H, W[, C])) in [0, data_range].
        mask: optional boolean (H, W).
        cap: value returned for identical images (and the maximum returned).

    Returns:
        10 log10(data_range^2 / MSE), at most `cap`; NaN if the mask is empty.
    """
    x, y = _as_float(a), _as_float(b)
    m = _check_pair(x, y, mask)
    if not m.any():
        return float("nan")
    mse = float(((x - y) ** 2)[m].mean())
    if mse == 0:
        return cap
    return min(cap, 10.0 * math.log10(data_range**2 / mse))


def _gaussian_filter(img: np.ndarray) -> np.ndarray:
    """Separable Gaussian filter of (H, W) with reflect padding; output (H, W)."""
    taps = np.exp(-0.5 * (np.arange(-_SSIM_RADIUS, _SSIM_RADIUS + 1) / _SSIM_SIGMA) ** 2)
    taps /= taps.sum()
    r = _SSIM_RADIUS
    p = np.pad(img, r, mode="reflect") if min(img.shape) > r else np.pad(img, r, mode="edge")
    h, w = img.shape
    rows = sum(taps[k] * p[k:k + h, :] for k in range(2 * r + 1))  # (H, W + 2r)
    return sum(taps[k] * rows[:, k:k + w] for k in range(2 * r + 1))  # (H, W)


def ssim_map(a, b, *, data_range: float = 255.0) -> np.ndarray:
    """Per-pixel SSIM (H, W), averaged over channels."""
    x, y = _as_float(a), _as_float(b)
    _check_pair(x, y, None)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    maps = []
    for ch in range(x.shape[-1]):
        xs, ys = x[..., ch], y[..., ch]
        mx, my = _gaussian_filter(xs), _gaussian_filter(ys)
        vx = _gaussian_filter(xs * xs) - mx * mx
        vy = _gaussian_filter(ys * ys) - my * my
        cxy = _gaussian_filter(xs * ys) - mx * my
        maps.append(((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2)))
    return np.mean(maps, axis=0)


def ssim(a, b, mask=None, *, data_range: float = 255.0) -> float:
    """Mean SSIM over the pixels where `mask` is True (NaN if the mask is empty)."""
    x, y = _as_float(a), _as_float(b)
    m = _check_pair(x, y, mask)
    if not m.any():
        return float("nan")
    return float(ssim_map(x, y, data_range=data_range)[m].mean())


# ----------------------------------------------------------------------------------------------------
# Answers

def normalise_answer(text: str) -> str:
    """Lowercase, drop punctuation and articles, map synonyms (both languages) to canonical tokens."""
    t = "".join(" " if ch in _PUNCT else ch for ch in str(text).strip().lower())
    t = " ".join(t.split())
    if t in SYNONYMS:
        return SYNONYMS[t]
    words = [SYNONYMS.get(w, w) for w in t.split() if w not in _ARTICLES]
    return " ".join(words)


_CLOSED_VOCAB = {
    "count": {str(i) for i in range(10)},
    "relation": {"yes", "no"},
    "binding": {"yes", "no"},
    "color": {"red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "gray"},
    "shape": {"circle", "square", "triangle", "diamond", "cross"},
}


def _vocab_pattern(vocab: set[str]) -> re.Pattern:
    forms = sorted({f for f, c in SYNONYMS.items() if c in vocab} | vocab, key=len, reverse=True)
    alts = [rf"\b{re.escape(f)}\b" if f.isascii() else re.escape(f) for f in forms]
    if vocab == _CLOSED_VOCAB["count"]:
        alts.insert(0, r"\b\d+\b")
    return re.compile("|".join(alts))


_PATTERNS = {k: _vocab_pattern(v) for k, v in _CLOSED_VOCAB.items()}


# Where a reasoned answer's conclusion starts ("..., so 2." / "……，所以2。"): the steps before it name objects,
# and Chinese shape words hold number characters (三角形, 十字形).
_CONCLUSION = re.compile(r"\bso\b|所以")


def final_answer(text: str) -> str:
    """The conclusion of a reasoned answer (the text after its last "so" / "所以"), else the whole text."""
    return _CONCLUSION.split(str(text))[-1]


def answer_matches(prediction: str, expected: str, qtype: str | None = None) -> bool:
    """Normalised exact match of the answer's conclusion (`final_answer`); for closed-vocabulary question
    types, also a free-form answer that names exactly one vocabulary item (e.g. "There are 3 shapes." for
    "3", "是的" for "yes")."""
    prediction = final_answer(prediction)
    pred, want = normalise_answer(prediction), normalise_answer(expected)
    if pred == want:
        return True
    if qtype not in _PATTERNS:
        return False
    hits = {SYNONYMS.get(m.group(0), m.group(0)) for m in _PATTERNS[qtype].finditer(str(prediction).lower())}
    return hits == {want}


# ----------------------------------------------------------------------------------------------------
# GenEval rules on detections (objects with .shape, .color, .bbox normalised (x0, y0, x1, y1))

def relative_position(box_a, box_b) -> set[str]:
    """GenEval's relative position of A with respect to B, factoring in the boxes' sizes."""
    boxes = np.array([box_a, box_b], dtype=np.float64).reshape(2, 2, 2)
    center_a, center_b = boxes.mean(axis=-2)
    dim_a, dim_b = np.abs(np.diff(boxes, axis=-2))[..., 0, :]
    offset = center_a - center_b
    revised = np.maximum(np.abs(offset) - POSITION_THRESHOLD * (dim_a + dim_b), 0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    relations = set()
    if dx < -0.5:
        relations.add("left of")
    if dx > 0.5:
        relations.add("right of")
    if dy < -0.5:
        relations.add("above")
    if dy > 0.5:
        relations.add("below")
    return relations


def geneval_correct(detections, spec: dict) -> tuple[bool, str]:
    """GenEval's rule for one image: every `include` requirement met, no `exclude` one.

    Deviation: GenEval checks colours on the first `count` detections of a class in confidence
    order; our detector has no confidence, so objects of the required colour are taken first.

    Returns:
        (correct, reasons) with one reason line per failed requirement.
    """
    by_class: dict[str, list] = {}
    for det in detections:
        by_class.setdefault(det.shape, []).append(det)
    correct, reasons, groups = True, [], []
    for req in spec.get("include", []):
        cls, count = req["class"], req["count"]
        found = by_class.get(cls, [])
        if "color" in req:
            found = sorted(found, key=lambda d: d.color != req["color"])
        found = found[:count]
        matched = True
        if len(found) < count:
            matched = False
            reasons.append(f"expected {cls}>={count}, found {len(found)}")
        elif "color" in req and sum(d.color == req["color"] for d in found) < count:
            matched = False
            reasons.append(f"expected {req['color']} {cls}>={count}, found {[d.color for d in found]}")
        elif "position" in req:
            relation, target = req["position"]
            if groups[target] is None:
                matched = False
                reasons.append(f"no target for {cls} to be {relation}")
            elif not all(relation in relative_position(o.bbox, t.bbox)
                         for o in found for t in groups[target]):
                matched = False
                reasons.append(f"expected {cls} {relation} target")
        correct &= matched
        groups.append(found if matched else None)
    for req in spec.get("exclude", []):
        n = len(by_class.get(req["class"], []))
        if n >= req["count"]:
            correct = False
            reasons.append(f"expected {req['class']}<{req['count']}, found {n}")
    return correct, "; ".join(reasons)


def geneval_overall(by_category: dict[str, float]) -> float:
    """GenEval's overall score: the unweighted mean of the category scores."""
    values = [v for v in by_category.values() if v == v]  # NaN: a category with no items
    return float(np.mean(values)) if values else float("nan")


def scene_matches(detections, scene) -> tuple[bool, str]:
    """Whether the detections are exactly the scene's objects: same cell, shape, colour and size each."""
    want = sorted((o.cell, o.shape, o.color, o.size) for o in scene.objects)
    got = sorted((d.cell, d.shape, d.color, d.size) for d in detections)
    if want == got:
        return True, ""
    missing = [w for w in want if w not in got]
    extra = [g for g in got if g not in want]
    return False, f"missing {missing}; unexpected {extra}"


def edit_embedding_gain(predicted, source, target, changed_fraction: float = 0.1) -> np.ndarray:
    """Per edit, the share of the error of "copy the source" that the prediction removes on the tokens
    the edit changes: 1 - SSE(predicted, target) / SSE(source, target) over those tokens. 1 = the target's
    embeddings, 0 = no closer than the source's, < 0 = further away. Splits an editing failure into the
    AR model's part (this) and the decoder's (`--embeds ground-truth`).

    Args:
        predicted, source, target: (B, N, D) embeddings of the edited output grid (predicted, and the
            encoder's for the source and the true result, both at the output size).
        changed_fraction: a token counts as changed when its squared distance from source to target is
            above this fraction of the largest one in its image (the rest are background and untouched
            objects, which copying gets right).

    Returns:
        (B,) float64; NaN where source and target embeddings are identical.
    """
    predicted, source, target = (np.asarray(a, dtype=np.float64) for a in (predicted, source, target))
    if not predicted.shape == source.shape == target.shape or predicted.ndim != 3:
        raise ValueError(f"need three (B, N, D) arrays of one shape, got {predicted.shape}, {source.shape}, "
                         f"{target.shape}")
    copy_error = ((source - target) ** 2).sum(-1)                                  # (B, N)
    error = ((predicted - target) ** 2).sum(-1)
    changed = copy_error > changed_fraction * copy_error.max(axis=1, keepdims=True)
    copy_total = (copy_error * changed).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(copy_total > 0, 1.0 - (error * changed).sum(1) / copy_total, np.nan)


def mean(values) -> float:
    """Mean ignoring NaN; NaN when nothing is left."""
    values = [float(v) for v in values if v == v]
    return float(np.mean(values)) if values else float("nan")


def reconstruction_metrics(originals, reconstructions, *, detector=None) -> dict:
    """Mean PSNR / SSIM of decoder reconstructions, and how often the parsed scene is unchanged.

    Args:
        originals, reconstructions: equal-length lists of images; each reconstruction is resized to its
            original's size if it differs.
        detector: optional function image -> detections; adds "semantic_accuracy" (scene parsed from
            the reconstruction equals the one parsed from the original).
    """
    if len(originals) != len(reconstructions) or not originals:
        raise ValueError(f"need equal, non-empty lists, got {len(originals)} and {len(reconstructions)}")
    psnrs, ssims, same = [], [], []
    for orig, rec in zip(originals, reconstructions):
        if rec.size != orig.size:
            rec = rec.resize(orig.size)
        psnrs.append(psnr(orig, rec))
        ssims.append(ssim(orig, rec))
        if detector is not None:
            key = lambda ds: sorted((d.cell, d.shape, d.color, d.size) for d in ds)  # noqa: E731
            same.append(key(detector(orig)) == key(detector(rec)))
    out = {"psnr": mean(psnrs), "ssim": mean(ssims), "n": len(originals)}
    if detector is not None:
        out["semantic_accuracy"] = mean(same)
    return out
