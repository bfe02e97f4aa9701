"""The batched, resumable, sharded loop over work items that every batch command and benchmark export runs.

The caller says when an item is finished (its files are complete: written atomically, completion marker
last) and how a batch is processed (model call + atomic writes); this loop does the rest:

* resuming: items already complete are counted as skipped and not processed again, so a killed run leaves
  only complete items and a rerun does the rest;
* sharding: process `rank` of `world` takes items rank, rank + world, ... of the list (`Shard`), the ordinary
  launcher's environment (`torchrun` sets RANK and WORLD_SIZE) chooses them. Every item takes its seed from
  itself, never from its place in a batch or a shard, so the union of the shards is what one process writes;
* bad items: a batch that raises `ItemError` (or a `ValueError` / `OSError` while reading an input) is
  retried item by item, so only the bad item fails; with `skip_bad` it is reported (`where: message`) and
  counted, else the run stops with that line;
* a progress bar on stderr when stderr is a terminal (nothing otherwise), and a `RunSummary`.

This module imports nothing heavy: the caller's `process` brings the model.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from nexusgen.files import OutputError

Item = TypeVar("Item")


class ItemError(ValueError):
    """One item cannot be processed (a missing or unreadable image, a prompt past the context, ...).

    `str()` is one line, `where: message`, `where` being the item's `file:line`.
    """

    def __init__(self, where: str, message: str):
        super().__init__(f"{where}: {message}")
        self.where, self.message = where, message


@dataclass(frozen=True)
class Shard:
    """Which items this process takes: every `world`-th item from the `rank`-th (0-based)."""

    rank: int = 0
    world: int = 1

    def __post_init__(self):
        if not 0 <= self.rank < self.world:
            raise ValueError(f"rank {self.rank} is not in 0..{self.world - 1} (WORLD_SIZE {self.world})")

    @classmethod
    def from_env(cls, environ: dict | None = None) -> Shard:
        """The shard the launcher gave this process (RANK, WORLD_SIZE as `torchrun` sets them; one process
        when unset)."""
        environ = os.environ if environ is None else environ
        values = {}
        for name, default in (("RANK", 0), ("WORLD_SIZE", 1)):
            text = environ.get(name, "").strip()
            if not text:
                values[name] = default
            elif text.isdigit():
                values[name] = int(text)
            else:
                raise ValueError(f"the environment variable {name} must be a number, got {text!r}")
        if values["WORLD_SIZE"] < 1:
            raise ValueError(f"the environment variable WORLD_SIZE must be >= 1, got {values['WORLD_SIZE']}")
        return cls(values["RANK"], values["WORLD_SIZE"])

    def take(self, items: Sequence[Item]) -> list[Item]:
        """This process's items, in their order."""
        return list(items[self.rank::self.world])

    def __str__(self) -> str:
        return f"rank {self.rank} of {self.world}"


@dataclass
class RunSummary:
    """What one process did: of `total` items (all shards), its shard held `mine`; `done` were processed
    now, `skipped` were already complete, `failed` were bad (`problems`: their `where: message` lines)."""

    total: int
    mine: int
    done: int = 0
    skipped: int = 0
    failed: int = 0
    shard: Shard = field(default_factory=Shard)
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        out = {"items": self.total, "done": self.done, "skipped": self.skipped, "failed": self.failed}
        if self.shard.world > 1:
            out.update(rank=self.shard.rank, world_size=self.shard.world, shard_items=self.mine)
        return out

    def line(self) -> str:
        """One line: `done D, skipped S, failed F of N items` (and the shard when there are several)."""
        where = f" ({self.shard}: {self.mine} of {self.total} items)" if self.shard.world > 1 else \
            f" of {self.total} items"
        return f"done {self.done}, skipped {self.skipped}, failed {self.failed}{where}"


def run_items(items: Sequence[Item], *, is_done: Callable[[Item], bool], process: Callable[[list[Item]], None],
              batch_size: int, desc: str, progress: bool | None = None, shard: Shard | None = None,
              where: Callable[[Item], str] | None = None, skip_bad: bool = False,
              report: Callable[[str], None] | None = None) -> RunSummary:
    """Process this shard's unfinished items in batches of at most `batch_size`, in order.

    Args:
        items: every item (all shards), in the input's order.
        is_done: True when an item's files are complete (checked once, before the first batch).
        process: runs the model on a batch and writes each item's files atomically, marker last. It raises
            `ItemError` for an item it cannot process (or ValueError / OSError reading an input).
        batch_size: items per model call (>= 1).
        desc: the progress bar's label.
        progress: show the bar (default: when stderr is a terminal).
        shard: this process's share (default: one process does everything).
        where: an item's `file:line`, for the messages of items failing with a plain ValueError / OSError
            (default: none; such an error then stops the run).
        skip_bad: report a bad item and go on (default: stop the run with its line).
        report: where a skipped bad item's line goes (default: stderr).

    Returns:
        RunSummary.

    Raises:
        ItemError: a bad item, unless `skip_bad`.
        OutputError: an output that cannot be written (never skipped: every later item would fail alike).
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    shard = shard or Shard()
    mine = shard.take(items)
    todo = [item for item in mine if not is_done(item)]
    summary = RunSummary(total=len(items), mine=len(mine), skipped=len(mine) - len(todo), shard=shard)
    from tqdm.auto import tqdm

    show = sys.stderr.isatty() if progress is None else progress
    with tqdm(total=len(todo), desc=desc, unit="item", disable=not show, file=sys.stderr) as bar:
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            failures = _process(batch, process, where)
            for failure in failures:
                if not skip_bad:
                    raise failure
                summary.problems.append(str(failure))
                (report or _to_stderr)(str(failure))
            summary.failed += len(failures)
            summary.done += len(batch) - len(failures)
            bar.update(len(batch))
    return summary


def _process(batch: list, process: Callable[[list], None], where: Callable | None) -> list[ItemError]:
    """Run `process` on the batch; if an item is bad, run each item alone. Returns the bad items' errors."""
    try:
        process(batch)
        return []
    except OutputError:
        raise
    except (ValueError, OSError) as err:
        if where is None and not isinstance(err, ItemError):
            raise  # not an item's fault that the caller can name: the run's
        if len(batch) == 1:
            return [_item_error(batch[0], err, where)]
    failures = []
    for item in batch:  # the good items of the batch still get their (batch-invariant) outputs
        try:
            process([item])
        except OutputError:
            raise
        except (ValueError, OSError) as err:
            failures.append(_item_error(item, err, where))
    return failures


def _item_error(item, err: Exception, where: Callable | None) -> ItemError:
    if isinstance(err, ItemError):
        return err
    if where is None:
        raise err
    return ItemError(where(item), " ".join(str(err).split()))


def _to_stderr(line: str) -> None:
    print(f"nexusgen: bad item skipped: {line}", file=sys.stderr, flush=True)
