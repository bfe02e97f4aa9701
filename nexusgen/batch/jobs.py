"""Batch generation, editing and understanding over files of items (`nexusgen.batch.items`), resumable and
sharded (`nexusgen.batch.runner`), with a results file of one record per item (`nexusgen.batch.records`).

Outputs: `generate_images` / `edit_images` write `OUT/<id>.png` and `OUT/results.jsonl`; `answer_questions`
writes the answers file. A record holds the item's id and line, its prompt, its seed, every setting it was made
with (the model's defaults filled in) and the model's name; the image is in place before its record is.

An item is done when its record matches what it asks now (prompt, seed, every setting given, the model) and
its image exists: a rerun skips it, a changed line is made again. Items are batched in input order and a
batch is split by output size and decoder; the pipelines give an item the same numbers alone or in any batch
(`nexusgen.models.batch_invariance`), so the files do not depend on the batch size or the number of processes.

The model is loaded on first use: a run with nothing left to do loads nothing.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nexusgen.batch.items import BatchItem
from nexusgen.batch.records import RecordLog, matches, records_folder
from nexusgen.batch.runner import ItemError, RunSummary, Shard, run_items
from nexusgen.files import atomic_save_image
from nexusgen.validation import DEFAULT_MAX_NEW_TOKENS

RESULTS_NAME = "results.jsonl"


@dataclass(frozen=True)
class RunOptions:
    """How a batch run goes: items per model call, this process's shard, bad items skipped or fatal, the bar."""

    batch_size: int = 4
    shard: Shard = Shard()
    skip_bad: bool = False
    progress: bool | None = None
    report: Callable[[str], None] | None = None


@dataclass(frozen=True)
class ImageOptions:
    """The command's image settings (None: the model's default); an item's own height / width win."""

    height: int | None = None
    width: int | None = None
    num_steps: int | None = None
    guidance_scale: float | None = None
    decoder: str = "editing"


@dataclass(frozen=True)
class AnswerOptions:
    """The command's answering settings (as `NexusGen.understand`)."""

    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0


def generate_images(load_model: Callable, model_name: str, items: list[BatchItem], out_dir, *,
                    image: ImageOptions = ImageOptions(), run: RunOptions = RunOptions()) -> RunSummary:
    """One image per prompt item, `out_dir/<id>.png`, and `out_dir/results.jsonl`.

    Args:
        load_model: returns the model (`NexusGen` or anything with its `generate` and `config`); called once,
            when the first batch needs it.
        model_name: recorded with every item (a record of another model is not done).
        items: the prompts (`read_items(..., PROMPTS)`).
        out_dir: the output folder (created).
    """
    return _image_run("generate", load_model, model_name, items, Path(out_dir), image, run)


def edit_images(load_model: Callable, model_name: str, items: list[BatchItem], out_dir, *,
                image: ImageOptions = ImageOptions(), run: RunOptions = RunOptions()) -> RunSummary:
    """One edited image per edit item, `out_dir/<id>.png`, and `out_dir/results.jsonl` (as `generate_images`)."""
    return _image_run("edit", load_model, model_name, items, Path(out_dir), image, run)


def answer_questions(load_model: Callable, model_name: str, items: list[BatchItem], out_file, *,
                     answer: AnswerOptions = AnswerOptions(), run: RunOptions = RunOptions()) -> RunSummary:
    """One answer record per question item, in `out_file` (JSONL, input order)."""
    out_file = Path(out_file)
    log = RecordLog(records_folder(out_file, inside=False))
    done = log.read()
    model = functools.cache(load_model)
    settings = {"max_new_tokens": answer.max_new_tokens, "temperature": answer.temperature, "top_k": answer.top_k,
                "top_p": answer.top_p, "model": model_name}

    def expected(item: BatchItem) -> dict:
        return {"id": item.id, "line": item.line, "image": list(item.image_names), "prompt": item.prompt,
                "seed": item.seed, **settings}

    def process(batch: list[BatchItem]) -> None:
        entries = [_single_or_list(_load_images(item)) for item in batch]
        texts = model().understand(entries, [item.prompt for item in batch], seed=[item.seed for item in batch],
                                   max_new_tokens=answer.max_new_tokens, temperature=answer.temperature,
                                   top_k=answer.top_k, top_p=answer.top_p)
        log.append({**expected(item), "answer": text} for item, text in zip(batch, texts, strict=True))

    summary = run_items(items, is_done=lambda item: matches(done.get(item.id), expected(item)), process=process,
                        batch_size=run.batch_size, desc="understand", progress=run.progress, shard=run.shard,
                        where=lambda item: item.where, skip_bad=run.skip_bad, report=run.report)
    log.merge(out_file)
    return summary


