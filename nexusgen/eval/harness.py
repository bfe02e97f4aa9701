"""Plumbing shared by the benchmarks: model loading, batching, atomic artifact files, provenance.

Benchmarks run in two phases (STYLE rule 25): *generate* writes artifacts (answers, images) to disk,
*score* reads them back. Every file is written under a temporary name and renamed, so an interrupted
run never leaves a half-written artifact that a later `--score-only` would trust.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

from PIL import Image

from nexusgen.loading.files import atomic_save_image, atomic_write_text

from .oracle import BlankModel, OracleModel

# Names that select the reference models instead of loading a checkpoint.
REFERENCE_MODELS = {"oracle": OracleModel, "blank": BlankModel}
DEFAULT_BATCH_SIZE = 16


def load_model(name: str):
    """`oracle` / `blank`, or anything `NexusGen.from_pretrained` accepts (bundled name or folder)."""
    if name in REFERENCE_MODELS:
        return REFERENCE_MODELS[name]()
    try:
        from nexusgen.api import NexusGen
    except ImportError as err:  # the API module is written separately; say so instead of a traceback
        raise ValueError(f"cannot load model {name!r}: nexusgen.api is not available ({err})") from err
    return NexusGen.from_pretrained(name)


def batched(items: Sequence, size: int) -> Iterator[tuple[int, Sequence]]:
    """(start index, slice) pairs of at most `size` items."""
    if size < 1:
        raise ValueError(f"batch size must be >= 1, got {size}")
    for start in range(0, len(items), size):
        yield start, items[start:start + size]


def check_outputs(outputs, expected: int, kind: type, what: str) -> list:
    """The model returned a list of `expected` objects of `kind`, or a clear error."""
    outputs = list(outputs)
    if len(outputs) != expected:
        raise ValueError(f"model.{what} returned {len(outputs)} outputs for {expected} inputs")
    bad = [type(o).__name__ for o in outputs if not isinstance(o, kind)]
    if bad:
        raise ValueError(f"model.{what} must return {kind.__name__} objects, got {bad[0]}")
    return outputs


def write_text(path, text: str) -> None:
    atomic_write_text(path, text)


def write_json(data, path) -> None:
    """Atomic, strict JSON (no NaN), CJK kept readable; (data, path) as `nexusgen.loading.files.write_json`."""
    write_text(path, json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n")


def write_jsonl(path, rows) -> None:
    write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_jsonl(path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def save_image(image: Image.Image, path) -> None:
    """Save a PNG atomically."""
    atomic_save_image(image, path, "PNG")


def load_image(path) -> Image.Image:
    """Read an artifact image fully (so the file handle is closed) as RGB."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"missing artifact {path} (run the benchmark without --score-only first)")
    with Image.open(path) as im:
        return im.convert("RGB")


def git_sha() -> str:
    """The commit of the nexusgen checkout, or "unknown" (installed from a wheel, no git)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def json_safe(value):
    """Replace NaN / inf floats (not valid JSON) by None, recursively."""
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
