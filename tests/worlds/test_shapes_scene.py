"""ShapesWorld scenes and rendering: determinism, invariants, sizes, anti-aliasing."""

import numpy as np
import pytest

from nexusgen.worlds.shapes import COLORS, HELD_OUT_COMBOS, SIZES, Scene, render_scene, sample_scene
from nexusgen.worlds.shapes.render import object_mask, shape_coverage
from nexusgen.worlds.shapes.scene import BACKGROUND, GRID, relation_holds


def test_sampler_and_renderer_are_deterministic():
    a = sample_scene(np.random.default_rng(7))
    b = sample_scene(np.random.default_rng(7))
    assert a == b
    assert render_scene(a, 64).tobytes() == render_scene(b, 64).tobytes()
    assert sample_scene(np.random.default_rng(8)) != a


def test_scene_invariants_over_many_samples():
    for seed in range(300):
        scene = sample_scene(np.random.default_rng(seed), exclude=HELD_OUT_COMBOS)
        assert 1 <= len(scene) <= 4
        assert len({o.cell for o in scene.objects}) == len(scene)
        assert len({o.combo for o in scene.objects}) == len(scene)
        assert not scene.has_combo(HELD_OUT_COMBOS)
        for o in scene.objects:  # the object's box stays inside its own cell
            x0, y0, x1, y1 = o.bbox()
            assert o.col / GRID < x0 and x1 < (o.col + 1) / GRID
            assert o.row / GRID < y0 and y1 < (o.row + 1) / GRID


def test_scene_round_trips_through_dict():
    scene = sample_scene(np.random.default_rng(3), num_objects=4)
    assert Scene.from_dict(scene.to_dict()) == scene


def test_invalid_scenes_are_rejected():
    scene = sample_scene(np.random.default_rng(0), num_objects=2)
    with pytest.raises(ValueError, match="share a cell"):
        scene.replace(0, row=scene.objects[1].row, col=scene.objects[1].col)
    with pytest.raises(ValueError, match="unknown shape"):
        scene.replace(0, shape="hexagon")
    with pytest.raises(ValueError):
        sample_scene(np.random.default_rng(0), num_objects=5)


def test_relations_follow_the_grid():
    scene = sample_scene(np.random.default_rng(1), num_objects=2)
    a, b = scene.objects
    assert relation_holds(a, b, "left") == (a.col < b.col)
    assert relation_holds(a, b, "above") == relation_holds(b, a, "below")


@pytest.mark.parametrize("size", [64, 128, 256])
def test_render_sizes_and_colors(size):
    scene = sample_scene(np.random.default_rng(11), num_objects=3)
    image = render_scene(scene, size)
    assert image.size == (size, size) and image.mode == "RGB"
    arr = np.asarray(image)
    assert tuple(arr[0, 0]) == BACKGROUND
    for o in scene.objects:  # the box centre of a square/circle/diamond/cross is the object's colour
        if o.shape != "triangle":
            assert tuple(arr[int(o.y * size), int(o.x * size)]) == COLORS[o.color]


def test_rendering_is_anti_aliased():
    # A circle's rim pixels are partial blends of its colour and the background, in proportion to
    # their coverage.
    scene = sample_scene(np.random.default_rng(5), num_objects=1)
    scene = scene.replace(0, shape="circle", size="large")
    arr = np.asarray(render_scene(scene, 64)).astype(float)
    cover = object_mask(scene, 0, 64)
    rim = (cover > 0.05) & (cover < 0.95)
    assert rim.sum() > 10
    color, bg = np.array(COLORS[scene.objects[0].color]), np.array(BACKGROUND)
    expected = bg + cover[..., None] * (color - bg)
    assert np.abs(arr[rim] - expected[rim]).max() < 1.5  # uint8 rounding only


def test_shape_coverage_area_matches_geometry():
    # A circle of radius 10 px covers pi * 100 pixels; a square of half side 10 covers 400.
    circle = shape_coverage("circle", 16, 16, 10, 32, 32)
    square = shape_coverage("square", 16, 16, 10, 32, 32)
    assert abs(circle.sum() - np.pi * 100) / (np.pi * 100) < 0.02
    assert abs(square.sum() - 400) / 400 < 0.02
    assert set(SIZES) == {"small", "medium", "large"}
