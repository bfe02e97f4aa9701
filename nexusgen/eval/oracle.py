"""Reference "models" for the ShapesWorld harness: the ground-truth oracle, a blank baseline, and a real
model generating from ground-truth embeddings (the decoder's ceiling).

Both follow the duck-typed interface the harness expects of `nexusgen.api.NexusGen` (lists in, lists
out): `understand(images, prompts, max_new_tokens=...)`, `generate(prompts, seed=...)`,
`edit(images, prompts, decoder=..., seed=...)`, `name`, `image_size`.

The oracle knows the evaluation items (`register`): it answers from the scene graph of the image it is
shown and draws the exact target scene. It must score ~1.0; anything less is a bug in the scorer or
the detector. The blank model answers "yes" to everything and returns empty images; it must score
low. Together they bound the benchmark and test the harness end to end.
"""

from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image

from nexusgen.worlds.shapes import BACKGROUND, render_scene
from nexusgen.worlds.shapes.render import DEFAULT_SIZE


def image_digest(image: Image.Image) -> str:
    """Content hash of an image's RGB pixels and size."""
    arr = np.asarray(image.convert("RGB"))
    return hashlib.sha1(arr.tobytes() + repr(arr.shape).encode()).hexdigest()


class OracleModel:
    """Answers and draws from ground truth registered with `register`."""

    name = "oracle"

    def __init__(self, image_size: int = DEFAULT_SIZE):
        self.image_size = image_size
        self._answers: dict[tuple[str, str], str] = {}
        self._generations: dict[str, object] = {}
        self._edits: dict[tuple[str, str], object] = {}

    def register(self, understand=(), generate=(), edit=()) -> None:
        """Learn the ground truth of evaluation items (UnderstandItem / GenerateItem / EditItem)."""
        for item in understand:
            key = (image_digest(render_scene(item.scene, self.image_size)), item.question)
            self._answers[key] = item.answer
        for item in generate:
            self._generations.setdefault(item.prompt, item.scene)
        for item in edit:
            key = (image_digest(render_scene(item.source, self.image_size)), item.instruction)
            self._edits[key] = item.target

    def _blank(self) -> Image.Image:
        return Image.new("RGB", (self.image_size, self.image_size), BACKGROUND)

    def understand(self, images, prompts, max_new_tokens: int = 128) -> list[str]:
        _check_batch(images, prompts)
        return [self._answers.get((image_digest(im), p), "") for im, p in zip(images, prompts)]

    def generate(self, prompts, seed: int = 0) -> list[Image.Image]:
        scenes = [self._generations.get(p) for p in prompts]
        return [render_scene(s, self.image_size) if s is not None else self._blank() for s in scenes]

    def edit(self, images, prompts, decoder: str = "editing", seed: int = 0) -> list[Image.Image]:
        _check_batch(images, prompts)
        targets = [self._edits.get((image_digest(im), p)) for im, p in zip(images, prompts)]
        return [render_scene(t, self.image_size) if t is not None else self._blank() for t in targets]


class GroundTruthEmbedsModel:
    """A model that decodes the embeddings of each item's true result (its scene rendered, then
    `NexusGen.encode_images`) instead of the AR model's prediction, with the same decoders.

    The decoders alone, on the inputs they were trained on: the ceiling that predicted embeddings are
    measured against (docs/architecture.md §9: decoder on ground-truth vs on predicted embeddings). `generate` decodes
    the item's scene with the generation decoder; `edit` decodes the true target with the editing decoder
    (conditioned on the source, as in `NexusGen.edit`) or the generation decoder. Understanding is the
    wrapped model's own. Items are registered in order and must be asked for in that order (two items may
    share a short prompt but not a scene).
    """

    def __init__(self, model):
        self.model = model
        self.name = f"{model.name} (ground-truth embeddings)"
        self.image_size = model.image_size
        self._queues: dict[str, list[tuple[str, object]]] = {"generate": [], "edit": []}

    def register(self, understand=(), generate=(), edit=()) -> None:
        self._queues = {"generate": [(item.prompt, item.scene) for item in generate],
                        "edit": [(item.instruction, item.target) for item in edit]}

    def _targets(self, task: str, prompts) -> list[Image.Image]:
        queue = self._queues[task]
        taken, self._queues[task] = queue[:len(prompts)], queue[len(prompts):]
        if [prompt for prompt, _ in taken] != list(prompts):
            raise ValueError(f"GroundTruthEmbedsModel.{task}: prompts differ from the registered items' order")
        return [render_scene(scene, self.image_size) for _, scene in taken]

    def generate(self, prompts, seed: int = 0) -> list[Image.Image]:
        embeds = self.model.encode_images(self._targets("generate", prompts))
        return self.model.decode(embeds, seed=seed)

    def understand(self, images, prompts, max_new_tokens: int = 128) -> list[str]:
        return self.model.understand(images, prompts, max_new_tokens=max_new_tokens)

    def edit(self, images, prompts, decoder: str = "editing", seed: int = 0) -> list[Image.Image]:
        embeds = self.model.encode_images(self._targets("edit", prompts))
        source = list(images) if decoder == "editing" else None
        return self.model.decode(embeds, seed=seed, source=source)


class BlankModel:
    """The "wrong" baseline: a fixed answer and background-only images."""

    name = "blank"

    def __init__(self, image_size: int = DEFAULT_SIZE, answer: str = "yes"):
        self.image_size = image_size
        self.answer = answer

    def understand(self, images, prompts, max_new_tokens: int = 128) -> list[str]:
        _check_batch(images, prompts)
        return [self.answer for _ in prompts]

    def generate(self, prompts, seed=0, *, height: int | None = None, width: int | None = None) -> list[Image.Image]:
        size = (width or self.image_size, height or self.image_size)
        return [Image.new("RGB", size, BACKGROUND) for _ in prompts]

    def edit(self, images, prompts, decoder: str = "editing", seed=0, *, height: int | None = None,
             width: int | None = None) -> list[Image.Image]:
        _check_batch(images, prompts)
        return [Image.new("RGB", (width or im.width, height or im.height), BACKGROUND) for im in images]


def _check_batch(images, prompts) -> None:
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
