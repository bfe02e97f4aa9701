"""The built-in "synthetic" world: bare coloured rectangles, in message format, in memory.

No files are needed: sample i is a pure function of `(seed, i)`, rendered on access, so a source is
map-style like `MessageDataset` and can sit in a `MixtureSampler`. `write_jsonl` turns any map-style
source (this one, or a registered world's `nexusgen.data.worlds.WorldSource`) into a real message-format
JSONL with PNG files, for tests of the file readers and of `prepare-embeds`.

`SyntheticSource` is the minimal world that needs no registration (richer worlds such as ShapesWorld
plug in through `nexusgen.data.worlds`): one coloured rectangle per image.

Each sample has one rectangle of a named colour on a white background:
  * understand: "<image>\\nWhat colour is the rectangle?" -> "red."
  * generate:   the docs/upstream.md §4.1 generation template around "a red rectangle on a white background"
                -> "Here is an image based on the description: <image>"
  * edit:       "<image> Make the rectangle blue." -> "Here is the image: <image>" (same box, new colour)
  * text:       "Name the colour of a ripe tomato." -> "red." (no image)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from nexusgen.data.messages import RECORD_TASKS
from nexusgen.files import atomic_write_text
from nexusgen.processing.templates import CANONICAL_ANSWER_PREFIXES, IMAGE_PLACEHOLDER, user_text

# The canonical English answers of an image request (`nexusgen.processing.templates`).
GENERATE_ANSWER = CANONICAL_ANSWER_PREFIXES["generate_en"] + IMAGE_PLACEHOLDER
EDIT_ANSWER = CANONICAL_ANSWER_PREFIXES["edit_en"] + IMAGE_PLACEHOLDER

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 160, 60), "blue": (40, 90, 220), "yellow": (240, 220, 30),
    "purple": (130, 50, 180), "orange": (250, 135, 20),
}
_TEXT_FACTS = {"red": "a ripe tomato", "green": "fresh grass", "blue": "a clear sky", "yellow": "a lemon",
               "purple": "an aubergine", "orange": "an orange"}
BACKGROUND = (255, 255, 255)


def render_rectangle(box: tuple[int, int, int, int], color: str, size: int) -> Image.Image:
    """A `size` x `size` white RGB image with a filled rectangle `box` = (x0, y0, x1, y1), inclusive."""
    image = Image.new("RGB", (size, size), BACKGROUND)
    ImageDraw.Draw(image).rectangle(box, fill=COLORS[color])
    return image


class SyntheticSource:
    """Map-style source of coloured-rectangle samples in message format.

    `source[i]` returns the same dict as `MessageDataset`::

        {"id": "synthetic-<seed>-<i>", "source": "synthetic", "messages": [...],
         "images": [PIL.Image RGB (size x size), ...], "task": one of `tasks`,
         "color": str, "box": [x0, y0, x1, y1],          # ground truth, for checks
         "new_color": str}                               # edit samples only: colour of images[1]

    Args:
        num_samples: number of samples (the source's length).
        seed: sample i depends only on (seed, i).
        image_size: side of the square images in pixels (>= 8).
        tasks: the tasks to cycle through, in order (sample i has task tasks[i % len(tasks)]).

    Raises:
        ValueError: bad sizes or an unknown task.
    """

    def __init__(self, num_samples: int, seed: int = 0, *, image_size: int = 32,
                 tasks: Sequence[str] = ("understand", "generate", "edit")):
        if num_samples < 1 or image_size < 8:
            raise ValueError(f"need num_samples >= 1 and image_size >= 8, got {num_samples}, {image_size}")
        if not tasks or any(t not in RECORD_TASKS for t in tasks):
            raise ValueError(f"tasks must be a non-empty subset of {RECORD_TASKS}, got {tasks!r}")
        self.num_samples, self.seed, self.image_size, self.tasks = num_samples, seed, image_size, tuple(tasks)

    def __len__(self) -> int:
        return self.num_samples

    def _box(self, rng: np.random.Generator) -> tuple[int, int, int, int]:
        s = self.image_size
        w, h = rng.integers(s // 4, s * 3 // 4, size=2, endpoint=True)
        x0, y0 = rng.integers(0, s - w, endpoint=True), rng.integers(0, s - h, endpoint=True)
        return int(x0), int(y0), int(x0 + w - 1), int(y0 + h - 1)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} synthetic samples")
        index %= len(self)
        rng = np.random.default_rng([self.seed, index])
        task = self.tasks[index % len(self.tasks)]
        names = list(COLORS)
        color, new_color = (names[int(k)] for k in rng.choice(len(names), size=2, replace=False))
        box = self._box(rng)
        image = render_rectangle(box, color, self.image_size)
        if task == "understand":
            messages = [("user", "<image>\nWhat colour is the rectangle?"), ("assistant", f"{color}.")]
            images = [image]
        elif task == "generate":
            caption = f"a {color} rectangle on a white background"
            messages = [("user", user_text(caption, "generate")), ("assistant", GENERATE_ANSWER)]
            images = [image]
        elif task == "edit":
            messages = [("user", f"<image> Make the rectangle {new_color}."), ("assistant", EDIT_ANSWER)]
            images = [image, render_rectangle(box, new_color, self.image_size)]
        else:
            messages = [("user", f"Name the colour of {_TEXT_FACTS[color]}."), ("assistant", f"{color}.")]
            images = []
        return {"id": f"synthetic-{self.seed}-{index}", "source": "synthetic",
                "messages": [{"role": r, "content": c} for r, c in messages], "images": images,
                "task": task, "color": color, "box": list(box),
                **({"new_color": new_color} if task == "edit" else {})}


def write_jsonl(source: Any, path: str | Path, indices: Sequence[int] | None = None) -> Path:
    """Write samples of a map-style source as a message-format JSONL with PNG images.

    Images go to `<path's folder>/images/<id>_<k>.png` and are referenced relative to the JSONL's
    folder (the `MessageDataset` default). The JSONL itself is written atomically.

    Args:
        source: map-style source of sample dicts (e.g. `SyntheticSource`).
        path: the JSONL to write.
        indices: which samples (default: all).

    Returns:
        The JSONL path.
    """
    path = Path(path)
    image_dir = path.parent / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for index in range(len(source)) if indices is None else indices:
        sample = dict(source[index])
        names = []
        for k, image in enumerate(sample.pop("images")):
            name = f"images/{sample['id']}_{k}.png"
            image.save(path.parent / name)
            names.append(name)
        lines.append(json.dumps({**sample, "images": names}, ensure_ascii=False))
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
