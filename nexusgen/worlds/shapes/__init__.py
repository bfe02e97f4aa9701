"""ShapesWorld: a procedural world of coloured shapes with exact ground truth.

    from nexusgen.worlds.shapes import sample_scene, render_scene, detect, write_dataset
    scene = sample_scene(np.random.default_rng(0))         # 1-4 objects on a 3x3 grid
    image = render_scene(scene, 64)                         # anti-aliased PIL image (64/128/256 px...)
    objects = detect(image)                                 # parse any image back into objects
    write_dataset("data/shapes", 1000, seed=0)              # message-format JSONL + PNGs

Modules: `scene` (scene graph + sampler), `render`, `language` (EN/ZH words and phrasings), `tasks`
(questions, generation prompts with GenEval specs, edits), `detector`, `dataset` (training samples).
"""

from .dataset import Sample, SampleConfig, iter_samples, make_sample, stream_rng, write_dataset
from .detector import Detection, detect
from .render import render_scene
from .scene import (
    BACKGROUND,
    COLORS,
    HELD_OUT_COMBOS,
    SHAPES,
    SIZES,
    Scene,
    ShapeObject,
    sample_scene,
)
from .tasks import (
    EDIT_TYPES,
    GEN_CATEGORIES,
    UND_TYPES,
    EditItem,
    GenerateItem,
    UnderstandItem,
    make_edit,
    make_generation,
    make_understanding,
)

__all__ = [
    "BACKGROUND", "COLORS", "HELD_OUT_COMBOS", "SHAPES", "SIZES", "Scene", "ShapeObject", "sample_scene",
    "render_scene", "Detection", "detect", "SampleConfig", "Sample", "iter_samples", "make_sample",
    "stream_rng", "write_dataset", "EDIT_TYPES", "GEN_CATEGORIES", "UND_TYPES", "EditItem", "GenerateItem",
    "UnderstandItem", "make_edit", "make_generation", "make_understanding",
]
