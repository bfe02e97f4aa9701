"""The message-format JSONL reader (docs/upstream.md §6) that serves every autoregressive training stage.

One record per line::

    {"id": "demo_edit_7", "source": "toy", "images": ["data/src_7.png", "data/dst_7.png"],
     "messages": [{"role": "user", "content": "<image> Paint the front door bright red."},
                  {"role": "assistant", "content": "Here is the image: <image>"}]}

`images` lists paths in the order their `<image>` tags appear over all messages; a tag in a user turn is an
input image, a tag in an assistant turn a generation target. Extra keys are carried along unchanged.

Paths. A relative image path resolves against `image_root`, which defaults to the JSONL's own folder.
The official upstream files (and ms-swift) write paths relative to the *repository root* instead
(`assets/example_datasets/images/gen_0.png` inside `assets/example_datasets/llm_dataset.jsonl`): pass that
root as `image_root`. We never guess between candidate folders (a silent guess could pick the wrong file);
instead the "image not found" error names the ancestor folder where the path does exist.

Validation. Every record is checked when the file is indexed (JSON, keys, types, roles, empty content,
number of `<image>` tags vs images, and, unless `check_images=False`, that each image exists, is an image
and is not too large: a header read, no decoding). Decoding errors (truncated or corrupt pixel data) can
only show up when the image is loaded on access. A bad record raises `BadRecordError` (a `ValueError`
whose message is `file:line: reason: detail`) unless `skip_bad=True`: then it is skipped and counted
by reason in `bad_counts` -- never dropped silently. A record that turns out bad on access is replaced
by the next good record of the same file, so which sample sits at an index stays a pure function of
the index (needed for world-size-independent batches, see mixture.py).

Laziness. Indexing keeps only byte offsets (16 bytes per record); a record's line is re-read and its
images are opened only when the record is accessed, so files with millions of records work.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from nexusgen.processing.images import MAX_DECODED_PIXELS, ImageFileError, open_image
from nexusgen.processing.templates import IMAGE_PLACEHOLDER
from nexusgen.tasks import EDIT, GENERATE, TASKS, UNDERSTAND

ROLES = ("system", "user", "assistant")
TEXT = "text"
"""The task of a record without images (a text-only conversation)."""
RECORD_TASKS = (*TASKS, TEXT)
# Upper bound on width * height of any image, checked before decoding (decompression-bomb guard); the
# same limit as the rest of nexusgen (processing.images).
DEFAULT_MAX_IMAGE_PIXELS = MAX_DECODED_PIXELS
# Keys the reader produces itself; everything else in a record is carried along unchanged.
_OWN_KEYS = ("id", "messages", "images", "task")
_MAX_KEPT_MESSAGES = 100

logger = logging.getLogger(__name__)


class BadRecordError(ValueError):
    """An invalid record: `str(err)` is `"file:line: reason: detail"`.

    Attributes:
        path: the JSONL file.
        line: 1-based line number in that file.
        reason: a short category used for counting (e.g. "bad_json", "image_missing").
        detail: human-readable explanation naming the offending value.
    """

    def __init__(self, path: str | Path, line: int, reason: str, detail: str):
        self.path, self.line, self.reason, self.detail = str(path), line, reason, detail
        super().__init__(f"{path}:{line}: {reason}: {detail}")


class InvalidRecord(Exception):
    """Raised by the checks below without a location; the dataset adds file and line."""

    def __init__(self, reason: str, detail: str):
        self.reason, self.detail = reason, detail
        super().__init__(f"{reason}: {detail}")


# ---------------------------------------------------------------------------------------------------
# Record checks (pure functions of the parsed JSON)
# ---------------------------------------------------------------------------------------------------


def parse_line(raw: bytes) -> dict[str, Any]:
    """Decode one JSONL line into a dict.

    Raises:
        InvalidRecord: "bad_json" when the line is not UTF-8, not JSON, or not a JSON object.
    """
    try:
        record = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise InvalidRecord("bad_json", f"line is not UTF-8 ({err})") from None
    except json.JSONDecodeError as err:
        raise InvalidRecord("bad_json", f"{err.msg} at column {err.colno}") from None
    if not isinstance(record, dict):
        raise InvalidRecord("bad_json", f"a record must be a JSON object, got {type(record).__name__}")
    return record


def image_roles(messages: list[dict[str, Any]]) -> list[str]:
    """The role ("user" or "assistant") of each `<image>` tag, in order of appearance."""
    return [m["role"] for m in messages for _ in range(m["content"].count(IMAGE_PLACEHOLDER))]


def infer_task(roles: list[str]) -> str:
    """Task of a sample from the roles of its images (see `image_roles`).

    Returns:
        "text" (no image), "understand" (input images only), "generate" (target images only) or
        "edit" (input and target images).
    """
    has_input, has_target = "user" in roles, "assistant" in roles
    if has_target:
        return EDIT if has_input else GENERATE
    return UNDERSTAND if has_input else TEXT


def _check_messages(messages: Any) -> None:
    if not isinstance(messages, list) or not messages:
        raise InvalidRecord("wrong_type", f"'messages' must be a non-empty list, got {messages!r:.80}")
    for k, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidRecord("wrong_type", f"messages[{k}] must be an object, got {message!r:.80}")
        for key in ("role", "content"):
            if key not in message:
                raise InvalidRecord("missing_key", f"messages[{k}] has no '{key}'")
        role, content = message["role"], message["content"]
        if role not in ROLES:
            raise InvalidRecord("unknown_role", f"messages[{k}].role is {role!r}; expected one of {ROLES}")
        if not isinstance(content, str):
            raise InvalidRecord("wrong_type", f"messages[{k}].content must be a string, got "
                                              f"{type(content).__name__}")
        if not content.strip():
            raise InvalidRecord("empty_content", f"messages[{k}] ({role}) has empty content")
        if role == "system" and IMAGE_PLACEHOLDER in content:
            raise InvalidRecord("image_in_system", f"messages[{k}] is a system message with an {IMAGE_PLACEHOLDER}")
    if not any(m["role"] == "assistant" for m in messages):
        raise InvalidRecord("no_assistant", "no assistant message (nothing to train on)")


def check_record(record: dict[str, Any]) -> str:
    """Validate the structure of a parsed record (no file access).

    Args:
        record: one parsed JSONL object.

    Returns:
        The task inferred from the image roles (one of `RECORD_TASKS`).

    Raises:
        InvalidRecord: with the reason category and a detail naming the offending value.
    """
    if "messages" not in record:
        raise InvalidRecord("missing_key", f"no 'messages' key (keys: {sorted(record)})")
    if "id" in record and (isinstance(record["id"], bool) or not isinstance(record["id"], (str, int))):
        raise InvalidRecord("wrong_type", f"'id' must be a string or integer, got {record['id']!r:.80}")
    _check_messages(record["messages"])
    images = record.get("images", [])
    if not isinstance(images, list) or not all(isinstance(p, str) and p for p in images):
        raise InvalidRecord("wrong_type", f"'images' must be a list of non-empty path strings, "
                                          f"got {images!r:.120}")
    roles = image_roles(record["messages"])
    if len(roles) != len(images):
        raise InvalidRecord("image_count", f"{len(roles)} {IMAGE_PLACEHOLDER} tag(s) in messages but {len(images)} "
                                           f"image path(s)")
    task = infer_task(roles)
    if "task" in record and record["task"] != task:
        raise InvalidRecord("task_mismatch", f"'task' is {record['task']!r} but the images make it {task!r}")
    return task


def record_id(record: dict[str, Any], path: Path, line: int) -> str:
    """A record's id as a string; records without one get "<file stem>-<line>"."""
    return str(record["id"]) if "id" in record else f"{path.stem}-{line}"


