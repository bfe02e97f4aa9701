"""Procedural worlds as training data, plugged in from above: a registry the data and train packages read.

A *world* draws endless, exactly labelled samples (ShapesWorld, `nexusgen.worlds.shapes`, is the one the
bundled model is trained on and benchmarked with). The data and training code are world-agnostic and never
import one: the layer that knows a world registers it here (`nexusgen.recipes.worlds` registers
ShapesWorld as "shapes" when `nexusgen.recipes` is imported, because its recipes train on it), and a
training config names it (`data.world`, with `data.world_options` passed to the world). The built-in
"synthetic" world (coloured rectangles, `nexusgen.data.synthetic`) needs no registration.

What a world gives training:

* `sampler(options)` -> `sample(index, seed) -> (record, images)`: a message-format record (JSON-ready,
  image paths as placeholders, optional "task" and "meta") and its PIL images; sample `index` of stream
  `seed` is always the same. `sampler` checks the options (ValueError) before any sample is drawn.
  `WorldSource` turns it into a map-style source and checks every record against the reader's rules.
* `render(index, seed, size_px) -> PIL image`: one scene, for image-only stages (`vae`).
* `scene_labels` (optional): what each LLM image token's cell shows, for stage `vlm` (`scene_labels.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from nexusgen.data.messages import InvalidRecord, check_record

SYNTHETIC = "synthetic"
"""The built-in world: `nexusgen.data.synthetic` (no registration, no scene labels)."""

Sample = Callable[[int, int], tuple[dict[str, Any], list[Image.Image]]]


@dataclass(frozen=True)
class SceneLabels:
    """Per-cell class labels of a world's images (a shape and a colour class per cell).

    Attributes:
        num_shapes: shape classes (a background class is added after them).
        num_colors: colour classes (likewise).
        cells: (scene dict from a sample's meta["scenes"], rows, cols) -> (shape ids, colour ids), two
            int64 arrays of rows * cols in raster order, -1 where no object covers the cell.
    """

    num_shapes: int
    num_colors: int
    cells: Callable[[dict, int, int], tuple[np.ndarray, np.ndarray]]

    @property
    def num_classes(self) -> tuple[int, int]:
        """(shape classes, colour classes), each with the background class last."""
        return self.num_shapes + 1, self.num_colors + 1


@dataclass(frozen=True)
class World:
    """A registered world (see the module docstring for the contract of each field)."""

    name: str
    sampler: Callable[[dict[str, Any]], Sample]
    render: Callable[[int, int, int], Image.Image]
    scene_labels: SceneLabels | None = None


WORLDS: dict[str, World] = {}


def register_world(world: World) -> None:
    """Make `world` available to training configs as `data.world = world.name` (registering again replaces)."""
    if world.name == SYNTHETIC:
        raise ValueError(f"{SYNTHETIC!r} is the built-in world; choose another name")
    WORLDS[world.name] = world


def get_world(name: str) -> World:
    """The registered world `name`.

    Raises:
        ValueError: no world of that name is registered (the message says how to register one).
    """
    if name not in WORLDS:
        known = ", ".join(sorted([SYNTHETIC, *WORLDS]))
        raise ValueError(f"data.world {name!r} is not registered (known: {known}); `import nexusgen.recipes` "
                         f"registers ShapesWorld as 'shapes', `nexusgen.data.worlds.register_world` any other")
    return WORLDS[name]


class WorldSource:
    """Map-style source over a registered world, in the `MessageDataset` sample format.

    `source[i]` is the world's record with its PIL images in "images" and the task inferred from the
    images' roles in "task". Every record is checked against the reader's rules, so a world and file
    data can never drift apart unnoticed.

    Args:
        world: a registered world's name.
        num_samples: the source's length (a world is endless; sample i is the same for any length).
        seed: the world's stream seed.
        **options: the world's own options (ShapesWorld: `SampleConfig` fields such as image_size, tasks,
            split, prompt_style, zh_fraction).

    Raises:
        ValueError: num_samples < 1, an unregistered world, or options the world refuses.
    """

    def __init__(self, world: str, num_samples: int, seed: int = 0, **options: Any):
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        self.world, self.num_samples, self.seed = get_world(world), num_samples, seed
        self._sample = self.world.sampler(options)

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} {self.world.name} samples")
        record, images = self._sample(index % len(self), self.seed)
        try:
            task = check_record(record)
        except InvalidRecord as err:  # a generator bug, not bad user data
            raise AssertionError(f"{self.world.name} sample {record.get('id')} breaks the message format: "
                                 f"{err}") from None
        record.update(images=images, task=task)
        return record
