"""The world registry: a world registered from above feeds training; unknown or broken worlds fail clearly."""

import pytest
from PIL import Image

from nexusgen.data.worlds import WORLDS, World, WorldSource, get_world, register_world


def _toy_sampler(options):
    color = options.pop("color", "red")
    if options:
        raise ValueError(f"unknown options {sorted(options)}")

    def sample(index, seed):
        image = Image.new("RGB", (8, 8), color)
        record = {"id": f"toy-{seed}-{index}", "images": ["<memory:0>"],
                  "messages": [{"role": "user", "content": "<image>\nWhat colour?"},
                               {"role": "assistant", "content": color}]}
        return record, [image]

    return sample


@pytest.fixture
def toy_world(monkeypatch):
    monkeypatch.setattr("nexusgen.data.worlds.WORLDS", dict(WORLDS))  # registrations end with the test
    world = World(name="toy", sampler=_toy_sampler, render=lambda index, seed, size: Image.new("RGB", (size, size)))
    register_world(world)
    return world


def test_a_registered_world_is_a_checked_map_style_source(toy_world):
    assert get_world("toy") is toy_world
    source = WorldSource("toy", 3, seed=5, color="blue")
    sample = source[-1]
    assert len(source) == 3 and sample["id"] == "toy-5-2" and sample["task"] == "understand"
    assert sample["images"][0].getpixel((0, 0)) == (0, 0, 255)
    with pytest.raises(IndexError):
        source[3]
    with pytest.raises(ValueError, match="unknown options"):
        WorldSource("toy", 3, shade="dark")


def test_an_unregistered_world_names_the_known_ones_and_how_to_register():
    with pytest.raises(ValueError, match=r"'nowhere' is not registered \(known: .*synthetic.*register_world"):
        WorldSource("nowhere", 3)
    with pytest.raises(ValueError, match="built-in"):
        register_world(World(name="synthetic", sampler=_toy_sampler, render=None))


def test_a_record_that_breaks_the_message_format_is_a_world_bug(toy_world, monkeypatch):
    def broken(options):
        def sample(index, seed):
            return {"id": "x", "images": [], "messages": [{"role": "user", "content": "<image> hi"}]}, []
        return sample

    register_world(World(name="broken", sampler=broken, render=toy_world.render))
    with pytest.raises(AssertionError, match="broken sample x breaks the message format"):
        WorldSource("broken", 1)[0]
