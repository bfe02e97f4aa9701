"""Every file nexusgen writes: atomically, as strict JSON, with its provenance, and failing in one line.

Atomic writes: a file goes to a temporary sibling and is renamed into place (`os.replace`), a folder is
built under a temporary sibling name, fsynced and renamed, so a crash or a kill at any moment leaves the
old file (folder) or the new one, never a part. Model folders (`nexusgen.loading`), training checkpoints
and exports (`nexusgen.train`), benchmark artifacts (`nexusgen.eval`) and every other output use these.

Failures: an output that cannot be written (read-only file system, full disk, permission denied, a file
where a folder should be) raises `OutputError`, whose message names the destination the caller asked for,
never the temporary name; the temporary file or folder, and any folder the write created, are removed.
`check_output_file` / `check_output_folder` find the same problems before any work is done: a command
calls them first, so a bad `--out` costs milliseconds, not a model run.

JSON: one rule for the whole package. Files are UTF-8 (Chinese text stays readable), indented, and never
hold the non-standard `NaN` / `Infinity` tokens: measurements that can be undefined (a mean over nothing,
a loss that diverged) go through `json_safe` (non-finite floats become null); anywhere else a NaN is a
bug and `write_json` raises instead of writing it.

Provenance: `git_sha` is the commit of the checkout nexusgen runs from, written next to every training
run and benchmark result.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path


# ----------------------------------------------------------------------------------------------------
# Output failures
# ----------------------------------------------------------------------------------------------------
class OutputError(OSError):
    """An output nexusgen cannot write. `str()` is one line naming the user's path and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str, code: int | None = None):
        super().__init__(f"{path}: cannot write ({reason})")
        self.path, self.reason, self.errno = str(path), reason, code

    def __str__(self) -> str:
        return self.args[0]


_OS_ERROR_NUMBER = re.compile(r"os error (\d+)")


def _reason(err: BaseException) -> tuple[str, int | None]:
    """(readable reason, errno) of a failed write: an OSError, safetensors' error ("... (os error 28)") or
    an error a `_RecordingFile` saw under torch's RuntimeError."""
    seen = getattr(err, "nexusgen_os_error", None)
    if seen is not None:
        err = seen
    if isinstance(err, OSError) and err.errno is not None:
        return (err.strerror or os.strerror(err.errno)), err.errno
    match = _OS_ERROR_NUMBER.search(str(err))
    if match:
        code = int(match.group(1))
        return os.strerror(code), code
    return str(err) or type(err).__name__, None


def output_error(path: str | os.PathLike, err: BaseException) -> OutputError:
    """`err`, raised while writing `path` (or something inside it), as an OutputError naming `path`."""
    if isinstance(err, OutputError):
        return OutputError(path, err.reason, err.errno)
    reason, code = _reason(err)
    return OutputError(path, reason, code)


def _nearest_existing(path: Path) -> Path:
    """`path` or its closest existing ancestor. OutputError if an ancestor is a file."""
    current = path
    while not current.exists() and current != current.parent:
        current = current.parent
        if current.exists() and not current.is_dir():
            raise OutputError(path, f"{current} is a file, not a folder", errno.ENOTDIR)
    return current


def _probe_writable(folder: Path, path: Path) -> None:
    """OutputError unless a file can be created in `folder` (a real probe: catches read-only file systems
    and permissions alike, also for root, for whom `os.access` says yes to every chmod)."""
    try:
        handle, probe = tempfile.mkstemp(prefix=".nexusgen-probe-", dir=folder)
    except OSError as err:
        raise OutputError(path, f"{folder} is not writable: {err.strerror or err}", err.errno) from None
    os.close(handle)
    os.unlink(probe)


def check_output_file(path: str | os.PathLike, suffixes: Iterable[str] | None = None) -> Path:
    """Find, before any work, why `path` could not be written: an unsupported extension, a folder at
    `path`, a file where one of its folders should be, or a folder nexusgen may not write in.

    Nothing is created (missing folders are made when the file is written).

    Raises:
        ValueError: an extension not in `suffixes`.
        OutputError: anything else.
    """
    path = Path(path)
    suffixes = tuple(suffixes) if suffixes is not None else None
    if suffixes is not None and path.suffix.lower() not in suffixes:
        raise ValueError(f"{path}: the output must end in one of {', '.join(suffixes)}")
    if path.is_dir():
        raise OutputError(path, "it is a folder; give a file name", errno.EISDIR)
    existing = _nearest_existing(path.parent)
    if not existing.is_dir():
        raise OutputError(path, f"{existing} is a file, not a folder", errno.ENOTDIR)
    _probe_writable(existing, path)
    return path


def check_output_folder(path: str | os.PathLike) -> Path:
    """`check_output_file` for a folder: `path` must be a folder or not exist, and be writable."""
    path = Path(path)
    existing = _nearest_existing(path)
    if not existing.is_dir():
        what = "it" if existing == path else str(existing)
        raise OutputError(path, f"{what} is a file, not a folder", errno.ENOTDIR)
    _probe_writable(existing, path)
    return path


def make_parents(path: Path) -> list[Path]:
    """Create the missing folders above `path`; returns those created, outermost first."""
    created = []
    current = path.parent
    while not current.exists() and current != current.parent:
        created.append(current)
        current = current.parent
    for folder in reversed(created):
        folder.mkdir(exist_ok=True)
    return list(reversed(created))


