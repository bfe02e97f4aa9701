"""`nexusgen prepare-embeds`: precompute the decoders' training embeddings, in batches, resumably.

    nexusgen prepare-embeds --data JSONL --model M --kind generate|edit --out DIR [--batch-size B] [--skip-bad]

Reads a message-format JSONL (`MessageDataset`), runs the autoregressive model's parts on each record and
writes `DIR/<data stem>.<task>.jsonl`: the input records (image paths rewritten relative to DIR) plus

* `generate` (generation decoder, docs/upstream.md §3.2): `"embed_path"` -> ground-truth ViT+merger embeddings (N, D) of
  the target `images[0]`, prepared exactly as an AR generation target (`processing.resize_fixed` to the
  output size: centre-crop, then resize), plus `"embed_grid"` [rows, cols];
* `edit` (editing decoder, docs/upstream.md §3.3): `"embed_source"` -> ViT+merger embeddings (M, D) of the source
  `images[0]` at the editing reference size, and `"embed_target"` -> the AR model's predicted target
  embeddings (N, D), plus `"embed_source_grid"` / `"embed_target_grid"`. The prediction is the one-pass
  teacher-forced read-out of upstream's preparation: the record's own conversation up to the target
  image (its assistant text before `<image>` included) with the source as an ordinary input image. The
  source goes into the AR model under the project's input rule (bounded size, like inference), not the
  504x504 stretch of upstream (docs/upstream.md §9.9).

The reference size is the model config's `reference_image_px` when it has one, else twice the output
size (upstream: 504 = 2 x 252 px -> 18 x 18 = 324 tokens).

Files: `DIR/embeds/<id>.safetensors` (generate) or `<id>_source` / `<id>_target` (edit), tensor "embeds" in
the model's dtype, each written to a temporary name and renamed. The JSONL is appended record by record
and fsynced after each batch; a re-run skips records whose id is already in it (a line cut short by a
crash is removed first), so an interrupted run resumes where it stopped. `DIR/prepare.json` remembers
data, task and model; resuming with different ones is an error.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from nexusgen.data.embeds import save_embeds
from nexusgen.data.messages import (
    BadRecordError,
    InvalidRecord,
    MessageDataset,
    image_roles,
    record_id,
    resolve_path,
)
from nexusgen.files import append_synced, make_parents, output_error, remove_empty, write_json, writing
from nexusgen.processing.templates import IMAGE_PLACEHOLDER
from nexusgen.tasks import EDIT, GENERATE, IMAGE_TASKS

MANIFEST = "prepare.json"
# Upstream's editing reference is 504 px for a 252-px output: twice the output side.
REFERENCE_SCALE = 2
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------
# Output bookkeeping
# ---------------------------------------------------------------------------------------------------


def file_stem(sample_id: str) -> str:
    """A file-name-safe, collision-free stem for a record id (unsafe or long ids get a hash suffix)."""
    safe = _UNSAFE.sub("_", sample_id)[:80].lstrip(".") or "_"
    if safe != sample_id:
        safe += "-" + hashlib.sha1(sample_id.encode("utf-8")).hexdigest()[:10]
    return safe


def _check_manifest(out: Path, settings: dict[str, Any]) -> None:
    path = out / MANIFEST
    if path.exists():
        saved = json.loads(path.read_text())
        if saved != settings:
            raise ValueError(f"{out} was prepared with {saved}, not {settings}; use a new --out folder")
        return
    write_json(settings, path)


def read_done_ids(path: Path) -> set[str]:
    """Ids already in an output JSONL; a last line cut short by a crash is truncated away.

    Raises:
        ValueError: a complete line in the middle of the file is not a JSON record with an id.
    """
    if not path.exists():
        return set()
    data = path.read_bytes()
    done, good_end, start = set(), 0, 0
    while start < len(data):
        end = data.find(b"\n", start)
        if end < 0:  # no newline: the crash happened while this line was being written
            break
        line = data[start:end]
        try:
            done.add(str(json.loads(line)["id"]))
        except (ValueError, KeyError, TypeError) as err:
            number = data.count(b"\n", 0, start) + 1
            raise ValueError(f"{path}: line {number} is not an output record ({err}); the file was not "
                             f"written by prepare-embeds") from None
        good_end = start = end + 1
    if good_end < len(data):
        logger.warning("%s: removing an incomplete last line (%d bytes)", path, len(data) - good_end)
        with open(path, "r+b") as f:
            f.truncate(good_end)
    return done


def _has_records(jsonl: Path) -> bool:
    """Whether `jsonl` holds a complete output record (or is not ours to judge)."""
    try:
        return bool(read_done_ids(jsonl))
    except (OSError, ValueError):
        return True


def _append(path: Path, records: list[dict[str, Any]]) -> None:
    """Append whole lines: a failed write (a full disk) is cut back off, the error naming `path`."""
    size = path.stat().st_size if path.exists() else 0
    with writing(path):
        try:
            append_synced(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        except OSError:
            with contextlib.suppress(OSError), open(path, "r+b") as f:
                f.truncate(size)
            raise


def _relative_to(path: Path, folder: Path) -> str:
    try:
        return os.path.relpath(path.resolve(), folder.resolve())
    except ValueError:  # different drives on Windows: keep it absolute
        return str(path.resolve())


# ---------------------------------------------------------------------------------------------------
# Embedding computations (batched)
# ---------------------------------------------------------------------------------------------------


def reference_image_px(config) -> tuple[int, int]:
    """(height, width) of the editing reference image: the config's own value, else 2x the output."""
    explicit = getattr(config, "reference_image_px", None)
    if explicit is not None:
        return int(explicit[0]), int(explicit[1])
    height, width = config.output_image_px
    return REFERENCE_SCALE * height, REFERENCE_SCALE * width


