"""All distributed code of the project lives here.

The same training code runs alone (1 process, no process group) and under `torchrun` on several
processes and nodes. `init_distributed` reads the torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR/PORT) and returns a frozen `DistInfo`; `parallelize` wraps the training module.

Order applied by `parallelize` (torchtitan's): activation checkpointing (done by the stage on its own
sub-modules, it knows which blocks are worth recomputing) -> FSDP2 `fully_shard` on each unit then the
root, or DDP on the whole module. `torch.compile` is not applied: on CPU it costs more than it gives at
our sizes, and it would make bitwise resume tests depend on the compiler.

Seeds: `seed_everything(seed, rank)` seeds Python, NumPy and torch with `seed + rank` so that dropout
and any other global-RNG draw differ between ranks. Noise that must be identical whatever the world
size (the VAE posterior sample, flow-matching noise and timesteps) is drawn from per-sample generators
by the stages instead, which is what makes a 2-process run match a 1-process run.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import random
import sys
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from nexusgen.train.config import DistConfig


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(config: DistConfig, device: str = "auto") -> DistInfo:
    """Join the torchrun process group if there is one; pick this rank's device.

    Args:
        config: backend and timeout.
        device: 'auto' (cuda:LOCAL_RANK if CUDA is available, else cpu) or an explicit torch device.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    torch_device = torch.device(device)
    if torch_device.type == "cuda":
        torch.cuda.set_device(torch_device)
    if world_size > 1 and not dist.is_initialized():
        backend = config.backend
        if backend == "auto":
            backend = "nccl" if torch_device.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=config.timeout_s))
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world_size, device=torch_device)


def destroy_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def is_main_process() -> bool:
    """Rank 0 of a torchrun launch, or a plain single process."""
    return int(os.environ.get("RANK", "0")) == 0


def print0(*args, **kwargs) -> None:
    """print() on rank 0 only (to stderr by default, stdout stays for JSON results)."""
    if is_main_process():
        kwargs.setdefault("file", sys.stderr)
        print(*args, **kwargs)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def seed_everything(seed: int, rank: int = 0) -> None:
    """Seed Python, NumPy and torch (all devices) with `seed + rank`."""
    random.seed(seed + rank)
    np.random.seed((seed + rank) % 2**32)
    torch.manual_seed(seed + rank)


def all_reduce_mean(values: dict[str, float], info: DistInfo) -> dict[str, float]:
    """Average a dict of floats over ranks (for logging; one collective for all keys)."""
    return {k: v / info.world_size for k, v in all_reduce_sums(values, info).items()}


def all_reduce_sums(values: dict[str, float], info: DistInfo) -> dict[str, float]:
    """Sum a dict of floats over ranks (one float64 collective for all keys; every rank has the same keys)."""
    if not info.is_distributed or not values:
        return dict(values)
    keys = sorted(values)
    buffer = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=info.device)
    dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
    return dict(zip(keys, buffer.tolist()))


def all_reduce_sum(value: float, info: DistInfo) -> float:
    if not info.is_distributed:
        return value
    buffer = torch.tensor([float(value)], dtype=torch.float64, device=info.device)
    dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
    return float(buffer.item())


def parallelize(module: torch.nn.Module, config: DistConfig, info: DistInfo,
                shard_units: list[torch.nn.Module] | None = None) -> torch.nn.Module:
    """Wrap the training module for data parallelism (no-op in a single process).

    Args:
        module: the stage's training module (forward(batch) -> dict of losses), already on `info.device`.
        config: 'ddp' or 'fsdp'.
        info: from `init_distributed`.
        shard_units: sub-modules that become their own FSDP2 unit (transformer blocks); ignored by DDP.

    Returns:
        The module to call in the loop. With FSDP2 it is `module` itself (sharded in place).
    """
    if not info.is_distributed:
        return module
    if config.strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for unit in shard_units or []:
            fully_shard(unit)
        fully_shard(module)
        return module
    device_ids = [info.device.index] if info.device.type == "cuda" else None
    # Stages whose trainable parts may be unused by a micro-batch (e.g. the prefill table on an
    # understanding-only batch) add zero-weighted terms instead of paying for find_unused_parameters.
    return torch.nn.parallel.DistributedDataParallel(module, device_ids=device_ids)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The user module under a DDP wrapper (FSDP2 shards in place, so it is the module itself)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


@contextlib.contextmanager
def gradient_sync(model: torch.nn.Module, enabled: bool):
    """Skip the gradient all-reduce on accumulation micro-steps that are not the last one."""
    if enabled or not dist.is_initialized():
        yield
    elif isinstance(model, torch.nn.parallel.DistributedDataParallel):
        with model.no_sync():
            yield
    elif hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield


_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_state_dicts(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Unsharded (model, optimizer) state dicts on CPU, keyed by parameter names.

    Collective under FSDP: every rank must call it; rank 0 gets the tensors, others may get empties.
    """
    module = unwrap(model)
    return (get_model_state_dict(module, options=_FULL),
            get_optimizer_state_dict(module, optimizer, options=_FULL))


def full_model_state_dict(model: torch.nn.Module) -> dict:
    """Unsharded model state dict on CPU (collective under FSDP; rank 0 gets the tensors)."""
    return get_model_state_dict(unwrap(model), options=_FULL)


def load_full_state_dicts(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                          model_state: dict, optimizer_state: dict | None) -> None:
    """Load unsharded state dicts (every rank passes the full dicts) into a possibly sharded model."""
    module = unwrap(model)
    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(module, model_state, options=options)
    if optimizer is not None and optimizer_state is not None:
        set_optimizer_state_dict(module, optimizer, optimizer_state, options=options)
