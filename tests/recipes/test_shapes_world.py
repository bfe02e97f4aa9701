"""ShapesWorld registered as the training world "shapes": its samples are ShapesWorld's own, in reader format,
and its scenes and labels are the world's."""

import numpy as np
import pytest

from nexusgen.data.messages import MessageDataset
from nexusgen.data.synthetic import write_jsonl
from nexusgen.data.worlds import WorldSource, get_world
from nexusgen.recipes.worlds import SHAPES_WORLD
from nexusgen.worlds.shapes import COLORS, SHAPES, SampleConfig, Scene, make_sample, render_scene, sample_scene
from nexusgen.worlds.shapes.render import cell_labels


def test_shapes_source_is_shapesworld_in_reader_format(tmp_path):
    source = WorldSource("shapes", 6, seed=3, image_size=32, zh_fraction=0.5)
    config = SampleConfig(image_size=32, zh_fraction=0.5)
    for i in range(6):
        sample, world = source[i], make_sample(i, seed=3, config=config)
        assert sample["id"] == world.id and sample["task"] == world.task and sample["meta"] == world.meta
        assert sample["messages"] == world.messages
        assert [im.tobytes() for im in sample["images"]] == [im.tobytes() for im in world.images]
    assert [source[i]["task"] for i in range(3)] == ["understand", "generate", "edit"]
    dataset = MessageDataset(write_jsonl(source, tmp_path / "shapes.jsonl"))
    for i in range(6):
        read = dataset[i]
        assert read["messages"] == source[i]["messages"] and read["task"] == source[i]["task"]
        assert [im.tobytes() for im in read["images"]] == [im.tobytes() for im in source[i]["images"]]
    with pytest.raises(ValueError, match="split"):
        WorldSource("shapes", 2, split="dev")


def test_importing_the_recipes_registers_shapesworld():
    import nexusgen.recipes  # noqa: F401

    assert get_world("shapes") is SHAPES_WORLD


def test_shapes_world_renders_scenes_and_labels_cells():
    image = SHAPES_WORLD.render(5, 2, 32)
    want = render_scene(sample_scene(np.random.default_rng([2, 5])), 32)
    assert image.tobytes() == want.tobytes()
    labels = SHAPES_WORLD.scene_labels
    assert labels.num_classes == (len(SHAPES) + 1, len(COLORS) + 1)
    scene = make_sample(0, seed=1, config=SampleConfig(tasks=("understand",))).meta["scenes"][0]
    shapes, colors = labels.cells(scene, 4, 4)
    want_shapes, want_colors = cell_labels(Scene.from_dict(scene), 4, 4)
    assert np.array_equal(shapes, want_shapes) and np.array_equal(colors, want_colors)
