"""Metrics as JSONL (one object per logged step) and a rank-0 progress bar."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from nexusgen.files import atomic_write_text, json_safe


class MetricsLogger:
    """Appends `{"step": int, "loss": float, ...}` lines to RUN_DIR/metrics.jsonl (rank 0 only).

    On resume from step s, lines with step > s (written after the checkpoint by the killed run) are
    dropped first, so the file reads as one uninterrupted run.
    """

    def __init__(self, path, *, enabled: bool, resume_step: int | None = None):
        self.path, self.enabled = Path(path), enabled
        if not enabled:
            return
        if resume_step is None:
            atomic_write_text(self.path, "")
        elif self.path.exists():
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] <= resume_step]
            atomic_write_text(self.path, "".join(line + "\n" for line in kept))
        self._file = open(self.path, "a")

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        self._file.write(json.dumps(json_safe(record)) + "\n")  # a diverged (NaN) loss is written as null
        self._file.flush()

    def close(self) -> None:
        if self.enabled:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()


class Progress:
    """tqdm bar on rank 0 when stderr is a terminal; otherwise silent."""

    def __init__(self, total: int, initial: int, *, enabled: bool):
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, dynamic_ncols=True, desc="train")

    def update(self, record: dict) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{record['loss']:.4g}", lr=f"{record['lr']:.2e}", refresh=False)
            self.bar.update(record["step"] - self.bar.n)  # logged steps may be log_every apart

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def read_metrics(path) -> list[dict]:
    """Parse a metrics.jsonl file."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
