"""What every stage hands to the loop, and the sharded, resumable sample stream.

A stage is built by `build(config, info) -> Stage`: a training module whose `forward(batch)` returns
a dict of scalar losses (`"loss"` is the one that is back-propagated, the others are logged), a
sample stream, a collate function, and an export function. The loop knows nothing else about it.

World-size invariance: optimiser step s consumes the global sample positions [s*B, (s+1)*B) (B = the
global batch); rank r of W takes the r-th contiguous slice and splits it into accumulation
micro-batches. Randomness that belongs to a sample (VAE posterior noise, flow-matching noise and
timesteps, conditioning and reference dropout) is drawn from a generator seeded by (seed, global
position), so a 2-process run computes exactly the per-sample losses of a 1-process run, and a resumed
run those of an uninterrupted one. Every mean in a loss is taken over the global batch: the loop sums
each micro-batch's `loss_units` over micro-steps and ranks and hands the totals to the module in
`batch[LOSS_TOTALS]`; the module divides its sums by them (docs/training.md, "How the loss is
normalised").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from nexusgen.data.worlds import SYNTHETIC, WorldSource

LOSS_TOTALS = "loss_totals"
"""Batch key of the global denominators ({unit: count over the whole global batch}); absent = the batch's
own counts (a batch evaluated on its own)."""


@dataclass
class Stage:
    """A built training stage.

    Attributes:
        module: forward(batch: dict) -> dict[str, scalar Tensor] with key "loss".
        stream: where this rank's samples come from (`SampleStream`).
        collate: list of samples -> batch dict (tensors are moved to the device by the loop).
        export: export(module, out_dir) writes the model folder (RUN_DIR/final).
        shard_units: sub-modules to wrap as their own FSDP2 units (transformer blocks).
        loss_units: batch -> {unit: count}, what the module's loss terms average over in this
            micro-batch (answer tokens, image tokens, samples); summed over the global batch they are the
            `batch[LOSS_TOTALS]` the module divides by.
        count: batch -> {"samples": n, "tokens": t, "images": i} for throughput metrics.
        evaluate: optional hook, evaluate(module) -> dict of floats, run every `eval_every` steps.
    """

    module: torch.nn.Module
    stream: SampleStream
    collate: Callable[[list[dict]], dict]
    export: Callable[[torch.nn.Module, Any], None]
    loss_units: Callable[[dict], dict[str, int]]
    shard_units: list[torch.nn.Module] = field(default_factory=list)
    count: Callable[[dict], dict[str, int]] | None = None
    evaluate: Callable[[torch.nn.Module], dict[str, float]] | None = None


class SampleStream:
    """Rank-sharded, resumable stream of accumulation micro-batches over a mixture of sources.

    A thin layer over the data package's `MixtureSampler` (which plans identical global batches on
    every rank and saves its position): this rank loads only its slice of each global batch, splits it
    into micro-batches, and tags each sample with its global position.

    Args:
        sources: map-style sources (`len`, `source[i] -> dict`), e.g. `MessageDataset`.
        weights: mixture weights (default equal).
        seed: the mixture's seed (the same on every rank).
    """

    def __init__(self, sources: Sequence, weights: Sequence[float] | None = None, seed: int = 0):
        from nexusgen.data.mixture import MixtureSampler

        self.sampler = MixtureSampler(list(sources), weights or None, seed=seed)

    def next_step(self, global_batch: int, rank: int, world_size: int, accum: int) -> list[list[dict]]:
        """This rank's micro-batches for one optimiser step; every rank advances by `global_batch`.

        Each sample dict gets a "position" key: its global position in the run, the seed of its own
        randomness (the same whatever the world size or a resume).
        """
        per_rank = global_batch // world_size
        micro = per_rank // accum
        first = self.sampler.batches_done * global_batch + rank * per_rank
        pairs = self.sampler.next_global_indices(global_batch)[rank * per_rank:(rank + 1) * per_rank]
        samples = []
        for offset, (source, index) in enumerate(pairs):
            sample = dict(self.sampler.sources[source][index])
            sample["position"] = first + offset
            samples.append(sample)
        return [samples[i * micro:(i + 1) * micro] for i in range(accum)]

    def state_dict(self) -> dict:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)

    def bad_counts(self) -> dict[str, int]:
        return self.sampler.bad_counts()


def sample_generators(positions: Sequence[int], seed: int, device="cpu") -> list[torch.Generator]:
    """One generator per sample, seeded by (seed, global position)."""
    return [torch.Generator(device=device).manual_seed((seed * 1_000_003 + 7919 * int(p)) % 2**63)
            for p in positions]


def samples_units(batch: dict) -> dict[str, int]:
    """`Stage.loss_units` of stages whose loss is a mean over samples of equal size."""
    return {"samples": len(batch["position"])}


def total(batch: dict, unit: str, local: int) -> int:
    """The global count of `unit` for this batch's loss (`batch[LOSS_TOTALS]`), else `local` (>= 1)."""
    totals = batch.get(LOSS_TOTALS)
    return max(int(totals[unit]) if totals is not None else int(local), 1)


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


def message_files(config, tasks: tuple[str, ...] | None = None) -> list:
    """One `MessageDataset` per file of `data.paths`, paths resolved against `data.image_root`.

    Args:
        config: the `TrainConfig`.
        tasks: the record tasks the stage can use (None = any); another task is a bad record.
    """
    from nexusgen.data.messages import MessageDataset

    d = config.data
    return [MessageDataset(p, image_root=d.image_root, skip_bad=d.skip_bad, tasks=tasks)
            for p in d.files(config.stage.name)]


def generated_messages(config) -> list:
    """In-memory message-format samples of `data.tasks` for `source="generated"`: the built-in synthetic
    rectangles, or the registered world named by `data.world` (`nexusgen.data.worlds`)."""
    d = config.data
    if d.world == SYNTHETIC:
        from nexusgen.data.synthetic import SyntheticSource

        return [SyntheticSource(d.num_samples, config.seed, image_size=d.image_size_px, tasks=d.tasks)]
    return [WorldSource(d.world, d.num_samples, config.seed, image_size=d.image_size_px, tasks=tuple(d.tasks),
                        **d.world_options)]
