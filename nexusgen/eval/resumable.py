"""Run a model over a list of benchmark items, batched, skipping items whose files are already complete.

Every export (GenEval, DPG-Bench, ImgEdit, GEdit-Bench) and the understanding runner share this loop:
the caller says when an item is finished (its last file exists: files are written atomically and the
completion marker last) and how a batch is processed (model call + atomic writes). A killed run therefore
leaves only complete items, and a rerun does the rest. Items take their noise seed from the item, never
from their place in a batch, so a rerun draws the same noise.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from .harness import batched

Item = TypeVar("Item")


@dataclass(frozen=True)
class RunSummary:
    """What one run did: `total` items, `done` now, `skipped` because already complete."""

    total: int
    done: int
    skipped: int

    def as_dict(self) -> dict:
        return {"items": self.total, "done": self.done, "skipped": self.skipped}


def run_items(items: Sequence[Item], *, is_done: Callable[[Item], bool],
              process: Callable[[list[Item]], None], batch_size: int, desc: str,
              progress: bool | None = None) -> RunSummary:
    """Process the unfinished items in batches of at most `batch_size`, in order, with a progress bar.

    Args:
        items: everything the benchmark holds.
        is_done: True when an item's files are complete (checked once, before the first batch).
        process: runs the model on a batch and writes each item's files atomically, marker last.
        batch_size: items per model call (>= 1).
        desc: the progress bar's label.
        progress: show the bar (default: when stderr is a terminal).

    Returns:
        RunSummary.
    """
    todo = [item for item in items if not is_done(item)]
    from tqdm.auto import tqdm

    show = sys.stderr.isatty() if progress is None else progress
    with tqdm(total=len(todo), desc=desc, unit="item", disable=not show, file=sys.stderr) as bar:
        for _, batch in batched(todo, batch_size):
            process(list(batch))
            bar.update(len(batch))
    return RunSummary(total=len(items), done=len(todo), skipped=len(items) - len(todo))
