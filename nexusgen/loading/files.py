"""Files of model folders, written so that a crash never leaves a half-written one, and read with clear
errors. Every loader and saver in nexusgen.loading uses these.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import save_file


@contextlib.contextmanager
def atomic_folder(folder: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces `folder`, on error it is removed."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        yield temporary
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    old = None
    if folder.exists():
        old = folder.parent / f".{folder.name}.old-{os.getpid()}"
        os.replace(folder, old)
    os.replace(temporary, folder)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def save_tensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Write a safetensors file atomically (temporary name, then rename); tensors are made contiguous."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(temporary),
              metadata={"format": "pt"})
    os.replace(temporary, path)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) through a temporary sibling file, fsync, then os.replace: readers see the old
    file or the new one, never a part. The parent folder is created if needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(temporary, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)


def atomic_save_image(image, path: str | os.PathLike, image_format: str = "PNG") -> Path:
    """Save a PIL image through a temporary sibling file, then os.replace (never a half-written image)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        image.save(temporary, format=image_format)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def write_json(data: dict, path: str | os.PathLike) -> None:
    """Write JSON atomically."""
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def read_json_object(path: str | os.PathLike) -> dict:
    """A JSON object from `path`; ValueError naming the file if it is missing, not JSON or not an object."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: invalid JSON ({err})") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data