def _image_run(task: str, load_model: Callable, model_name: str, items: list[BatchItem], out_dir: Path,
               options: ImageOptions, run: RunOptions) -> RunSummary:
    log = RecordLog(records_folder(out_dir, inside=True))
    done = log.read()
    model = functools.cache(load_model)

    def expected(item: BatchItem) -> dict:
        record = {"id": item.id, "line": item.line, "file": f"{item.id}.png", "prompt": item.prompt,
                  "seed": item.seed, "height": item.options.get("height", options.height),
                  "width": item.options.get("width", options.width), "num_steps": options.num_steps,
                  "guidance_scale": options.guidance_scale, "model": model_name}
        if task == "edit":
            record.update(image=item.image_names[0], decoder=item.options.get("decoder", options.decoder))
        return record

    def is_done(item: BatchItem) -> bool:
        return matches(done.get(item.id), expected(item)) and (out_dir / f"{item.id}.png").is_file()

    def process(batch: list[BatchItem]) -> None:
        sources = {item.id: _load_images(item)[0] for item in batch} if task == "edit" else {}
        groups: dict[tuple, list[BatchItem]] = {}
        for item in batch:
            record = expected(item)
            groups.setdefault((record["height"], record["width"], record.get("decoder")), []).append(item)
        for (height, width, decoder), members in groups.items():
            call = dict(seed=[item.seed for item in members], height=height, width=width,
                        num_steps=options.num_steps, guidance_scale=options.guidance_scale, progress=False)
            prompts = [item.prompt for item in members]
            images = model().edit([sources[item.id] for item in members], prompts, decoder=decoder, **call) \
                if task == "edit" else model().generate(prompts, **call)
            resolved = _resolved(model(), height, width, options, decoder)
            for item, picture in zip(members, images, strict=True):
                atomic_save_image(picture, out_dir / f"{item.id}.png")
            log.append({**expected(item), **resolved} for item in members)  # after the images: the marker

    summary = run_items(items, is_done=is_done, process=process, batch_size=run.batch_size, desc=task,
                        progress=run.progress, shard=run.shard, where=lambda item: item.where, skip_bad=run.skip_bad,
                        report=run.report)
    log.merge(out_dir / RESULTS_NAME)
    return summary


def _resolved(model, height, width, options: ImageOptions, decoder: str | None) -> dict:
    """The settings an image was made with, the model's defaults filled in."""
    from nexusgen.pipelines.generate import image_settings

    settings = image_settings(model.config, height=height, width=width, num_steps=options.num_steps,
                              guidance_scale=options.guidance_scale, seed=0, edit=decoder == "editing")
    return {"height": settings.height, "width": settings.width, "num_steps": settings.num_steps,
            "guidance_scale": settings.guidance_scale}


def _load_images(item: BatchItem) -> list:
    """The item's input images, or an ItemError naming its line."""
    from nexusgen.processing.images import load_image

    try:
        return [load_image(path) for path in item.images]
    except (ValueError, OSError) as err:
        raise ItemError(item.where, " ".join(str(err).split())) from None


def _single_or_list(images: list):
    return images[0] if len(images) == 1 else (images or None)