class Embedder:
    """The autoregressive model's parts that `prepare-embeds` runs, batched.

    Args:
        model: a `NexusGenARModel` (eval mode; its device and dtype are used).
        tokenizer: its tokenizer.
        image_processor: its `Qwen2VLImageProcessorPil`.
    """

    def __init__(self, model, tokenizer, image_processor):
        from nexusgen.processing import NexusGenProcessor

        self.model = model.eval()
        self.processor = NexusGenProcessor(tokenizer, image_processor, model.config)
        self.device = model.vision_head.weight.device
        self.token_px = self.processor.token_px

    def _encode(self, images: list, size_hw: tuple[int, int]) -> tuple[list[torch.Tensor], tuple[int, int]]:
        from nexusgen.processing import resize_fixed

        prepared = [resize_fixed(im, size_hw) for im in images]
        out = self.processor.image_processor(images=prepared, do_resize=False, return_tensors="pt")
        embeds = self.model.encode_images(out["pixel_values"].float().to(self.device),
                                          out["image_grid_thw"].long().to(self.device))
        return embeds, (size_hw[0] // self.token_px, size_hw[1] // self.token_px)

    @torch.no_grad()
    def generation(self, samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Ground-truth embeddings of each sample's images[0] at the output size: [{"embed_path": (N, D)}]."""
        targets = [s["images"][0] for s in samples]
        embeds, grid = self._encode(targets, tuple(self.model.config.output_image_px))
        return [{"embed_path": (e, grid)} for e in embeds]

    @torch.no_grad()
    def editing(self, samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Source embeddings at the reference size and teacher-forced predicted target embeddings."""
        source_images = [s["images"][0] for s in samples]
        sources, ref_grid = self._encode(source_images, reference_image_px(self.model.config))
        encoded = []
        for sample in samples:
            messages, prefix = edit_prompt(sample["messages"])
            encoded.append(self.processor.encode(messages, sample["images"][:1], add_generation_prompt=True,
                                                 assistant_prefix=prefix))
        batch = self.processor.pad(encoded, padding_side="left")
        predicted = self.model.predict_image_embeds(
            batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device),
            batch["pixel_values"].to(self.device), batch["image_grid_thw"].to(self.device))  # (B, N, D)
        out_grid = self.model.config.output_grid
        return [{"embed_source": (src, ref_grid), "embed_target": (pred, out_grid)}
                for src, pred in zip(sources, predicted)]


def edit_prompt(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    """Split an editing conversation at its target image.

    Returns:
        (the messages before the assistant turn holding the first assistant `<image>`, that turn's text
        up to and including the `<image>`): the prompt whose last token is `<|vision_start|>`.
    """
    for index, message in enumerate(messages):
        if message["role"] == "assistant" and IMAGE_PLACEHOLDER in message["content"]:
            content = message["content"]
            return messages[:index], content[: content.index(IMAGE_PLACEHOLDER) + len(IMAGE_PLACEHOLDER)]
    raise ValueError("no assistant image in the conversation")


def check_task(record: dict[str, Any], task: str) -> None:
    """Raise InvalidRecord if a (structurally valid) record cannot feed the decoder of `task`."""
    roles = image_roles(record["messages"])
    if task == GENERATE and not roles:
        raise InvalidRecord("image_count", "a generation-decoder record needs at least one image (images[0])")
    if task == EDIT and roles[:2] != ["user", "assistant"]:
        raise InvalidRecord("task_mismatch", f"an editing record needs images[0] in a user turn and "
                                             f"images[1] in an assistant turn; the image roles are {roles}")


# ---------------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------------


def load_model_parts(model: str | os.PathLike):
    """(model, tokenizer, image_processor) of the autoregressive part of a model (`loading.folder`: a model
    folder, its autoregressive/ sub-folder, a bundled name or "tiny"); decoders are not loaded.

    The device is cuda when available, else cpu; the dtype bf16 on GPU, fp32 on CPU (loading's defaults).
    """
    from nexusgen.loading.folder import load_autoregressive_part

    return load_autoregressive_part(model)


class _Writer:
    """Saves one batch's tensors and appends its records (the order makes a crash safe)."""

    def __init__(self, out: Path, jsonl: Path, dataset: MessageDataset):
        self.out, self.jsonl, self.dataset = out, jsonl, dataset
        (out / "embeds").mkdir(parents=True, exist_ok=True)

    def write(self, pending: list[tuple[dict, str]], results: list[dict[str, Any]]) -> None:
        """Save the batch's tensors, then append its records; on a failure the batch's tensor files are
        removed again (no file without its record)."""
        saved: list[Path] = []
        try:
            self._write(pending, results, saved)
        except BaseException:
            for path in saved:
                path.unlink(missing_ok=True)
            raise

    def _write(self, pending: list[tuple[dict, str]], results: list[dict[str, Any]], saved: list[Path]) -> None:
        records = []
        for (record, sample_id), tensors in zip(pending, results, strict=True):
            stem = file_stem(sample_id)
            new = {**record, "id": sample_id,
                   "images": [_relative_to(resolve_path(p, self.dataset.image_root), self.out)
                              for p in record.get("images", [])]}
            for key, (embeds, grid) in tensors.items():
                suffix = {"embed_path": "", "embed_source": "_source", "embed_target": "_target"}[key]
                name = f"embeds/{stem}{suffix}.safetensors"
                save_embeds(self.out / name, embeds.detach().cpu())  # atomic: temp + os.replace
                saved.append(self.out / name)
                new[key] = name
                new[{"embed_path": "embed_grid"}.get(key, f"{key}_grid")] = list(grid)
            records.append(new)
        _append(self.jsonl, records)  # only after every tensor of the batch is on disk


def prepare_embeds(data: str | os.PathLike, model: str | os.PathLike, task: str, out: str | os.PathLike, *,
                   batch_size: int = 8, skip_bad: bool = False, image_root: str | os.PathLike | None = None,
                   parts=None) -> dict[str, Any]:
    """Precompute decoder-training embeddings for every record of `data` (see the module docstring).

    Args:
        data: message-format JSONL.
        model: nexusgen model folder (or its autoregressive/ folder).
        task: "generate" (generation-decoder embeddings) or "edit" (editing-decoder embeddings).
        out: output folder (created).
        batch_size: records per model call.
        skip_bad: skip and count invalid records instead of stopping at the first.
        image_root: folder relative image paths resolve against (default: the JSONL's folder).
        parts: already loaded (model, tokenizer, image_processor), instead of loading `model`.

    Returns:
        {"out": output JSONL, "written": n, "already_done": n, "bad": {reason: count}, "records": n}.

    Raises:
        ValueError: bad arguments, an invalid record without `skip_bad`, or `out` prepared differently.
    """
    if task not in IMAGE_TASKS:
        raise ValueError(f"task must be one of {IMAGE_TASKS}, got {task!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    data, out = Path(data), Path(out)
    dataset = MessageDataset(data, image_root=image_root, skip_bad=skip_bad)
    jsonl = out / f"{data.stem}.{task}.jsonl"
    created = make_parents(out / "_")
    existed = out.exists()
    try:
        out.mkdir(exist_ok=True)
    except OSError as err:
        remove_empty(created)
        raise output_error(out, err) from None
    try:
        return _prepare(dataset, data, model, task, out, jsonl, batch_size, skip_bad, parts)
    except BaseException:
        if not _has_records(jsonl):  # nothing to resume: remove what this run wrote
            for path in (jsonl, out / MANIFEST):
                path.unlink(missing_ok=True)
            remove_empty([out / "embeds", *([] if existed else [out]), *created])
        raise


def _prepare(dataset: MessageDataset, data: Path, model, task: str, out: Path, jsonl: Path, batch_size: int,
             skip_bad: bool, parts) -> dict[str, Any]:
    """`prepare_embeds` once its folder exists."""
    if jsonl.resolve() == data.resolve():
        raise ValueError(f"the output {jsonl} would overwrite the input")
    _check_manifest(out, {"data": str(data.resolve()), "task": task, "model": str(model),
                          "image_root": str(dataset.image_root.resolve())})
    done = read_done_ids(jsonl)
    bad = Counter(dataset.bad_counts)
    plan, already_done = _plan(dataset, task, done, bad, skip_bad)
    writer, embedder, written = _Writer(out, jsonl, dataset), None, 0
    for start in range(0, len(plan), batch_size):
        pending = []
        for index, sample_id in plan[start:start + batch_size]:
            try:
                pending.append((dataset.record(index), sample_id, dataset.load(index)))  # decodes images
            except BadRecordError as err:
                _reject(err, bad, skip_bad)
        if pending:
            embedder = embedder or Embedder(*(parts or load_model_parts(model)))
            samples = [sample for _, _, sample in pending]
            results = embedder.generation(samples) if task == GENERATE else embedder.editing(samples)
            writer.write([(record, sample_id) for record, sample_id, _ in pending], results)
            written += len(pending)
    return {"out": str(jsonl), "written": written, "already_done": already_done, "bad": dict(bad),
            "records": len(dataset) + sum(dataset.bad_counts.values())}


def _reject(err: BadRecordError, bad: Counter, skip_bad: bool) -> None:
    if not skip_bad:
        raise err
    logger.warning("skipping invalid record: %s", err)
    bad[err.reason] += 1


def _plan(dataset: MessageDataset, task: str, done: set[str], bad: Counter,
          skip_bad: bool) -> tuple[list[tuple[int, str]], int]:
    """Records still to compute, as (index, id), checked before the model is loaded; and how many are done.

    A repeated id is bad (its files would collide) whether or not an earlier run wrote its first copy.
    """
    plan, seen, already_done = [], set(), 0
    for index in range(len(dataset)):
        line = dataset.line_number(index)
        try:
            record = dataset.record(index)
            sample_id = record_id(record, dataset.path, line)
            if sample_id in seen:
                raise BadRecordError(dataset.path, line, "duplicate_id", f"id {sample_id!r} occurs twice")
            seen.add(sample_id)
            try:
                check_task(record, task)
            except InvalidRecord as err:
                raise BadRecordError(dataset.path, line, err.reason, err.detail) from None
        except BadRecordError as err:
            _reject(err, bad, skip_bad)
            continue
        if sample_id in done:
            already_done += 1
        else:
            plan.append((index, sample_id))
    return plan, already_done
