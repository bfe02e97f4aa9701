"""The per-item records of a batch run, written safely by any number of processes, merged into one file.

Each process appends its items' records (one JSON object per line, flushed and fsynced per batch) to a log of
its own in a hidden folder next to the results (`OUT/.records/` for an image folder, `.NAME.records/` next to
an answers file `NAME`). No two processes write one file, so `torchrun` ranks never interleave. A record is an
item's completion marker: it is appended after the item's image is in place, and a killed append leaves at
most a broken last line, which reading ignores (that item is done again).

`merge` rebuilds the results file (every record, in line order, the latest record of an item winning) under a
lock, atomically; every process merges when it ends, and since a process appends all its records before it
takes the lock, the last merge holds every process's records.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from collections.abc import Iterable
from pathlib import Path

from nexusgen.files import append_synced, json_text, output_error, write_jsonl

LOCK_NAME = ".lock"


def records_folder(results: Path, *, inside: bool) -> Path:
    """Where the logs of `results` live: `results/.records` for an output folder (`inside`), else the hidden
    sibling `.NAME.records`."""
    return results / ".records" if inside else results.with_name(f".{results.name}.records")


class RecordLog:
    """The records of one batch output, read from every process's log, appended to this process's own."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.own = self.folder / f"{socket.gethostname()}-{os.getpid()}.jsonl"

    def read(self) -> dict[str, dict]:
        """id -> its latest record, over every log (a broken line, what a killed append leaves, is skipped)."""
        records: dict[str, dict] = {}
        if not self.folder.is_dir():
            return records
        for log in sorted(self.folder.glob("*.jsonl"), key=lambda p: p.stat().st_mtime_ns):
            with open(log, encoding="utf-8") as f:
                for text in f:
                    try:
                        record = json.loads(text)
                    except json.JSONDecodeError:
                        continue
                    if isinstance(record, dict) and isinstance(record.get("id"), str):
                        records[record["id"]] = record
        return records

    def append(self, records: Iterable[dict]) -> None:
        """Add records to this process's log, on disk before returning."""
        text = "".join(json_text(record, indent=None) + "\n" for record in records)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            if self.own.is_file() and self.own.stat().st_size and not _ends_with_newline(self.own):
                text = "\n" + text  # end a line torn by a kill, so it spoils no record after it
            append_synced(self.own, text)
        except OSError as err:
            raise output_error(self.folder, err) from None

    def merge(self, results: Path) -> int:
        """Write every record, ordered by line, to `results` (atomically, under the folder's lock); returns
        how many."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / LOCK_NAME, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                records = sorted(self.read().values(), key=lambda r: (r.get("line", 0), r["id"]))
                write_jsonl(records, results)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        return len(records)


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def matches(record: dict | None, expected: dict) -> bool:
    """A record holds every setting of `expected` that is given (a None in `expected`: the model's default,
    whatever it was)."""
    return record is not None and all(value is None or record.get(key) == value for key, value in expected.items())
