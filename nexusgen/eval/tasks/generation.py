"""ShapesWorld generation: GenEval's categories and rules, scored by the ShapesWorld detector."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from nexusgen.files import atomic_save_image
from nexusgen.tasks import GENERATE
from nexusgen.worlds.shapes import GEN_CATEGORIES, GenerateItem, detect, make_generation
from nexusgen.worlds.shapes.language import caption
from nexusgen.worlds.shapes.tasks import COLORED_CATEGORIES

from ..harness import batched, check_outputs, load_artifact
from ..metrics import geneval_correct, geneval_overall, mean, scene_matches
from .common import eval_rng, plan, split_means

TASK = GENERATE
SECTION = "generation"
"""This task's section of results.json, its artifact folder and its name in samples.jsonl."""


def build(num: int, seed: int, *, compositional_fraction: float, zh_fraction: float,
          prompt_style: str = "short") -> list[GenerateItem]:
    """`num` prompts, categories cycled; compositional prompts name a held-out (colour, shape) pair
    (short prompts: only the categories that name colours)."""
    comp_types = COLORED_CATEGORIES if prompt_style == "short" else GEN_CATEGORIES
    slots = plan(lambda i: eval_rng(seed, TASK, i, 1), num, GEN_CATEGORIES, comp_types,
                 compositional_fraction=compositional_fraction, zh_fraction=zh_fraction)
    return [make_generation(eval_rng(seed, TASK, i), s.type, s.lang, prompt_style,
                            compositional=s.compositional) for i, s in enumerate(slots)]


def run(model, items: list[GenerateItem], out_dir: Path, *, batch_size: int, seed: int, **_) -> None:
    """Generate one image per prompt (seed = eval seed + batch start) and save it."""
    folder = Path(out_dir) / SECTION
    for start, batch in batched(items, batch_size):
        images = check_outputs(model.generate([it.prompt for it in batch], seed=seed + start), len(batch),
                               Image.Image, "generate")
        for k, image in enumerate(images):
            atomic_save_image(image.convert("RGB"), folder / f"{start + k:05d}.png")


def score(items: list[GenerateItem], out_dir: Path) -> tuple[list[dict], dict]:
    """GenEval's per-image rule on the detector's parse; overall = mean of category means."""
    records = []
    for i, item in enumerate(items):
        detections = detect(load_artifact(Path(out_dir) / SECTION / f"{i:05d}.png"))
        correct, reason = geneval_correct(detections, item.spec)
        exact, _ = scene_matches(detections, item.scene)
        records.append({"task": SECTION, "index": i, "type": item.category, "lang": item.lang,
                        "compositional": item.compositional, "style": item.style, "prompt": item.prompt,
                        "correct": correct, "reason": reason, "scene_match": exact,
                        "detections": [d.to_dict() for d in detections]})
    main = [r for r in records if not r["compositional"]]
    comp = [r for r in records if r["compositional"]]
    by_category = split_means(main, "correct", "type")
    section = {"overall": geneval_overall(by_category), "by_category": by_category, "n": len(main),
               "prompt_style": items[0].style if items else None,
               "by_language": split_means(main, "correct", "lang"),
               "compositional": {"overall": geneval_overall(split_means(comp, "correct", "type")),
                                 "n": len(comp)}}
    if items and items[0].style == "detailed":
        # A detailed prompt fixes every object; this is the stricter "whole scene right" rate.
        section["scene_match"] = mean(r["scene_match"] for r in main)
    return records, section


def failure_tiles(items, records, out_dir: Path, limit: int) -> list[tuple[list, list[str]]]:
    tiles = []
    for r in [r for r in records if not r["correct"]][:limit]:
        image = load_artifact(Path(out_dir) / SECTION / f"{r['index']:05d}.png")
        item = items[r["index"]]
        tiles.append(([image], [f"G{r['index']} {r['type']} [{r['lang']}]", f"P: {r['prompt']}",
                                f"e.g. {caption(item.scene, 'en')}", f"why: {r['reason']}"]))
    return tiles
