"""Reading the benchmarks' published files: one clear line (file:line or field) for anything wrong.

Benchmarks ship as JSON / JSONL / TSV files, folders of text files and images, or Hugging Face parquet
shards. Everything here validates before the model is loaded, so a bad file fails in a second.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from PIL import Image

from nexusgen.processing.images import load_image


def require_file(path, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


def require_dir(path, what: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{what} not found (expected a folder): {path}")
    return path


def read_json(path, what: str):
    """A whole JSON document."""
    path = require_file(path, what)
    try:
        with open(path, encoding="utf-8-sig") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{err.lineno}: not JSON ({err.msg})") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err.reason})") from None


def read_jsonl(path, what: str) -> list[tuple[int, dict]]:
    """(line number, object) for every non-empty line; each line must be a JSON object."""
    path = require_file(path, what)
    rows = []
    with open(path, encoding="utf-8-sig") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}: not JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
            rows.append((number, row))
    if not rows:
        raise ValueError(f"{path}: no entries")
    return rows


def text_field(row: dict, key: str, where: str, *, allow_empty: bool = False) -> str:
    """`row[key]` as a string (numbers accepted: ids are often numeric), or a ValueError naming `where`."""
    value = row.get(key)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or (not allow_empty and not value.strip()):
        raise ValueError(f"{where}: missing or empty \"{key}\"")
    return value


def open_image(path, where: str) -> Image.Image:
    """An RGB image from a file (pixel limits of `load_image`); a missing file names `where`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{where}: image not found: {path}")
    return load_image(path)


def image_from_bytes(data: bytes, where: str) -> Image.Image:
    """An RGB image from encoded bytes (a parquet or TSV cell), with the same limits as a file."""
    try:
        return load_image(io.BytesIO(data))
    except ValueError as err:
        raise ValueError(f"{where}: not a readable image ({err})") from None


def read_parquet_rows(paths: list[Path], columns: list[str], optional: tuple[str, ...] = ()) -> list[tuple[str, dict]]:
    """(where, row) for every row of the parquet shards, in file order; each of `columns` must exist, the
    `optional` ones are read where present (None elsewhere).

    Raises:
        ValueError: pyarrow missing (one line saying how to install it), a missing column, a bad file.
    """
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError("reading parquet files needs pyarrow: pip install 'nexusgen[eval]' "
                         "(or pip install pyarrow)") from None
    rows = []
    for path in paths:
        try:
            table = pq.read_table(path)
        except Exception as err:  # pyarrow raises its own error types for corrupt files
            raise ValueError(f"{path}: not a readable parquet file ({err})") from None
        missing = [c for c in columns if c not in table.column_names]
        if missing:
            raise ValueError(f"{path}: missing column {missing[0]!r} (has {', '.join(table.column_names)})")
        present = columns + [c for c in optional if c in table.column_names]
        for index, row in enumerate(table.select(present).to_pylist()):
            rows.append((f"{path}:row {index}", {**dict.fromkeys(optional), **row}))
    return rows


def parquet_image(cell, where: str) -> Image.Image:
    """A Hugging Face `Image` feature cell ({"bytes": ..., "path": ...}) decoded to RGB."""
    if not isinstance(cell, dict) or not isinstance(cell.get("bytes"), (bytes, bytearray)):
        raise ValueError(f"{where}: expected an image cell with bytes, got {type(cell).__name__}")
    return image_from_bytes(bytes(cell["bytes"]), where)


def find_parquet(folder, what: str) -> list[Path]:
    """Every *.parquet under `folder`, sorted (a Hugging Face dataset snapshot keeps its shards in data/)."""
    folder = require_dir(folder, what)
    paths = sorted(folder.rglob("*.parquet"))
    if not paths:
        raise FileNotFoundError(f"{what}: no .parquet files under {folder}")
    return paths
