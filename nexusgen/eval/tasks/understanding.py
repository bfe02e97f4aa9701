"""ShapesWorld understanding: questions with exact answers; normalised exact match per question type."""

from __future__ import annotations

from pathlib import Path

from nexusgen.files import atomic_save_image, read_jsonl, write_jsonl
from nexusgen.tasks import UNDERSTAND
from nexusgen.worlds.shapes import UND_TYPES, UnderstandItem, make_understanding, render_scene
from nexusgen.worlds.shapes.language import read_caption

from ..harness import batched, check_outputs, load_artifact
from ..metrics import answer_matches, mean
from .common import eval_rng, plan, split_means

TASK = UNDERSTAND
SECTION = "understanding"
"""This task's section of results.json, its artifact folder and its name in samples.jsonl."""


def build(num: int, seed: int, *, compositional_fraction: float, zh_fraction: float) -> list[UnderstandItem]:
    """`num` questions, types cycled, the last fraction over scenes showing a held-out pair."""
    slots = plan(lambda i: eval_rng(seed, TASK, i, 1), num, UND_TYPES, UND_TYPES,
                 compositional_fraction=compositional_fraction, zh_fraction=zh_fraction)
    return [make_understanding(eval_rng(seed, TASK, i), s.type, s.lang, compositional=s.compositional)
            for i, s in enumerate(slots)]


def run(model, items: list[UnderstandItem], out_dir: Path, *, image_size: int, batch_size: int,
        max_new_tokens: int, **_) -> None:
    """Render each scene at the model's size, ask the model, save inputs and answers."""
    folder = Path(out_dir) / SECTION
    images = [render_scene(item.scene, image_size) for item in items]
    for i, image in enumerate(images):
        atomic_save_image(image, folder / "inputs" / f"{i:05d}.png")
    answers: list[str] = []
    for start, batch in batched(items, batch_size):
        outputs = model.understand(images[start:start + len(batch)], [it.question for it in batch],
                                   max_new_tokens=max_new_tokens)
        answers += check_outputs(outputs, len(batch), str, "understand")
    write_jsonl([{"index": i, "answer": a} for i, a in enumerate(answers)], folder / "answers.jsonl")


def score(items: list[UnderstandItem], out_dir: Path) -> tuple[list[dict], dict]:
    """Per-sample records and the results section."""
    path = Path(out_dir) / SECTION / "answers.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"missing artifact {path} (run the benchmark without --score-only first)")
    answers = {r["index"]: r["answer"] for r in read_jsonl(path)}
    records = []
    for i, item in enumerate(items):
        if i not in answers:
            raise ValueError(f"{path} has no answer for item {i}")
        records.append({"task": SECTION, "index": i, "type": item.qtype, "lang": item.lang,
                        "compositional": item.compositional, "question": item.question,
                        "expected": item.answer, "answer": answers[i],
                        "correct": answer_matches(answers[i], item.answer, item.qtype)})
    main = [r for r in records if not r["compositional"]]
    comp = [r for r in records if r["compositional"]]
    section = {"accuracy": mean(r["correct"] for r in main), "by_type": split_means(main, "correct", "type"),
               "n": len(main), "by_language": split_means(main, "correct", "lang"),
               "compositional": {"accuracy": mean(r["correct"] for r in comp), "n": len(comp)}}
    captions = [(item, r) for item, r in zip(items, records) if item.qtype == "caption" and not r["compositional"]]
    if captions:
        section["caption_errors"] = caption_errors(captions)
    return records, section


def caption_errors(captions: list[tuple[UnderstandItem, dict]]) -> dict:
    """Where captions go wrong: per described object (captions that name as many objects as the scene
    holds, compared in reading order), the share with a wrong size, colour, shape, row or column; and the
    share of captions that name another number of objects or cannot be read."""
    wrong = dict.fromkeys(("size", "color", "shape", "row", "column"), 0)
    objects = miscounted = 0
    for item, record in captions:
        said, truth = read_caption(record["answer"], item.lang), item.scene.sorted().objects
        if said is None or len(said) != len(truth):
            miscounted += 1
            continue
        for got, obj in zip(said, truth):
            objects += 1
            for name, want, have in (("size", obj.size, got["size"]), ("color", obj.color, got["color"]),
                                     ("shape", obj.shape, got["shape"]), ("row", obj.row, got["cell"][0]),
                                     ("column", obj.col, got["cell"][1])):
                wrong[name] += want != have
    return {"objects": objects, **{k: (v / objects if objects else None) for k, v in wrong.items()},
            "wrong_object_count": miscounted / len(captions)}


def failure_tiles(items, records, out_dir: Path, limit: int) -> list[tuple[list, list[str]]]:
    """Contact-sheet tiles (images, text lines) of wrong answers."""
    tiles = []
    for r in [r for r in records if not r["correct"]][:limit]:
        image = load_artifact(Path(out_dir) / SECTION / "inputs" / f"{r['index']:05d}.png")
        tiles.append(([image], [f"U{r['index']} {r['type']} [{r['lang']}]", f"Q: {r['question']}",
                                f"want: {r['expected']}", f"got: {r['answer']}"]))
    return tiles
