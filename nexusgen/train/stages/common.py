"""What every stage hands to the loop, and the sharded, resumable sample stream.

A stage is built by `build(config, info) -> Stage`: a training module whose `forward(batch)` returns
a dict of scalar losses (`"loss"` is the one that is back-propagated, the others are logged), a
sample stream, a collate function, and an export function. The loop knows nothing else about it.

World-size invariance: optimiser step s consumes the global sample positions [s*B, (s+1)*B) (B = the
global batch); rank r of W takes the r-th contiguous slice and splits it into accumulation
micro-batches. Randomness that belongs to a sample (VAE posterior noise, flow-matching noise and
timesteps) is drawn from a generator seeded by (seed, global position), so a 2-process run computes
exactly the per-sample losses of a 1-process run, and a resumed run those of an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Stage:
    """A built training stage.

    Attributes:
        module: forward(batch: dict) -> dict[str, scalar Tensor] with key "loss".
        stream: where this rank's samples come from (`SampleStream`).
        collate: list of samples -> batch dict (tensors are moved to the device by the loop).
        export: export(module, out_dir) writes the model folder (RUN_DIR/final).
        shard_units: sub-modules to wrap as their own FSDP2 units (transformer blocks).
        count: batch -> {"samples": n, "tokens": t, "images": i} for throughput metrics.
        evaluate: optional hook, evaluate(module) -> dict of floats, run every `eval_every` steps.
    """

    module: torch.nn.Module
    stream: SampleStream
    collate: Callable[[list[dict]], dict]
    export: Callable[[torch.nn.Module, Any], None]
    shard_units: list[torch.nn.Module] = field(default_factory=list)
    count: Callable[[dict], dict[str, int]] | None = None
    evaluate: Callable[[torch.nn.Module], dict[str, float]] | None = None


class SampleStream:
    """Epoch-shuffled, rank-sharded, resumable walk over an indexable dataset.

    Args:
        dataset: `len(dataset)` and `dataset[i] -> dict` (a sample).
        seed: shuffling seed (the same on every rank).
        shuffle: reshuffle every epoch with a generator seeded by (seed, epoch).
    """

    def __init__(self, dataset: Sequence, seed: int, shuffle: bool = True):
        if len(dataset) == 0:
            raise ValueError("the training dataset is empty")
        self.dataset, self.seed, self.shuffle = dataset, seed, shuffle
        self.position = 0  # global samples consumed so far (all ranks together)
        self._order: tuple[int, torch.Tensor] | None = None

    def _index(self, position: int) -> int:
        epoch, offset = divmod(position, len(self.dataset))
        if not self.shuffle:
            return offset
        if self._order is None or self._order[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._order = (epoch, torch.randperm(len(self.dataset), generator=g))
        return int(self._order[1][offset])

    def next_step(self, global_batch: int, rank: int, world_size: int, accum: int) -> list[list[dict]]:
        """This rank's micro-batches for one optimiser step; every rank advances by `global_batch`.

        Each sample dict gets a "position" key: its global position, the seed of its own randomness.
        """
        per_rank = global_batch // world_size
        micro = per_rank // accum
        start = self.position + rank * per_rank
        samples = []
        for position in range(start, start + per_rank):
            sample = dict(self.dataset[self._index(position)])
            sample["position"] = position
            samples.append(sample)
        self.position += global_batch
        return [samples[i * micro:(i + 1) * micro] for i in range(accum)]

    def state_dict(self) -> dict:
        return {"position": self.position, "num_samples": len(self.dataset)}

    def load_state_dict(self, state: dict) -> None:
        if state["num_samples"] != len(self.dataset):
            raise ValueError(f"the data changed since the checkpoint: {state['num_samples']} samples then, "
                             f"{len(self.dataset)} now")
        self.position = int(state["position"])


def sample_generators(positions: Sequence[int], seed: int, device="cpu") -> list[torch.Generator]:
    """One generator per sample, seeded by (seed, global position)."""
    return [torch.Generator(device=device).manual_seed((seed * 1_000_003 + 7919 * int(p)) % 2**63)
            for p in positions]


def per_sample_randn(shape: Sequence[int], generators: list[torch.Generator], *, device, dtype=torch.float32):
    """Standard normal noise, one draw of `shape` per sample: returns (len(generators), *shape)."""
    return torch.stack([torch.randn(tuple(shape), generator=g, device=g.device, dtype=dtype)
                        for g in generators]).to(device)


def per_sample_rand(generators: list[torch.Generator], *, device) -> torch.Tensor:
    """One U[0, 1) draw per sample: returns (len(generators),)."""
    return torch.stack([torch.rand((), generator=g, device=g.device) for g in generators]).to(device)


def set_trainable(module: torch.nn.Module, prefixes: Sequence[str]) -> list[str]:
    """Freeze everything, then unfreeze parameters whose name starts with one of `prefixes`.

    Returns the names of the trainable parameters. Raises ValueError if a prefix matches nothing
    (a typo in `stage.trainable` must not silently train nothing).
    """
    module.requires_grad_(False)
    names = []
    for prefix in prefixes:
        stem = prefix.rstrip(".")
        matched = [n for n, _ in module.named_parameters() if n == stem or n.startswith(stem + ".")]
        if not matched:
            raise ValueError(f"stage.trainable prefix {prefix!r} matches no parameter")
        names += matched
    for name, param in module.named_parameters():
        if name in names:
            param.requires_grad_(True)
    return sorted(set(names))
