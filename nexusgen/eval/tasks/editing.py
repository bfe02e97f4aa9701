"""ShapesWorld editing: success = the parsed output is exactly the target scene; preservation = PSNR
and SSIM against the source outside the edited region (the changed objects' boxes, dilated). For a model
that predicts embeddings (`NexusGen`), also `embedding_gain`: how much of each edit its AR prediction
carries before a decoder draws it (`metrics.edit_embedding_gain`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from nexusgen.files import atomic_save_image, json_safe, write_json
from nexusgen.tasks import EDIT
from nexusgen.worlds.shapes import EDIT_TYPES, EditItem, detect, make_edit, render_scene
from nexusgen.worlds.shapes.language import caption

from ..harness import batched, check_outputs, load_artifact
from ..metrics import edit_embedding_gain, mean, psnr, scene_matches, ssim
from .common import eval_rng, plan, split_means

TASK = EDIT
SECTION = "editing"
"""This task's section of results.json, its artifact folder and its name in samples.jsonl."""
# Margin around changed objects' boxes (fraction of the image side) that counts as edited: covers the
# anti-aliased rim and a decoder's local smearing.
REGION_MARGIN = 0.04
GAIN_FILE = "embedding_gain.json"


def build(num: int, seed: int, *, compositional_fraction: float, zh_fraction: float) -> list[EditItem]:
    slots = plan(lambda i: eval_rng(seed, TASK, i, 1), num, EDIT_TYPES, EDIT_TYPES,
                 compositional_fraction=compositional_fraction, zh_fraction=zh_fraction)
    return [make_edit(eval_rng(seed, TASK, i), s.type, s.lang, compositional=s.compositional)
            for i, s in enumerate(slots)]


def edited_region(item: EditItem, size: int, margin: float = REGION_MARGIN) -> np.ndarray:
    """Boolean (size, size): pixels whose centre lies in a changed object's box grown by `margin`."""
    boxes = [item.source.objects[i].bbox() for i in item.changed_source]
    boxes += [item.target.objects[i].bbox() for i in item.changed_target]
    centres = (np.arange(size) + 0.5) / size
    mask = np.zeros((size, size), dtype=bool)
    for x0, y0, x1, y1 in boxes:
        rows = (centres >= y0 - margin) & (centres <= y1 + margin)
        cols = (centres >= x0 - margin) & (centres <= x1 + margin)
        mask |= rows[:, None] & cols[None, :]
    return mask


def run(model, items: list[EditItem], out_dir: Path, *, image_size: int, batch_size: int, seed: int,
        decoder: str, **_) -> None:
    """Render sources at the model's size, edit them, save sources and outputs."""
    folder = Path(out_dir) / SECTION
    sources = [render_scene(item.source, image_size) for item in items]
    for i, image in enumerate(sources):
        atomic_save_image(image, folder / "source" / f"{i:05d}.png")
    for start, batch in batched(items, batch_size):
        outputs = model.edit(sources[start:start + len(batch)], [it.instruction for it in batch],
                             decoder=decoder, seed=seed + start)
        for k, image in enumerate(check_outputs(outputs, len(batch), Image.Image, "edit")):
            atomic_save_image(image.convert("RGB"), folder / "output" / f"{start + k:05d}.png")
    if hasattr(model, "predict_image_embeds") and hasattr(model, "encode_images"):
        write_json(json_safe(embedding_gains(model, items, sources, image_size, batch_size)), folder / GAIN_FILE)


def embedding_gains(model, items: list[EditItem], sources: list[Image.Image], image_size: int,
                    batch_size: int) -> list[float]:
    """`edit_embedding_gain` of each item: the AR model's prediction against the encoder's embeddings of
    the source and of the true result."""
    gains = []
    for start, batch in batched(items, batch_size):
        batch_sources = sources[start:start + len(batch)]
        predicted = model.predict_image_embeds([it.instruction for it in batch], batch_sources)
        source = model.encode_images(batch_sources)
        target = model.encode_images([render_scene(it.target, image_size) for it in batch])
        gains += edit_embedding_gain(predicted.numpy(), source.numpy(), target.numpy()).tolist()
    return gains


def score_one(item: EditItem, source: Image.Image, output: Image.Image) -> dict:
    """Success, and preservation outside the edited region (output resized to the source's size)."""
    detections = detect(output)
    success, reason = scene_matches(detections, item.target)
    if output.size != source.size:
        output = output.resize(source.size, Image.Resampling.BILINEAR)
    region = edited_region(item, source.size[0])
    src, out = np.asarray(source), np.asarray(output)
    # SSIM windows near the region would see the (intended) change: paste the source into the region
    # first, so only differences outside it count.
    pasted = np.where(region[..., None], src, out)
    target = render_scene(item.target, source.size[0])
    return {"success": success, "reason": reason, "psnr_outside": psnr(out, src, ~region),
            "ssim_outside": ssim(pasted, src, ~region), "psnr_target": psnr(output, target),
            "detections": [d.to_dict() for d in detections]}


def score(items: list[EditItem], out_dir: Path, decoder: str = "editing") -> tuple[list[dict], dict]:
    folder = Path(out_dir) / SECTION
    records = []
    for i, item in enumerate(items):
        result = score_one(item, load_artifact(folder / "source" / f"{i:05d}.png"),
                           load_artifact(folder / "output" / f"{i:05d}.png"))
        records.append({"task": SECTION, "index": i, "type": item.etype, "lang": item.lang,
                        "compositional": item.compositional, "instruction": item.instruction, **result})
    main = [r for r in records if not r["compositional"]]
    comp = [r for r in records if r["compositional"]]
    section = {"success": mean(r["success"] for r in main),
               "psnr_outside": mean(r["psnr_outside"] for r in main),
               "ssim_outside": mean(r["ssim_outside"] for r in main),
               "psnr_target": mean(r["psnr_target"] for r in main),
               "by_type": split_means(main, "success", "type"), "n": len(main), "decoder": decoder,
               "psnr_outside_by_type": split_means(main, "psnr_outside", "type"),
               "by_language": split_means(main, "success", "lang"),
               "compositional": {"success": mean(r["success"] for r in comp), "n": len(comp)}}
    if (folder / GAIN_FILE).is_file():
        gains = json.loads((folder / GAIN_FILE).read_text(encoding="utf-8"))
        for record, gain in zip(records, gains, strict=True):
            record["embedding_gain"] = gain  # None: source and target embeddings identical
        section["embedding_gain"] = mean(r["embedding_gain"] for r in main if r["embedding_gain"] is not None)
        section["embedding_gain_by_type"] = split_means(main, "embedding_gain", "type")
    return records, section


def failure_tiles(items, records, out_dir: Path, limit: int) -> list[tuple[list, list[str]]]:
    folder = Path(out_dir) / SECTION
    failed = sorted((r for r in records if not r["success"]), key=lambda r: r["psnr_outside"])
    tiles = []
    for r in failed[:limit]:
        item = items[r["index"]]
        source = load_artifact(folder / "source" / f"{r['index']:05d}.png")
        output = load_artifact(folder / "output" / f"{r['index']:05d}.png")
        target = render_scene(item.target, source.size[0])
        tiles.append(([source, output, target], [
            f"E{r['index']} {r['type']} [{r['lang']}] psnr_out={r['psnr_outside']:.1f}",
            f"I: {r['instruction']}", f"target: {caption(item.target, 'en')}", f"why: {r['reason']}"]))
    return tiles