def missing_folders(path: Path) -> list[Path]:
    """`path` and the folders above it that do not exist yet: what writing `path` will create, and a failed
    run should remove (`remove_empty`). Empty when `path` exists."""
    return [] if path.exists() else [path, *[p for p in path.parents if not p.exists()]]


def remove_empty(folders: Iterable[Path]) -> None:
    """rmdir each folder, innermost first, where it is (still) empty."""
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            folder.rmdir()


@contextlib.contextmanager
def writing(path: str | os.PathLike, temporary: Path | None = None) -> Iterator[None]:
    """Map any failure of the enclosed write of `path` to `OutputError(path)`, removing `temporary` and the
    folders this write created. Use around a write whose data is already computed: every error is the
    output's."""
    path = Path(path)
    created: list[Path] = []
    try:
        created = make_parents(path)
        yield
    except BaseException as err:
        if temporary is not None:
            with contextlib.suppress(OSError):
                if temporary.is_dir():
                    shutil.rmtree(temporary)
                else:
                    temporary.unlink(missing_ok=True)
        remove_empty(created)
        if _is_write_failure(err):
            raise output_error(path, err) from None
        raise


def _is_write_failure(err: BaseException) -> bool:
    """What a writer raises when the destination refuses the data: an OSError, torch's RuntimeError, or
    safetensors' SafetensorError. A ValueError or TypeError is a bug in what was written, not the disk."""
    return isinstance(err, (OSError, RuntimeError)) or type(err).__name__ == "SafetensorError"


class _RecordingFile:
    """A binary file that remembers the OSError of a failed write: torch.save reports a failed write as
    a RuntimeError without the reason, this keeps it."""

    def __init__(self, handle):
        self.handle, self.error = handle, None

    def write(self, data) -> int:
        try:
            return self.handle.write(data)
        except OSError as err:
            self.error = err
            raise

    def __getattr__(self, name):
        return getattr(self.handle, name)


def save_torch(obj, path: str | os.PathLike) -> None:
    """`torch.save(obj, path)` with a failed write raised as OutputError(path) (the file removed).

    Not atomic on its own: for files inside a folder that is renamed into place when complete."""
    import torch

    path = Path(path)
    with writing(path, path):
        with open(path, "wb") as handle:
            recording = _RecordingFile(handle)
            try:
                torch.save(obj, recording)
            except RuntimeError as err:
                err.nexusgen_os_error = recording.error
                raise


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
    """Yield a temporary sibling folder; on success it is fsynced and replaces `folder`, on error removed
    (with the folders above it that it created).

    An existing `folder` is moved aside first and deleted only after the new one is in place. A write that
    fails inside raises OutputError naming `folder` (`writing`); other errors pass unchanged.
    """
    folder = Path(folder)
    created: list[Path] = []
    try:
        created = make_parents(folder / "_")
        temporary = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    except OSError as err:
        remove_empty(created)
        raise output_error(folder, err) from None
    try:
        yield temporary
        fsync_tree(temporary)
    except BaseException as err:
        shutil.rmtree(temporary, ignore_errors=True)
        remove_empty(created)
        if isinstance(err, OSError):  # OutputError from the writes inside included: name the user's folder
            raise output_error(folder, err) from None
        raise
    with writing(folder):
        old = None
        if folder.exists():
            old = folder.parent / f".{folder.name}.old-{os.getpid()}"
            os.replace(folder, old)
        os.replace(temporary, folder)
        fsync_path(folder.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def append_synced(path: str | os.PathLike, text: str) -> None:
    """Append `text` (UTF-8) to `path`, flushed and fsynced before returning: a line a log says it wrote
    survives a kill or a power loss right after. Errors pass unchanged (the caller names what failed)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _temporary_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) through a temporary sibling file, fsync, then os.replace: readers see the old
    file or the new one, never a part. The parent folder is created if needed."""
    path = Path(path)
    temporary = _temporary_sibling(path)
    with writing(path, temporary):
        with open(temporary, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)


def atomic_save_image(image, path: str | os.PathLike, image_format: str = "PNG") -> Path:
    """Save a PIL image through a temporary sibling file, then os.replace (never a half-written image)."""
    path = Path(path)
    temporary = _temporary_sibling(path)
    with writing(path, temporary):
        image.save(temporary, format=image_format)
        os.replace(temporary, path)
    return path


def save_tensors(tensors: dict, path: str | os.PathLike) -> None:
    """Write a safetensors file atomically (temporary name, then rename).

    Tensors are moved to the CPU and made contiguous. safetensors refuses tensors that share storage
    (tied weights): the second and later aliases are written as copies.
    """
    from safetensors.torch import save_file  # torch loads only with the first tensor file written

    path = Path(path)
    seen, out = set(), {}
    for name, tensor in tensors.items():
        tensor = tensor.detach().cpu().contiguous()
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset()) if tensor.numel() else None
        out[name] = tensor.clone() if key is not None and key in seen else tensor
        seen.add(key)
    temporary = _temporary_sibling(path)
    with writing(path, temporary):
        save_file(out, str(temporary), metadata={"format": "pt"})
        os.replace(temporary, path)


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
