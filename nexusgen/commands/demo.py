"""`nexusgen demo`: the method in a minute on a CPU -- ShapesWorld questions, prompts and edits.

Draws a few ShapesWorld examples (a fixed random stream of `seed`), asks the model about rendered scenes,
generates from prompts and edits rendered scenes (each task one batched call), then writes
`DIR/demo.png` (a contact sheet: question + answer + expected answer; generated image + the prompt's
reference rendering; source, edit, target) and returns the answers as text lines.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from nexusgen.commands.common import model_from_args, save_image
from nexusgen.files import check_output_folder
from nexusgen.processing.contact_sheet import contact_sheet
from nexusgen.validation import check_seed
from nexusgen.worlds.shapes import make_edit, make_generation, make_understanding, render_scene

# One example per type, in this order (ShapesWorld task types).
UNDERSTAND_TYPES = ("count", "color", "shape")
GENERATE_CATEGORIES = ("single_object", "colors", "position")
EDIT_TYPES = ("recolour", "remove", "move")
SHEET = "demo.png"


def _items(seed: int):
    rng = np.random.default_rng([0xDE30, seed])
    understand = [make_understanding(rng, t, "en") for t in UNDERSTAND_TYPES]
    generate = [make_generation(rng, c, "en", "detailed") for c in GENERATE_CATEGORIES]
    edit = [make_edit(rng, t, "en") for t in EDIT_TYPES]
    return understand, generate, edit


def run_demo(model, out_dir: str | Path, seed: int = 0) -> list[str]:
    """Run the demo with `model` (a `NexusGen`) and write `out_dir/demo.png`.

    Returns:
        Human-readable lines: each question with the model's and the expected answer, each prompt and
        instruction, and where the contact sheet went.
    """
    understand, generate, edit = _items(seed)
    size = model.image_size
    scenes = [render_scene(it.scene, size) for it in understand]
    answers = model.understand(scenes, [it.question for it in understand], max_new_tokens=32)
    generated = model.generate([it.prompt for it in generate], seed=seed)
    sources = [render_scene(it.source, size) for it in edit]
    edited = model.edit(sources, [it.instruction for it in edit], seed=seed)
    tiles, lines = [], []
    for item, image, answer in zip(understand, scenes, answers, strict=True):
        tiles.append(([image], [f"Q: {item.question}", f"model: {answer}", f"expected: {item.answer}"]))
        lines.append(f"Q: {item.question}\n  model: {answer.strip()!r}  expected: {item.answer!r}")
    for item, image in zip(generate, generated, strict=True):
        tiles.append(([image, render_scene(item.scene, size)],
                      [f"generate: {item.prompt}", "(model | reference)"]))
        lines.append(f"generate: {item.prompt}")
    for item, source, image in zip(edit, sources, edited, strict=True):
        tiles.append(([source, image, render_scene(item.target, size)],
                      [f"edit: {item.instruction}", "(source | model | target)"]))
        lines.append(f"edit: {item.instruction}")
    sheet = contact_sheet(tiles, title=f"nexusgen demo: {model.name}")
    path = save_image(sheet, Path(out_dir) / SHEET)
    return [*lines, f"contact sheet: {path}"]


def demo(args: argparse.Namespace) -> int:
    """`nexusgen demo [--out DIR] [--seed S]`: prints the answers and where the contact sheet went."""
    seed = check_seed(args.seed, len(GENERATE_CATEGORIES), "--seed")
    out = check_output_folder(args.out)
    for line in run_demo(model_from_args(args), out, seed=seed):
        print(line)
    return 0
