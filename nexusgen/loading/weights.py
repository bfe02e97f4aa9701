"""Weights straight from safetensors files into modules built on the meta device: no second copy.

`read_safetensors` returns the tensors of a file memory-mapped (safetensors maps the file; a tensor's pages
are read when first touched, and they are file pages the kernel can drop again, not process memory).
`load_weights` checks every key and shape against a module built under `meta_parameters`, then assigns
the tensors: where the file's dtype is the compute dtype they stay memory-mapped (a bf16 checkpoint on a
GPU machine goes from the page cache straight to the device); otherwise each tensor is converted once. The
module's derived buffers (rotary `inv_freq`) were computed in fp32 when it was built and stay so.

Shape legend: none (whole checkpoints).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from nexusgen.models.placement import cast_module


def read_safetensors(path: str | os.PathLike, keys: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """The tensors of one safetensors file (all, or `keys`), memory-mapped.

    Raises:
        ValueError: a missing or unreadable file (naming it), or a requested key it lacks.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"missing weights file {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            names = list(handle.keys()) if keys is None else list(keys)
            absent = sorted(set(names) - set(handle.keys()))
            if absent:
                raise ValueError(f"{path}: no tensor {absent[0]!r}")
            return {name: handle.get_tensor(name) for name in names}
    except ValueError:
        raise
    except Exception as err:  # safetensors raises its own error types for corrupt headers
        raise ValueError(f"cannot read {path}: {err}") from err


def diffusers_weight_files(folder: str | os.PathLike,
                           stem: str = "diffusion_pytorch_model") -> list[Path]:
    """The safetensors files of a diffusers (or transformers, `stem="model"`) folder: one file, or the shards
    its index names.

    Raises:
        ValueError: no weights, an unreadable index, or an index naming a missing shard.
    """
    folder = Path(folder)
    index = folder / f"{stem}.safetensors.index.json"
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, AttributeError, TypeError) as err:
            raise ValueError(f"{index}: not a safetensors index ({err})") from err
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise ValueError(f"{index}: names shard {missing[0]}, which is missing")
        return [folder / n for n in names]
    single = folder / f"{stem}.safetensors"
    if single.is_file():
        return [single]
    pickles = sorted(p.name for p in folder.glob("*.bin"))
    hint = f" (found {pickles}: only safetensors are read, pickles are never executed)" if pickles else ""
    raise ValueError(f"{folder}: no {single.name} or {index.name}{hint}")


def folder_index(folder: str | os.PathLike, stem: str = "diffusion_pytorch_model") -> dict[str, tuple[Path, str,
                                                                                              tuple[int, ...]]]:
    """Every tensor of a weights folder without reading one: key -> (file, key in the file, shape).

    Raises:
        ValueError: as `diffusers_weight_files`, or an unreadable header.
    """
    from safetensors import safe_open

    index = {}
    for path in diffusers_weight_files(folder, stem):
        try:
            with safe_open(str(path), framework="pt") as handle:
                index.update({k: (path, k, tuple(handle.get_slice(k).get_shape())) for k in handle.keys()})
        except Exception as err:  # safetensors raises its own error types for corrupt headers
            raise ValueError(f"cannot read {path}: {err}") from err
    return index


def read_indexed(index: dict[str, tuple[Path, str, tuple[int, ...]]], keys) -> dict[str, torch.Tensor]:
    """The tensors `keys` of a `folder_index`, memory-mapped; the mapping goes when the tensors do."""
    by_file: dict[Path, list[str]] = {}
    for key in keys:
        by_file.setdefault(index[key][0], []).append(key)
    out = {}
    for path, names in by_file.items():
        stored = read_safetensors(path, {index[k][1] for k in names})
        out.update({k: stored[index[k][1]] for k in names})
    return out


def read_folder_weights(folder: str | os.PathLike, stem: str = "diffusion_pytorch_model") -> dict[str, torch.Tensor]:
    """Every tensor of a diffusers / transformers weights folder, memory-mapped."""
    tensors: dict[str, torch.Tensor] = {}
    for path in diffusers_weight_files(folder, stem):
        tensors.update(read_safetensors(path))
    return tensors


def check_state(module: nn.Module, found: dict[str, tuple[int, ...]], source: str, what: str = "") -> None:
    """Compare checkpoint shapes with the (meta) module's state dict.

    Raises:
        ValueError: naming `source` and the first missing, unexpected or mis-shaped tensor.
    """
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    label = f"{what} " if what else ""
    missing = sorted(set(expected) - set(found))
    if missing:
        raise ValueError(f"{source}: {label}tensor {missing[0]!r} is missing ({len(missing)} missing in all); "
                         f"it does not match the config")
    unexpected = sorted(set(found) - set(expected))
    if unexpected:
        raise ValueError(f"{source}: unexpected {label}tensor {unexpected[0]!r}; it does not match the config")
    for key, shape in expected.items():
        if tuple(found[key]) != shape:
            raise ValueError(f"{source}: {label}tensor {key!r} has shape {tuple(found[key])}, the config needs "
                             f"{shape}; it does not match the config")


def load_weights(module: nn.Module, tensors: dict[str, torch.Tensor], dtype: torch.dtype | None, source: str,
                 what: str = "") -> nn.Module:
    """Check `tensors` against `module` (built under `meta_parameters`) and assign them, cast to `dtype`
    (None: as stored). Tensors whose dtype already matches are assigned as they are (memory-mapped).

    Raises:
        ValueError: a missing, unexpected or mis-shaped tensor (see `check_state`).
    """
    check_state(module, {k: tuple(v.shape) for k, v in tensors.items()}, source, what)
    state = {k: v.to(dtype) if dtype is not None and v.is_floating_point() else v for k, v in tensors.items()}
    module.load_state_dict(state, strict=True, assign=True)
    return module


def finish(module: nn.Module, device: torch.device | str | None) -> nn.Module:
    """Move a loaded module to `device` (derived buffers keep fp32) and put it in eval mode."""
    if device is not None:
        cast_module(module, device=device)
    return module.eval()
