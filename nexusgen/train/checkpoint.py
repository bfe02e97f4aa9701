"""Atomic checkpoints and exact resume.

A checkpoint is a directory `RUN_DIR/checkpoints/step_000020/`:
```
model.safetensors      full (unsharded) model state dict
optimizer.pt           optimizer state keyed by parameter names (tensors and numbers only)
scheduler.pt           LR scheduler state
ema.safetensors        EMA weights (only with stage.ema_decay > 0)
rank_00000.pt          this rank's RNG states (python, numpy, torch CPU and CUDA) and data position
trainer.json           step, world size
COMPLETE               written last; a directory without it is ignored
```
Writing goes to `.step_000020.tmp/`, every file is fsynced, the marker is written, and the directory
is renamed into place (atomic on POSIX), so a process killed at any moment leaves either the previous
checkpoints or a complete new one (the pattern of transformers PR #27820 and torchtitan's
`_find_load_step`). Every rank writes its own file into the one shared `.tmp` folder, which is why this
protocol names its temporary folder itself instead of using `nexusgen.files.atomic_folder`. The `.pt`
files are loaded with `weights_only=True`: no pickle code ever runs.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from nexusgen.files import fsync_path, fsync_tree, output_error, save_tensors, save_torch
from nexusgen.train import parallel

COMPLETE = "COMPLETE"
_STEP_DIR = re.compile(r"^step_(\d{6,})$")


# ----------------------------------------------------------------------------------------------------
# RNG state


def rng_state() -> dict:
    """Every RNG this process draws from, as tensors and plain numbers (loadable with weights_only)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(internal), gauss],
             "numpy": [kind, keys.tolist(), pos, has_gauss, cached],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------------------------------
# save / find / load


def checkpoint_dir(run_dir, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step_{step:06d}"


def list_checkpoints(run_dir) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / "checkpoints"
    found = []
    for path in root.iterdir() if root.is_dir() else []:
        match = _STEP_DIR.match(path.name)
        if match and (path / COMPLETE).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(run_dir) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def save_checkpoint(run_dir, step: int, *, model, optimizer, scheduler, data_state: dict,
                    info: parallel.DistInfo, keep_last: int, ema=None) -> Path:
    """Write a complete checkpoint of `step` atomically (collective: call on every rank)."""
    final = checkpoint_dir(run_dir, step)
    tmp = final.with_name(f".{final.name}.tmp")
    model_state, optim_state = parallel.full_state_dicts(model, optimizer)  # collective under FSDP
    ema_state = ema.state_dict() if ema is not None else None  # collective under FSDP: every rank gathers
    if info.is_main:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    parallel.barrier()
    try:
        _write_checkpoint(tmp, step, model_state, optim_state, ema_state, scheduler, data_state, info)
    except BaseException as err:  # a full disk, a read-only file system: no half-written step is left
        if info.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, OSError):
            raise output_error(final, err) from None
        raise
    if info.is_main:
        if final.exists():  # the same step saved again after a resume: replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_path(final.parent)
        _prune(run_dir, keep_last)
    parallel.barrier()
    return final


def _write_checkpoint(tmp: Path, step: int, model_state, optim_state, ema_state, scheduler, data_state: dict,
                      info: parallel.DistInfo) -> None:
    """Every file of the checkpoint into `tmp`, fsynced, the COMPLETE marker last (collective)."""
    save_torch({"rng": rng_state(), "data": data_state}, tmp / f"rank_{info.rank:05d}.pt")
    fsync_path(tmp / f"rank_{info.rank:05d}.pt")
    if info.is_main:
        save_tensors(model_state, tmp / "model.safetensors")
        save_torch(optim_state, tmp / "optimizer.pt")
        save_torch(scheduler.state_dict(), tmp / "scheduler.pt")
        if ema_state is not None:
            save_tensors(ema_state, tmp / "ema.safetensors")
        (tmp / "trainer.json").write_text(json.dumps({"step": step, "world_size": info.world_size}))
    parallel.barrier()
    if info.is_main:
        fsync_tree(tmp)
        (tmp / COMPLETE).write_text(f"{step}\n")
        fsync_path(tmp / COMPLETE)


def _prune(run_dir, keep_last: int) -> None:
    for _, path in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(path, ignore_errors=True)
    for stale in (Path(run_dir) / "checkpoints").glob(".step_*.tmp"):  # left by a killed run
        shutil.rmtree(stale, ignore_errors=True)


def load_checkpoint(path, *, model, optimizer, scheduler, info: parallel.DistInfo,
                    ema=None) -> tuple[int, dict]:
    """Restore a checkpoint written by `save_checkpoint`; returns (step, this rank's data state).

    The RNG state of this rank is restored too, so the continued run draws exactly what the
    uninterrupted run would have drawn. Resuming with another world size keeps the weights, optimizer
    and (global) data position but cannot restore per-rank RNG streams: they are reseeded.

    Raises:
        ValueError: `path` is not a complete checkpoint, or one of another model (recipe / config).
    """
    path = Path(path)
    if not (path / COMPLETE).is_file():
        raise ValueError(f"{path} is not a complete checkpoint (no {COMPLETE} marker)")
    trainer = json.loads((path / "trainer.json").read_text())
    model_state = load_file(str(path / "model.safetensors"))
    optim_state = torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu")
    try:
        parallel.load_full_state_dicts(model, optimizer, model_state, optim_state)
    except (RuntimeError, KeyError) as err:  # another stage or model size: missing/unexpected/mis-shaped
        detail = " ".join(str(err).split()) or type(err).__name__
        raise ValueError(f"{path} does not match this run's model (another recipe or config?): "
                         f"{detail[:300]}") from err
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    if ema is not None and (path / "ema.safetensors").is_file():
        ema.load_state_dict(load_file(str(path / "ema.safetensors")))
    rank_file = path / f"rank_{info.rank:05d}.pt"
    same_world = trainer["world_size"] == info.world_size and rank_file.is_file()
    rank_state = torch.load(rank_file if same_world else path / "rank_00000.pt", weights_only=True)
    if same_world:
        set_rng_state(rank_state["rng"])
    return int(trainer["step"]), rank_state["data"]
