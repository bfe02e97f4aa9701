"""Every file nexusgen writes: atomically, as strict JSON, with its provenance.

Atomic writes: a file goes to a temporary sibling and is renamed into place (`os.replace`), a folder is
built under a temporary sibling name, fsynced and renamed, so a crash or a kill at any moment leaves the
old file (folder) or the new one, never a part. Model folders (`nexusgen.loading`), training checkpoints
and exports (`nexusgen.train`), benchmark artifacts (`nexusgen.eval`) and every other output use these.

JSON: one rule for the whole package. Files are UTF-8 (Chinese text stays readable), indented, and never
hold the non-standard `NaN` / `Infinity` tokens: measurements that can be undefined (a mean over nothing,
a loss that diverged) go through `json_safe` (non-finite floats become null); anywhere else a NaN is a
bug and `write_json` raises instead of writing it.

Provenance: `git_sha` is the commit of the checkout nexusgen runs from, written next to every training
run and benchmark result.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from safetensors.torch import save_file


# ----------------------------------------------------------------------------------------------------
# Atomic files and folders
# ----------------------------------------------------------------------------------------------------
def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file's (or a folder's entries') data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str | os.PathLike) -> None:
    """fsync every file and folder under `root` (so a rename of `root` publishes complete contents)."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            fsync_path(Path(dirpath) / name)
        fsync_path(dirpath)


@contextlib.contextmanager
def atomic_folder(folder: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it is fsynced and replaces `folder`, on error removed.

    An existing `folder` is moved aside first and deleted only after the new one is in place.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        yield temporary
        fsync_tree(temporary)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    old = None
    if folder.exists():
        old = folder.parent / f".{folder.name}.old-{os.getpid()}"
        os.replace(folder, old)
    os.replace(temporary, folder)
    fsync_path(folder.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _temporary_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) through a temporary sibling file, fsync, then os.replace: readers see the old
    file or the new one, never a part. The parent folder is created if needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = _temporary_sibling(path)
    with open(temporary, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)


def atomic_save_image(image, path: str | os.PathLike, image_format: str = "PNG") -> Path:
    """Save a PIL image through a temporary sibling file, then os.replace (never a half-written image)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = _temporary_sibling(path)
    try:
        image.save(temporary, format=image_format)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def save_tensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Write a safetensors file atomically (temporary name, then rename).

    Tensors are moved to the CPU and made contiguous. safetensors refuses tensors that share storage
    (tied weights): the second and later aliases are written as copies.
    """
    path = Path(path)
    seen, out = set(), {}
    for name, tensor in tensors.items():
        tensor = tensor.detach().cpu().contiguous()
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset()) if tensor.numel() else None
        out[name] = tensor.clone() if key is not None and key in seen else tensor
        seen.add(key)
    temporary = _temporary_sibling(path)
    try:
        save_file(out, str(temporary), metadata={"format": "pt"})
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------------
# JSON
# ----------------------------------------------------------------------------------------------------
def json_safe(value):
    """Replace non-finite floats (NaN, inf: not valid JSON) by None, recursively (dicts, lists, tuples)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def json_text(data, *, indent: int | None = 2, sort_keys: bool = False) -> str:
    """`data` as JSON text by the package's rule (UTF-8 kept, no NaN). ValueError on a non-finite float."""
    return json.dumps(data, indent=indent, ensure_ascii=False, allow_nan=False, sort_keys=sort_keys)


def write_json(data, path: str | os.PathLike, *, sort_keys: bool = False) -> None:
    """Write `data` as indented JSON atomically (ValueError on a non-finite float: see `json_safe`)."""
    atomic_write_text(path, json_text(data, sort_keys=sort_keys) + "\n")


def write_jsonl(rows: Iterable, path: str | os.PathLike) -> None:
    """Write one JSON object per line, atomically."""
    atomic_write_text(path, "".join(json_text(row, indent=None) + "\n" for row in rows))


def read_jsonl(path: str | os.PathLike) -> list:
    """The JSON values of a JSONL file's non-blank lines."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


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


# ----------------------------------------------------------------------------------------------------
# Provenance
# ----------------------------------------------------------------------------------------------------
def git_sha() -> str:
    """HEAD of the repository nexusgen runs from, with "+dirty" if tracked files are modified; "unknown"
    outside a git checkout (e.g. installed from a wheel)."""
    root = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0 or not head.stdout.strip():
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty else "")
