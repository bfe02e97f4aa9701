"""Reading the files of batch work: prompts, edits and questions, every line checked before a model loads.

Formats (UTF-8; blank lines are not items; line numbers count every line, from 1):

* prompts (`nexusgen generate --prompts`): one prompt per line, or JSONL (a `.jsonl` file, or a file whose
  first item line starts with `{`) with "prompt" and optional "seed", "height", "width", "id";
* edits (`nexusgen edit --edits`): JSONL with "image", "prompt" and optional "decoder", "seed", "id";
* questions (`nexusgen understand --questions`): JSONL with "prompt" and optional "image" (a path or a list
  of paths; none: a text-only question), "seed", "id".

Image paths are relative to the folder holding the file (absolute paths stay). An item without "seed" uses
the command's `--seed` plus its line number minus 1, so its seed depends on the file alone, never on the
batch, the shard or which items were already done. An item without "id" is named by its line number
(`00007`); an id names the item's output file, so it must be a plain file name, unique in the file.

A bad line (not JSON, an unknown or missing field, an empty prompt, a bad seed or size, a missing image, a
repeated id) is an `ItemError` naming `file:line`; `read_items` returns the good items and the errors, and
the caller fails or skips them (`--skip-bad`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from nexusgen.batch.runner import ItemError
from nexusgen.validation import check_output_size, check_question, check_seed, check_side, check_text

PROMPTS, EDITS, QUESTIONS = "prompts", "edits", "questions"
FIELDS = {
    PROMPTS: {"prompt", "seed", "height", "width", "id"},
    EDITS: {"image", "prompt", "decoder", "seed", "id"},
    QUESTIONS: {"image", "prompt", "seed", "id"},
}
REQUIRED = {PROMPTS: ("prompt",), EDITS: ("image", "prompt"), QUESTIONS: ("prompt",)}
DECODERS = ("editing", "generation")
MAX_ID_CHARS = 200


@dataclass(frozen=True)
class BatchItem:
    """One line of work.

    Attributes:
        where: `file:line`, for messages.
        line: the line number (from 1).
        id: the output's name (without extension).
        prompt: the prompt, instruction or question.
        seed: the item's seed.
        images: input images (edits: one; questions: any number), resolved against the file's folder.
        image_names: the same as written in the file (what the results record: they move with the file).
        options: the line's own settings besides those ("height", "width", "decoder"), as given.
    """

    where: str
    line: int
    id: str
    prompt: str
    seed: int
    images: tuple[Path, ...] = ()
    image_names: tuple[str, ...] = ()
    options: dict = field(default_factory=dict)


def read_items(path: str | Path, kind: str, *, seed: int = 0) -> tuple[list[BatchItem], list[ItemError]]:
    """The good items of a prompts / edits / questions file, and an `ItemError` for every bad line.

    Args:
        path: the file.
        kind: `PROMPTS`, `EDITS` or `QUESTIONS`.
        seed: the seed of line 1 for items without their own (line n: seed + n - 1).

    Raises:
        ValueError: the file cannot be read, is not UTF-8, or holds no item at all.
    """
    path = Path(path)
    lines = _lines(path)
    jsonl = kind != PROMPTS or path.suffix.lower() == ".jsonl" or \
        next((text.lstrip().startswith("{") for _, text in lines), False)
    items, errors, ids = [], [], {}
    for number, text in lines:
        where = f"{path}:{number}"
        try:
            row = _json_row(text, kind, where) if jsonl else {"prompt": text.rstrip("\r\n")}
            item = _item(row, kind, where, number, seed, path.parent)
            if item.id in ids:
                raise ItemError(where, f"id {item.id!r} is already used on line {ids[item.id]}")
        except ItemError as err:
            errors.append(err)
            continue
        except ValueError as err:
            errors.append(ItemError(where, " ".join(str(err).split())))
            continue
        ids[item.id] = number
        items.append(item)
    if not items and not errors:
        raise ValueError(f"{path}: no {kind} (the file has no non-blank line)")
    return items, errors


def _lines(path: Path) -> list[tuple[int, str]]:
    """(number, text) of the non-blank lines."""
    if not path.is_file():
        raise ValueError(f"{path}: file not found" if not path.exists() else f"{path}: not a file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    return [(number, line) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]


def _json_row(text: str, kind: str, where: str) -> dict:
    try:
        row = json.loads(text)
    except json.JSONDecodeError as err:
        raise ItemError(where, f"not JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(row, dict):
        raise ItemError(where, f"expected a JSON object, got {type(row).__name__}")
    unknown = sorted(set(row) - FIELDS[kind])
    if unknown:
        raise ItemError(where, f"unknown field {unknown[0]!r} (the fields are {', '.join(sorted(FIELDS[kind]))})")
    for name in REQUIRED[kind]:
        if name not in row:
            raise ItemError(where, f"missing \"{name}\"")
    return row


def _item(row: dict, kind: str, where: str, number: int, seed: int, folder: Path) -> BatchItem:
    images = _images(row.get("image"), kind, folder)
    prompt = check_question(row["prompt"], kind == QUESTIONS and bool(images), "prompt")
    item_seed = check_seed(row["seed"], 1, "seed") if "seed" in row else check_seed(seed + number - 1, 1, "seed")
    options = {}
    for side in ("height", "width"):
        if row.get(side) is not None:
            options[side] = check_side(row[side], side)
    if len(options) == 2:
        check_output_size(options["height"], options["width"])
    if row.get("decoder") is not None:
        if row["decoder"] not in DECODERS:
            raise ItemError(where, f"decoder must be one of {', '.join(DECODERS)}, got {row['decoder']!r}")
        options["decoder"] = row["decoder"]
    names = tuple(row["image"] if isinstance(row["image"], list) else [row["image"]]) if images else ()
    return BatchItem(where, number, _item_id(row.get("id"), number), prompt, item_seed, images, names, options)


def _item_id(value, number: int) -> str:
    if value is None:
        return f"{number:05d}"
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"id must be a non-empty string, got {value!r}")
    check_text(value, "id")
    if value != Path(value).name or value.startswith(".") or "\\" in value or len(value) > MAX_ID_CHARS:
        raise ValueError(f"id {value!r} must be a plain file name (no folder, not starting with '.', "
                         f"at most {MAX_ID_CHARS} characters)")
    return value


def _images(value, kind: str, folder: Path) -> tuple[Path, ...]:
    if value is None:
        if kind == EDITS:
            raise ValueError("missing \"image\"")
        return ()
    entries = value if kind == QUESTIONS and isinstance(value, list) else [value]
    paths = []
    for entry in entries:
        if not isinstance(entry, str) or not entry.strip():
            raise ValueError(f"image must be a path{' or a list of paths' if kind == QUESTIONS else ''}, "
                             f"got {entry!r}")
        image = folder / check_text(entry, "image")
        if not image.is_file():
            raise ValueError(f"image not found: {image}")
        paths.append(image)
    return tuple(paths)
