"""Save and load the decoder parts of a model folder (docs/architecture.md §4).

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

from nexusgen.files import atomic_folder, read_json_object, save_tensors, write_json
from nexusgen.loading.weights import check_state, finish, load_weights, read_folder_weights, read_safetensors
from nexusgen.models.decoder import DecoderConfig, EditingDecoder, GenerationDecoder
from nexusgen.models.memory import enable_fp8_storage
from nexusgen.models.placement import meta_parameters
from nexusgen.models.vae import VAEConfig

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
    return read_safetensors(path)


def read_decoder_config(folder: Path) -> DecoderConfig:
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise ValueError(f"{folder} is not a nexusgen decoder folder: {CONFIG_FILE} is missing")
    try:
        return DecoderConfig(**json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError) as err:
        raise ValueError(f"invalid decoder config {path}: {err}") from err


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


def _transformer_config(folder: Path, config: DecoderConfig) -> dict:
    """The diffusers config of `folder/transformer`, checked against the decoder config."""
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
    return stored


def _build_meta(cls, folder: Path, config: DecoderConfig):
    """The decoder with its parameters on the meta device, its DiT built from the folder's own config."""
    stored = _transformer_config(folder, config)
    with meta_parameters():
        return cls(config, transformer=FluxTransformer2DModel.from_config(stored))


def _load_decoder(decoder, folder: Path, connector: str, connector_file: str, device, dtype, fp8: bool):
    """Assign the DiT (memory-mapped), the connector and the pooled vector, then fp8 / device as asked."""
    tensors = {f"{connector}.{k}": v for k, v in _read_tensors(folder / connector_file).items()}
    try:
        dit = read_folder_weights(folder / TRANSFORMER_DIR)
    except ValueError as err:
        raise ValueError(f"cannot load the transformer in {folder / TRANSFORMER_DIR}: {err}") from err
    tensors.update({f"transformer.{k}": v for k, v in dit.items()})
    pooled = _read_tensors(folder / POOLED_FILE)
    if set(pooled) != {POOLED_KEY} or pooled[POOLED_KEY].shape != decoder.pooled_embeds.shape:
        found = {k: tuple(v.shape) for k, v in pooled.items()}
        raise ValueError(f"{folder / POOLED_FILE} must hold one tensor {POOLED_KEY!r} of shape "
                         f"{tuple(decoder.pooled_embeds.shape)}, got {found}")
    tensors["pooled_embeds"] = pooled[POOLED_KEY]
    where = {connector: folder / connector_file, "transformer": folder / TRANSFORMER_DIR}
    found = {k: tuple(v.shape) for k, v in tensors.items()}
    for prefix, path in where.items():  # name the file that is wrong
        part = {k: s for k, s in found.items() if k.startswith(prefix + ".")}
        module = getattr(decoder, prefix)
        check_state(module, {k[len(prefix) + 1:]: s for k, s in part.items()}, str(path))
    load_weights(decoder, tensors, dtype, str(folder))
    if fp8:
        enable_fp8_storage(decoder.transformer)
    return finish(decoder, device)


def checked_decoder_config(folder: str | os.PathLike, editing: bool = False) -> DecoderConfig:
    """A decoder folder's `DecoderConfig`, checked against its DiT's diffusers config (no weights read).

    Raises:
        ValueError: a missing or invalid config, a disagreement, or an editing folder without merger config.
    """
    folder = Path(folder)
    config = read_decoder_config(folder)
    if editing and config.merger is None:
        raise ValueError(f"{folder / CONFIG_FILE} has no merger config; not an editing decoder")
    _transformer_config(folder, config)
    return config


def load_generation_decoder(folder: str | os.PathLike, device: torch.device | str | None = None,
                            dtype: torch.dtype | None = None, fp8: bool = False) -> GenerationDecoder:
    """Load a generation decoder folder written by `save_generation_decoder`, `nexusgen convert` or
    `nexusgen assemble` (DiT memory-mapped where the stored dtype is `dtype`).

    Args:
        folder: MODEL/generation_decoder.
        device: where to put it (default: stays on the CPU).
        dtype: parameter dtype (default as stored); rotary buffers stay fp32.
        fp8: store every Linear of the DiT in fp8 (`nexusgen.models.memory.enable_fp8_storage`).

    Returns:
        The decoder in eval mode.

    Raises:
        ValueError: missing or inconsistent files.
    """
    folder = Path(folder)
    config = read_decoder_config(folder)
    decoder = _build_meta(GenerationDecoder, folder, config)
    return _load_decoder(decoder, folder, "adapter", ADAPTER_FILE, device, dtype, fp8)


def load_editing_decoder(folder: str | os.PathLike, device: torch.device | str | None = None,
                         dtype: torch.dtype | None = None, fp8: bool = False) -> EditingDecoder:
    """Load an editing decoder folder (arguments as `load_generation_decoder`)."""
    folder = Path(folder)
    config = read_decoder_config(folder)
    if config.merger is None:
        raise ValueError(f"{folder / CONFIG_FILE} has no merger config; not an editing decoder")
    decoder = _build_meta(EditingDecoder, folder, config)
    return _load_decoder(decoder, folder, "merger", MERGER_FILE, device, dtype, fp8)


# ---------------------------------------------------------------------------------------------------------
# VAE
# ---------------------------------------------------------------------------------------------------------


def save_vae(vae: AutoencoderKL, folder: str | os.PathLike) -> None:
    """Write a diffusers AutoencoderKL folder atomically."""
    with atomic_folder(folder) as temporary:
        _save_diffusers(vae, temporary)


def read_vae_config(folder: str | os.PathLike) -> VAEConfig:
    """The `VAEConfig` of a diffusers AutoencoderKL folder (no weights read)."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ValueError(f"missing VAE folder {folder} (diffusers AutoencoderKL with config.json)")
    try:
        c = AutoencoderKL.load_config(folder)
        return VAEConfig(latent_channels=c["latent_channels"], block_out_channels=tuple(c["block_out_channels"]),
                         layers_per_block=c["layers_per_block"], norm_num_groups=c["norm_num_groups"],
                         scaling_factor=c["scaling_factor"], shift_factor=c["shift_factor"])
    except (OSError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"cannot load the VAE in {folder}: {err}") from err


def load_vae(folder: str | os.PathLike, device: torch.device | str | None = None,
             dtype: torch.dtype | None = None) -> AutoencoderKL:
    """Load MODEL/vae (a diffusers AutoencoderKL folder, memory-mapped). ValueError if missing or broken."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ValueError(f"missing VAE folder {folder} (diffusers AutoencoderKL with config.json)")
    try:
        stored = AutoencoderKL.load_config(folder)
        with meta_parameters():
            vae = AutoencoderKL.from_config(stored)
    except (OSError, TypeError, ValueError) as err:
        raise ValueError(f"cannot load the VAE in {folder}: {err}") from err
    load_weights(vae, read_folder_weights(folder), dtype, str(folder), "VAE")
    return finish(vae, device)
