"""Per-token scene labels: each token's cell is named by the object covering most of it."""

import numpy as np
import pytest
import torch

import nexusgen.recipes.worlds  # noqa: F401 (registers ShapesWorld as "shapes")
from nexusgen.data.scene_labels import IGNORE, token_labels
from nexusgen.data.worlds import WorldSource, get_world
from nexusgen.worlds.shapes import COLORS, SHAPES, Scene, ShapeObject, render_scene
from nexusgen.worlds.shapes.render import cell_labels


def _scene(*objects) -> Scene:
    return Scene(objects=tuple(objects))


def test_an_object_inside_one_cell_names_only_that_cell():
    # a 4 x 4 grid; a small red triangle centred in cell (row 1, col 2)
    scene = _scene(ShapeObject(shape="triangle", color="red", size="small", row=0, col=1, x=2.5 / 4, y=1.5 / 4))
    shapes, colors = cell_labels(scene, 4, 4)
    expected = np.full(16, -1)
    expected[1 * 4 + 2] = SHAPES.index("triangle")
    np.testing.assert_array_equal(shapes, expected)
    assert colors[6] == list(COLORS).index("red") and (colors[np.arange(16) != 6] == -1).all()


def test_a_large_object_on_a_cell_corner_names_the_four_cells_it_covers():
    big = ShapeObject(shape="square", color="blue", size="large", row=1, col=1, x=0.5, y=0.5)  # centred on 4 cells
    scene = _scene(big)
    shapes, _ = cell_labels(scene, 4, 4)
    assert set(np.flatnonzero(shapes >= 0)) == {5, 6, 9, 10}
    assert (shapes[[5, 6, 9, 10]] == SHAPES.index("square")).all()


def test_token_labels_follow_collate_order_and_ignore_images_without_scenes():
    source = WorldSource("shapes", 6, seed=3, image_size=64, tasks=("understand", "edit"))
    samples = [source[0], source[1], {"messages": [], "images": [source[0]["images"][0]]}]  # last: no meta
    for sample in samples[:2]:  # the scene graphs are the images' own
        for image, scene in zip(sample["images"], sample["meta"]["scenes"], strict=True):
            assert np.array_equal(np.asarray(render_scene(Scene.from_dict(scene), 64)), np.asarray(image))
    grids = torch.tensor([[1, 8, 8]] * 4)  # understand: 1 image, edit: 2, the last sample: 1
    world = get_world("shapes").scene_labels
    background_shape, background_color = world.num_shapes, world.num_colors
    labels = token_labels(samples, grids, merge_size=2, labels=world)
    assert labels.shape == (64, 2)
    first, _ = cell_labels(Scene.from_dict(samples[0]["meta"]["scenes"][0]), 4, 4)
    want = torch.from_numpy(np.where(first < 0, background_shape, first))
    assert torch.equal(labels[:16, 0], want)
    assert (labels[:48] >= 0).all() and (labels[48:] == IGNORE).all()
    assert ((labels[:48, 0] == background_shape) == (labels[:48, 1] == background_color)).all()
    with pytest.raises(ValueError, match="grids"):
        token_labels(samples, grids[:3], merge_size=2, labels=world)