# ---------------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------------


def resolve_path(value: str, root: Path) -> Path:
    """An absolute path stays as is; a relative one is joined to `root`."""
    path = Path(value)
    return path if path.is_absolute() else root / path


def _not_found(value: str, path: Path, root: Path, kind: str) -> InvalidRecord:
    hint = ""
    if not Path(value).is_absolute():
        # Say where the file is instead of silently using it: upstream files are relative to a repo root.
        for ancestor in root.resolve().parents:
            if (ancestor / value).exists():
                hint = (f"; it exists relative to {ancestor} -- pass image_root={str(ancestor)!r} "
                        f"(--image-root)")
                break
    return InvalidRecord(f"{kind}_missing", f"{kind} file {value!r} not found (looked at {path}){hint}")


def _open_image(path: Path, max_pixels: int, decode: bool) -> Image.Image | None:
    """`processing.images.open_image`, its failure as an InvalidRecord of the same reason."""
    try:
        return open_image(path, max_pixels, decode=decode)
    except ImageFileError as err:
        raise InvalidRecord(err.reason, str(err)) from None


def check_record_image(value: str, root: Path, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Path:
    """Check that an image exists, is an image and is not too large, reading only its header.

    Returns:
        The resolved path.

    Raises:
        InvalidRecord: image_missing / image_unreadable / too_many_pixels.
    """
    path = resolve_path(value, root)
    if not path.exists():
        raise _not_found(value, path, root, "image")
    _open_image(path, max_pixels, decode=False)
    return path


def load_record_image(value: str, root: Path, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """Load one image of a record as RGB (PIL), with the checks of `check_record_image` plus full decoding.

    Raises:
        InvalidRecord: image_missing / image_unreadable / image_corrupt / too_many_pixels.
    """
    path = resolve_path(value, root)
    if not path.exists():
        raise _not_found(value, path, root, "image")
    image = _open_image(path, max_pixels, decode=True)
    assert image is not None
    return image


# ---------------------------------------------------------------------------------------------------
# The dataset
# ---------------------------------------------------------------------------------------------------


class MessageDataset:
    """Lazy, validated, map-style dataset over one message-format JSONL file.

    `dataset[i]` returns the sample dict that `nexusgen.data.collate.collate_ar` consumes::

        {"id": str, "messages": [{"role", "content"}, ...], "images": [PIL.Image (RGB), ...],
         "task": "understand" | "generate" | "edit" | "text", **extra_keys}

    Args:
        path: the JSONL file.
        image_root: folder that relative image paths resolve against (default: the JSONL's folder).
        skip_bad: skip and count invalid records instead of raising `BadRecordError`.
        check_images: check at index time that every image exists and is not too large (a header read
            per image). Turn off for huge files; the same checks then run on access.
        max_image_pixels: largest accepted width * height.
        tasks: the tasks a record may have (a decoder stage needs a generated image); None = any. A record
            of another task is a bad record (reason "wrong_task").

    Raises:
        FileNotFoundError: the JSONL does not exist.
        BadRecordError: the first invalid record, unless `skip_bad`.
        ValueError: no valid record at all.
    """

    def __init__(self, path: str | Path, *, image_root: str | Path | None = None, skip_bad: bool = False,
                 check_images: bool = True, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
                 tasks: tuple[str, ...] | None = None):
        self.path = Path(path)
        self.tasks = tasks
        if not self.path.is_file():
            raise FileNotFoundError(f"data file not found: {self.path}")
        self.image_root = Path(image_root) if image_root is not None else self.path.parent
        self.skip_bad, self.check_images, self.max_image_pixels = skip_bad, check_images, max_image_pixels
        self.bad_counts: Counter[str] = Counter()
        """Invalid records seen so far (at index time and on access), by reason."""
        self.bad_messages: list[str] = []
        """The first 100 `file:line: reason: detail` messages of skipped records, for logs."""
        self._bad_on_access: set[int] = set()
        self._offsets, self._lines = self._index()
        if len(self._offsets) == 0:
            raise ValueError(f"{self.path}: no valid record (bad records by reason: {dict(self.bad_counts)})")
        if self.bad_counts:
            logger.warning("%s: skipped %d invalid record(s): %s", self.path, sum(self.bad_counts.values()),
                           dict(self.bad_counts))

    # -- indexing -----------------------------------------------------------------------------------

    def _index(self) -> tuple[np.ndarray, np.ndarray]:
        offsets, lines = [], []
        offset = 0
        with open(self.path, "rb") as f:
            for number, raw in enumerate(f, start=1):
                start, offset = offset, offset + len(raw)
                if number == 1 and raw.startswith(b"\xef\xbb\xbf"):  # tolerate a UTF-8 byte-order mark
                    raw, start = raw[3:], start + 3
                if not raw.strip():
                    continue
                try:
                    self.validate(parse_line(raw), full=self.check_images)
                except InvalidRecord as err:
                    self._reject(number, err)
                    continue
                offsets.append(start)
                lines.append(number)
        return np.asarray(offsets, dtype=np.int64), np.asarray(lines, dtype=np.int64)

    def _reject(self, line: int, err: InvalidRecord) -> None:
        bad = BadRecordError(self.path, line, err.reason, err.detail)
        if not self.skip_bad:
            raise bad from None
        self.bad_counts[err.reason] += 1
        if len(self.bad_messages) < _MAX_KEPT_MESSAGES:
            self.bad_messages.append(str(bad))

    def validate(self, record: dict[str, Any], full: bool = True) -> str:
        """Check one parsed record; `full` also checks the files it names (headers only).

        Subclasses extend this for their own keys (see nexusgen.data.embeds).

        Returns:
            The record's task.

        Raises:
            InvalidRecord: with reason and detail.
        """
        task = check_record(record)
        if self.tasks is not None and task not in self.tasks:
            raise InvalidRecord("wrong_task", f"a {task!r} record; this stage reads {' / '.join(self.tasks)} "
                                              f"records")
        if full:
            for value in record.get("images", []):
                check_record_image(value, self.image_root, self.max_image_pixels)
        return task

    # -- access -------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._offsets)

    def line_number(self, index: int) -> int:
        """1-based line of record `index` in the file."""
        return int(self._lines[index])

    def record(self, index: int) -> dict[str, Any]:
        """The parsed JSON of record `index` (validated structure; no image is opened).

        Raises:
            IndexError: out of range.
            BadRecordError: the line changed on disk since indexing and is now invalid.
        """
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} records in {self.path}")
        index %= len(self)
        with open(self.path, "rb") as f:
            f.seek(int(self._offsets[index]))
            raw = f.readline()
        try:
            record = parse_line(raw)
            check_record(record)
        except InvalidRecord as err:
            raise BadRecordError(self.path, self.line_number(index), err.reason, err.detail) from None
        return record

    def load(self, index: int) -> dict[str, Any]:
        """Sample `index`, images decoded; raises `BadRecordError` whatever `skip_bad` says."""
        record = self.record(index)
        line = self.line_number(index % len(self))
        try:
            task = self.validate(record, full=not self.check_images)
            return self.build_sample(record, task, line)
        except InvalidRecord as err:
            raise BadRecordError(self.path, line, err.reason, err.detail) from None

    def build_sample(self, record: dict[str, Any], task: str, line: int) -> dict[str, Any]:
        """Turn a validated record into the sample dict (loads the images). Subclasses add fields.

        A record without an id gets "<file stem>-<line>".

        Raises:
            InvalidRecord: an image cannot be loaded.
        """
        images = [load_record_image(p, self.image_root, self.max_image_pixels) for p in record.get("images", [])]
        sample = {key: value for key, value in record.items() if key not in _OWN_KEYS}
        sample["id"] = record_id(record, self.path, line)
        sample["messages"] = [dict(m) for m in record["messages"]]
        sample["images"] = images
        sample["task"] = task
        return sample

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Sample `index`; with `skip_bad`, a record found bad now is replaced by the next good one."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} records in {self.path}")
        index %= len(self)
        for step in range(len(self)):
            candidate = (index + step) % len(self)
            if candidate in self._bad_on_access:
                continue
            try:
                return self.load(candidate)
            except BadRecordError as err:
                if not self.skip_bad:
                    raise
                self._bad_on_access.add(candidate)
                self.bad_counts[err.reason] += 1
                if len(self.bad_messages) < _MAX_KEPT_MESSAGES:
                    self.bad_messages.append(str(err))
                logger.warning("skipping invalid record: %s", err)
        raise ValueError(f"{self.path}: every record is invalid (by reason: {dict(self.bad_counts)})")
