"""Plumbing shared by the benchmarks: model loading, batching, output checks, reading artifacts back.

Benchmarks run in two phases: *generate* writes artifacts (answers, images) to disk,
*score* reads them back. Every file is written with `nexusgen.files` (temporary name, then rename), so an
interrupted run never leaves a half-written artifact that a later `--score-only` would trust.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from PIL import Image

from nexusgen.processing.images import load_image

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


def load_artifact(path) -> Image.Image:
    """A saved artifact image as RGB; FileNotFoundError if the generate phase has not written it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"missing artifact {path} (run the benchmark without --score-only first)")
    return load_image(path)
