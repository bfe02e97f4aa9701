"""A weighted, seeded, resumable mixture of map-style sources, sharded by rank.

The training loop asks for *global* batches; every rank computes the same global batch (which source
and which record fills each slot -- a few integers, no data is loaded) and then loads only its own
contiguous slice of it. So the samples that make up global batch k are the same whatever the world size,
and a resumed run sees exactly the samples an uninterrupted run would have seen.

How slot -> sample is decided, for global batch k with B slots:
  * source of each slot: B weighted draws from `numpy.random.default_rng([seed, 0, k])`;
  * record within a source: each source is read without replacement, epoch after epoch, in the order
    of a permutation seeded by `(seed, 1, source, epoch)`; a per-source counter says how far it is.
The whole position is therefore `(batches_done, counters)`: that is what `state_dict()` saves.

Usage::

    sampler = MixtureSampler([understand_ds, generate_ds, edit_ds], weights=[2, 1, 1], seed=0)
    sampler.load_state_dict(checkpoint["data"])          # when resuming
    for step, batch in enumerate(sampler.iter_batches(batch_size=64, rank=rank, world_size=world)):
        ...                                              # batch: list of 64 // world sample dicts
        checkpoint["data"] = sampler.state_dict()        # position after this batch
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import numpy as np

STATE_FORMAT = 1


class Source(Protocol):
    """Anything map-style: `len(source)` records, `source[i]` -> sample dict (deterministic in i)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict[str, Any]: ...


class MixtureSampler:
    """Weighted, seeded, resumable mixture over map-style sources.

    Args:
        sources: the sources (e.g. `MessageDataset`, `GenEmbedDataset`, `SyntheticSource`).
        weights: relative sampling weight per source (default: equal). A weight may be 0.
        seed: the mixture's seed: the same seed and sources give the same stream of batches.
        shuffle: read each source in a fresh seeded permutation per epoch (False: file order).

    Raises:
        ValueError: no source, a weight count that does not match, a negative or all-zero weight, or an
            empty source with a positive weight.
    """

    def __init__(self, sources: Sequence[Source], weights: Sequence[float] | None = None, seed: int = 0,
                 *, shuffle: bool = True):
        if not sources:
            raise ValueError("MixtureSampler needs at least one source")
        weights = [1.0] * len(sources) if weights is None else [float(w) for w in weights]
        if len(weights) != len(sources):
            raise ValueError(f"{len(weights)} weights for {len(sources)} sources")
        if any(not np.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"weights must be finite, >= 0 and not all 0, got {weights}")
        self.sources = list(sources)
        self.lengths = [len(s) for s in self.sources]
        for k, (n, w) in enumerate(zip(self.lengths, weights)):
            if n == 0 and w > 0:
                raise ValueError(f"source {k} is empty but has weight {w}")
        self.weights = weights
        self.seed, self.shuffle = int(seed), shuffle
        self._probs = np.asarray(weights, dtype=np.float64) / sum(weights)
        self._batches_done = 0
        self._counters = [0] * len(self.sources)
        self._perms: dict[tuple[int, int], np.ndarray] = {}

    # -- the deterministic plan ---------------------------------------------------------------------

    def _item(self, source: int, draw: int) -> int:
        """Record index of the `draw`-th read of `source` (without replacement within an epoch)."""
        n = self.lengths[source]
        epoch, position = divmod(draw, n)
        if not self.shuffle:
            return position
        key = (source, epoch)
        if key not in self._perms:
            # Keep only the current epoch's permutation per source (and the next, at a boundary).
            self._perms = {k: v for k, v in self._perms.items() if k[0] != source or k[1] >= epoch - 1}
            self._perms[key] = np.random.default_rng([self.seed, 1, source, epoch]).permutation(n)
        return int(self._perms[key][position])

    def next_global_indices(self, batch_size: int) -> list[tuple[int, int]]:
        """Plan the next global batch and advance the position past it.

        Args:
            batch_size: the global batch size B.

        Returns:
            B pairs `(source_index, record_index)`, identical on every rank.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        rng = np.random.default_rng([self.seed, 0, self._batches_done])
        choices = rng.choice(len(self.sources), size=batch_size, p=self._probs)
        pairs = []
        for source in choices.tolist():
            pairs.append((source, self._item(source, self._counters[source])))
            self._counters[source] += 1
        self._batches_done += 1
        return pairs

    def iter_batch_indices(self, batch_size: int, rank: int = 0,
                           world_size: int = 1) -> Iterator[list[tuple[int, int]]]:
        """Endless local batches of `(source_index, record_index)` pairs (no data loaded).

        Rank r gets the slots `[r * B/W, (r+1) * B/W)` of each global batch of size B.

        Raises:
            ValueError: B not divisible by W, or rank outside [0, W).
        """
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if batch_size % world_size:
            raise ValueError(f"global batch_size {batch_size} is not divisible by world_size {world_size}")
        local = batch_size // world_size
        while True:
            pairs = self.next_global_indices(batch_size)
            yield pairs[rank * local:(rank + 1) * local]

    def iter_batches(self, batch_size: int, rank: int = 0,
                     world_size: int = 1) -> Iterator[list[dict[str, Any]]]:
        """Endless local batches of samples: this rank's `batch_size // world_size` sample dicts.

        Args:
            batch_size: the GLOBAL batch size, split evenly across ranks.
            rank: this process's rank.
            world_size: number of processes.

        Yields:
            list of sample dicts, in slot order. After a batch is yielded, `state_dict()` is the
            position after it.
        """
        for pairs in self.iter_batch_indices(batch_size, rank, world_size):
            yield [self.sources[source][index] for source, index in pairs]

    # -- position -----------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """JSON-ready position: restoring it with `load_state_dict` continues the same stream."""
        return {"format": STATE_FORMAT, "seed": self.seed, "weights": list(self.weights),
                "lengths": list(self.lengths), "shuffle": self.shuffle,
                "batches_done": self._batches_done, "counters": list(self._counters)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a position saved by `state_dict()`.

        Raises:
            ValueError: the state belongs to a different mixture (seed, weights, source lengths or
                shuffle differ), so resuming could not reproduce the uninterrupted run.
        """
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"unknown mixture state format {state.get('format')!r}")
        mine = self.state_dict()
        for key in ("seed", "weights", "lengths", "shuffle"):
            if state[key] != mine[key]:
                raise ValueError(f"mixture state does not match this mixture: {key} is {state[key]!r} in the "
                                 f"checkpoint but {mine[key]!r} now")
        counters = [int(c) for c in state["counters"]]
        if len(counters) != len(self.sources) or min(counters) < 0 or int(state["batches_done"]) < 0:
            raise ValueError(f"corrupt mixture state: {state}")
        self._batches_done, self._counters = int(state["batches_done"]), counters

    @property
    def batches_done(self) -> int:
        """Global batches planned so far."""
        return self._batches_done

    def epochs(self) -> list[float]:
        """How many passes over each source have been read so far."""
        return [c / n if n else 0.0 for c, n in zip(self._counters, self.lengths)]

    def bad_counts(self) -> dict[str, int]:
        """Invalid records skipped by the sources of this process, by reason (sum over sources).

        Each rank only sees the records it loads: all-reduce the counts to log a global number.
        """
        total: Counter[str] = Counter()
        for source in self.sources:
            total.update(getattr(source, "bad_counts", {}))
        return dict(total)
