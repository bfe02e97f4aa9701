"""Metrics checked by hand: PSNR, SSIM, answer matching, GenEval's rules and aggregation."""

import math
from types import SimpleNamespace

import numpy as np
import pytest

from nexusgen.eval.metrics import (
    PSNR_CAP_DB,
    answer_matches,
    geneval_correct,
    geneval_overall,
    normalise_answer,
    psnr,
    reconstruction_metrics,
    relative_position,
    ssim,
)


def test_psnr_by_hand():
    a = np.full((8, 8, 3), 100, dtype=np.uint8)
    b = a + 5
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 25))
    assert psnr(a, a) == PSNR_CAP_DB
    # Masked: only the pixels where the mask is True count.
    c = a.copy()
    c[:4] = 0
    mask = np.zeros((8, 8), dtype=bool)
    mask[4:] = True
    assert psnr(a, c, mask) == PSNR_CAP_DB
    assert psnr(a, c, ~mask) == pytest.approx(10 * math.log10(255**2 / 100**2))
    assert math.isnan(psnr(a, c, np.zeros((8, 8), dtype=bool)))
    with pytest.raises(ValueError, match="shape"):
        psnr(a, np.zeros((4, 4, 3)))


def test_ssim_by_hand():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (16, 16, 3)).astype(np.uint8)
    assert ssim(x, x) == pytest.approx(1.0)
    # Constant images: variances are 0, so SSIM = (2ab + C1) / (a^2 + b^2 + C1).
    a, b, c1 = 100.0, 120.0, (0.01 * 255) ** 2
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    assert ssim(np.full((12, 12), a), np.full((12, 12), b)) == pytest.approx(expected, rel=1e-9)
    # Structure matters: an inverted image scores far lower than a slightly shifted brightness.
    assert ssim(x, 255 - x) < 0.0 < ssim(x, np.clip(x.astype(int) + 3, 0, 255))


def test_answer_normalisation_and_matching():
    assert normalise_answer("  The Red. ") == "red"
    assert normalise_answer("红色") == "red" and normalise_answer("是") == "yes"
    assert answer_matches("3", "3", "count")
    assert answer_matches("There are three shapes.", "3", "count")
    assert not answer_matches("2 or 3", "3", "count")  # two numbers: ambiguous, wrong
    assert answer_matches("Yes, it is.", "yes", "relation")
    assert answer_matches("不是", "否", "binding") and not answer_matches("是", "否", "binding")
    assert answer_matches("It is a rhombus.", "diamond", "shape")
    assert answer_matches("红色的", "red", "color")
    cap = "A small red circle in the top left and a large blue square in the center."
    assert answer_matches(cap.lower().rstrip("."), cap, "caption")
    assert not answer_matches("a small red circle in the top left", cap, "caption")
    # A reasoned answer is scored by its conclusion: the steps before "so" / "所以" name objects, and Chinese
    # shape words hold number characters (三角形: "three").
    assert answer_matches("The red square and the blue square, so 2.", "2", "count")
    assert answer_matches("绿色三角形和红色十字形，所以2。", "2", "count")
    assert answer_matches("绿色三角形，所以1。", "1", "count")
    assert not answer_matches("绿色三角形，所以1。", "3", "count")
    assert answer_matches("None, so 0.", "0", "count") and not answer_matches("None, so 1.", "0", "count")
    assert answer_matches("The red circle is in column 3 and the blue square is in column 1, so no.", "no",
                          "relation")


def _det(shape, color, box):
    return SimpleNamespace(shape=shape, color=color, bbox=box)


def test_relative_position_is_genevals():
    left, right = (0.1, 0.4, 0.3, 0.6), (0.6, 0.4, 0.8, 0.6)
    assert relative_position(left, right) == {"left of"}
    assert relative_position(right, left) == {"right of"}
    assert relative_position(left, left) == set()
    diag = relative_position((0.1, 0.1, 0.3, 0.3), (0.6, 0.6, 0.8, 0.8))
    assert diag == {"left of", "above"}


