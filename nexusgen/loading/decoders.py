"""Save and load the decoder parts of a model folder (DESIGN.md "Model folder format").

::

    generation_decoder/  config.json (DecoderConfig), adapter.safetensors, pooled.safetensors,
                         transformer/ (diffusers FluxTransformer2DModel folder)
    editing_decoder/     config.json (DecoderConfig), merger.safetensors, pooled.safetensors, transformer/
    vae/                 diffusers AutoencoderKL folder

``adapter.safetensors`` and ``merger.safetensors`` hold the modules' own parameter names, which are
upstream's (``0.weight`` ... / ``layers.0.self_attn.q_proj.weight`` ..., without the ``adapter.`` /
``embedding_merger.`` prefix). ``pooled.safetensors`` holds one tensor ``pooled_embeds`` (P,): CLIP("") for
converted official models. Every folder is written under a temporary name and renamed into place, so a
failed save never leaves a half-written part. Problems with a folder raise ValueError naming the file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from diffusers import AutoencoderKL, FluxTransformer2DModel
from safetensors import SafetensorError
from safetensors.torch import load_file

from nexusgen.loading.files import atomic_folder, read_json_object, save_tensors, write_json  # noqa: F401 (re-exported)
from nexusgen.models.decoder import DecoderConfig, EditingDecoder, GenerationDecoder

GENERATION_DIR = "generation_decoder"
EDITING_DIR = "editing_decoder"
VAE_DIR = "vae"
CONFIG_FILE = "config.json"
ADAPTER_FILE = "adapter.safetensors"
MERGER_FILE = "merger.safetensors"
POOLED_FILE = "pooled.safetensors"
TRANSFORMER_DIR = "transformer"
POOLED_KEY = "pooled_embeds"


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ValueError(f"missing decoder file {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"cannot read {path}: {err}") from err


def read_decoder_config(folder: Path) -> DecoderConfig:
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise ValueError(f"{folder} is not a nexusgen decoder folder: {CONFIG_FILE} is missing")
    try:
        return DecoderConfig(**json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError) as err:
        raise ValueError(f"invalid decoder config {path}: {err}") from err


def _load_into(module: torch.nn.Module, tensors: dict[str, torch.Tensor], path: Path) -> None:
    try:
        module.load_state_dict(tensors, strict=True)
    except RuntimeError as err:  # missing/unexpected keys or shape mismatches
        raise ValueError(f"{path} does not match the decoder config: {err}") from err


# ---------------------------------------------------------------------------------------------------------
# Decoders
# ---------------------------------------------------------------------------------------------------------


def _save_diffusers(module, folder: Path) -> None:
    """diffusers' `save_pretrained`, minus the `_name_or_path` it records: the folder the module was
    loaded from, a local path that means nothing to whoever loads this one (and churns committed files)."""
    module.save_pretrained(folder, safe_serialization=True)
    config_path = folder / "config.json"
    config = read_json_object(config_path)
    config.pop("_name_or_path", None)
    write_json(config, config_path)


def _save_common(decoder: GenerationDecoder | EditingDecoder, folder: Path) -> None:
    write_json(decoder.config.to_dict(), folder / CONFIG_FILE)
    save_tensors({POOLED_KEY: decoder.pooled_embeds}, folder / POOLED_FILE)
    _save_diffusers(decoder.transformer, folder / TRANSFORMER_DIR)


def save_generation_decoder(decoder: GenerationDecoder, folder: str | os.PathLike) -> None:
    """Write a generation decoder to `folder` (e.g. MODEL/generation_decoder), atomically."""
    with atomic_folder(folder) as temporary:
        _save_common(decoder, temporary)
        save_tensors(decoder.adapter.state_dict(), temporary / ADAPTER_FILE)


def save_editing_decoder(decoder: EditingDecoder, folder: str | os.PathLike) -> None:
    """Write an editing decoder to `folder` (e.g. MODEL/editing_decoder), atomically."""
    with atomic_folder(folder) as temporary:
        _save_common(decoder, temporary)
        save_tensors(decoder.merger.state_dict(), temporary / MERGER_FILE)


def _load_transformer(folder: Path, config: DecoderConfig,
                      dtype: torch.dtype | None) -> FluxTransformer2DModel:
    path = folder / TRANSFORMER_DIR
    if not (path / "config.json").is_file():
        raise ValueError(f"missing diffusers transformer folder {path}")
    try:
        stored = FluxTransformer2DModel.load_config(path)
    except OSError as err:  # diffusers reports invalid JSON as an OSError
        raise ValueError(f"cannot load the transformer in {path}: {err}") from err
    expected = json.loads(json.dumps(config.transformer_kwargs()))  # tuples -> lists, as stored
    mismatched = {k: (stored.get(k), v) for k, v in expected.items() if stored.get(k) != v}
    if mismatched:
        raise ValueError(f"{path}/config.json disagrees with {folder / CONFIG_FILE} (stored, expected): "
                         f"{mismatched}")
    try:
        return FluxTransformer2DModel.from_pretrained(path, torch_dtype=dtype)
    except (OSError, RuntimeError, SafetensorError) as err:
        raise ValueError(f"cannot load the transformer in {path}: {err}") from err


def _finish(decoder, folder: Path, device, dtype):
    pooled = _read_tensors(folder / POOLED_FILE)
    if set(pooled) != {POOLED_KEY} or pooled[POOLED_KEY].shape != decoder.pooled_embeds.shape:
        found = {k: tuple(v.shape) for k, v in pooled.items()}
        raise ValueError(f"{folder / POOLED_FILE} must hold one tensor {POOLED_KEY!r} of shape "
                         f"{tuple(decoder.pooled_embeds.shape)}, got {found}")
    decoder.pooled_embeds.copy_(pooled[POOLED_KEY])
    if dtype is not None:
        decoder.to(dtype)
    if device is not None:
        decoder.to(device)
    return decoder.eval()


def load_generation_decoder(folder: str | os.PathLike, device: torch.device | str | None = None,
                            dtype: torch.dtype | None = None) -> GenerationDecoder:
    """Load a generation decoder folder written by `save_generation_decoder` or `nexusgen convert`.

    Args:
        folder: MODEL/generation_decoder.
        device: where to put it (default CPU).
        dtype: parameter dtype (default as stored).

    Returns:
        The decoder in eval mode.

    Raises:
        ValueError: missing or inconsistent files.
    """
    folder = Path(folder)
    config = read_decoder_config(folder)
    decoder = GenerationDecoder(config, transformer=_load_transformer(folder, config, dtype))
    _load_into(decoder.adapter, _read_tensors(folder / ADAPTER_FILE), folder / ADAPTER_FILE)
    return _finish(decoder, folder, device, dtype)


def load_editing_decoder(folder: str | os.PathLike, device: torch.device | str | None = None,
                         dtype: torch.dtype | None = None) -> EditingDecoder:
    """Load an editing decoder folder (arguments as `load_generation_decoder`)."""
    folder = Path(folder)
    config = read_decoder_config(folder)
    if config.merger is None:
        raise ValueError(f"{folder / CONFIG_FILE} has no merger config; not an editing decoder")
    decoder = EditingDecoder(config, transformer=_load_transformer(folder, config, dtype))
    _load_into(decoder.merger, _read_tensors(folder / MERGER_FILE), folder / MERGER_FILE)
    return _finish(decoder, folder, device, dtype)


# ---------------------------------------------------------------------------------------------------------
# VAE
# ---------------------------------------------------------------------------------------------------------


def save_vae(vae: AutoencoderKL, folder: str | os.PathLike) -> None:
    """Write a diffusers AutoencoderKL folder atomically."""
    with atomic_folder(folder) as temporary:
        _save_diffusers(vae, temporary)


def load_vae(folder: str | os.PathLike, device: torch.device | str | None = None,
             dtype: torch.dtype | None = None) -> AutoencoderKL:
    """Load MODEL/vae (a diffusers AutoencoderKL folder). Raises ValueError if it is missing or broken."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ValueError(f"missing VAE folder {folder} (diffusers AutoencoderKL with config.json)")
    try:
        vae = AutoencoderKL.from_pretrained(folder, torch_dtype=dtype)
    except (OSError, RuntimeError, SafetensorError) as err:
        raise ValueError(f"cannot load the VAE in {folder}: {err}") from err
    return (vae.to(device) if device is not None else vae).eval()