def test_geneval_rules_by_hand():
    dets = [_det("circle", "red", (0.1, 0.4, 0.3, 0.6)), _det("square", "blue", (0.6, 0.4, 0.8, 0.6)),
            _det("circle", "green", (0.1, 0.7, 0.3, 0.9))]
    assert geneval_correct(dets, {"include": [{"class": "circle", "count": 1}]})[0]
    assert geneval_correct(dets, {"include": [{"class": "circle", "count": 2}],
                                  "exclude": [{"class": "circle", "count": 3}]})[0]
    ok, why = geneval_correct(dets, {"include": [{"class": "circle", "count": 3}]})
    assert not ok and "circle>=3" in why
    assert not geneval_correct(dets, {"include": [{"class": "circle", "count": 1}],
                                      "exclude": [{"class": "circle", "count": 2}]})[0]
    assert geneval_correct(dets, {"include": [{"class": "circle", "count": 1, "color": "green"}]})[0]
    assert not geneval_correct(dets, {"include": [{"class": "square", "count": 1, "color": "red"}]})[0]
    left_of = {"include": [{"class": "square", "count": 1},
                           {"class": "circle", "count": 1, "position": ["left of", 0]}]}
    assert geneval_correct(dets[:2], left_of)[0]
    right_of = {"include": [{"class": "square", "count": 1},
                            {"class": "circle", "count": 1, "position": ["right of", 0]}]}
    assert not geneval_correct(dets[:2], right_of)[0]
    missing_target = {"include": [{"class": "cross", "count": 1},
                                  {"class": "circle", "count": 1, "position": ["left of", 0]}]}
    ok, why = geneval_correct(dets, missing_target)
    assert not ok and "no target" in why


def test_geneval_overall_is_the_mean_of_category_means():
    # Category A: 1 of 2 right (0.5); B: 1 of 1 (1.0). Overall 0.75, not the item mean 2/3.
    assert geneval_overall({"A": 0.5, "B": 1.0}) == pytest.approx(0.75)
    assert geneval_overall({"A": 0.5, "B": float("nan")}) == pytest.approx(0.5)


def test_reconstruction_metrics():
    from PIL import Image

    from nexusgen.worlds.shapes import detect, render_scene, sample_scene

    scene = sample_scene(np.random.default_rng(0), num_objects=3)
    orig = [render_scene(scene, 64)]
    same = reconstruction_metrics(orig, [render_scene(scene, 128)], detector=detect)
    assert same["semantic_accuracy"] == 1.0 and same["psnr"] > 20 and same["n"] == 1
    blank = reconstruction_metrics(orig, [Image.new("RGB", (64, 64), (240, 240, 240))], detector=detect)
    assert blank["semantic_accuracy"] == 0.0 and blank["psnr"] < same["psnr"] and blank["ssim"] < same["ssim"]


def test_edit_embedding_gain_by_hand():
    from nexusgen.eval.metrics import edit_embedding_gain

    rng = np.random.default_rng(0)
    source = rng.normal(size=(1, 4, 3))
    target = source.copy()
    target[0, 2] += [3.0, 0.0, 4.0]  # one changed token, squared distance 25
    target[0, 0] += [0.1, 0.0, 0.0]  # 0.01 < 0.1 * 25: not counted as changed
    halfway = source + (target - source) / 2
    predicted = np.concatenate([target, source, halfway])
    gain = edit_embedding_gain(predicted, np.repeat(source, 3, 0), np.repeat(target, 3, 0))
    assert np.allclose(gain, [1.0, 0.0, 0.75])  # halfway leaves a quarter of the squared error
    away = source - (target - source)  # twice as far from the target as the source is
    assert np.allclose(edit_embedding_gain(away, source, target), [-3.0])
    wrong_elsewhere = target.copy()
    wrong_elsewhere[0, 0] += 10.0  # errors on unchanged tokens do not count
    assert np.allclose(edit_embedding_gain(wrong_elsewhere, source, target), [1.0])
    assert np.isnan(edit_embedding_gain(source, source, source)).all()
    with pytest.raises(ValueError, match="one shape"):
        edit_embedding_gain(source[:, :3], source, target)
