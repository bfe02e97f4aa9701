"""Load and save the autoregressive model folder: ours, official Nexus-GenV2 and official V1.

A folder (ours: `MODEL/autoregressive/`; official: the top level of `Nexus-GenV2/`) holds

* `config.json` -- a Qwen2.5-VL config (5.x nested or the official 4.49-style flat layout);
* `model.safetensors` or `model-*.safetensors` + `model.safetensors.index.json` -- Qwen2.5-VL tensors
  (5.x names `model.language_model.*`, `model.visual.*`, or 4.x names `model.layers.*`, `visual.*`) plus
  `vision_head.weight` (D, D) and `image_prefill_embeds.weight` (N, D; absent in V1);
* tokenizer files and `preprocessor_config.json`;
* ours only: `nexusgen_ar.json` -- the ARConfig fields other than the Qwen config (N, output size, ...).

Every tensor is checked against the model built on the meta device *before* anything is loaded: a
missing, unexpected or mis-shaped tensor is a ValueError that names the file and the key. The Qwen part is
then loaded by transformers (which maps 4.x names and builds on the meta device), the two extra tensors by
us. Official folders get N from the prefill table (a square output grid); a V1 folder (no table) loads
with a warning and feeds the `<|image_pad|>` embedding at every output position, as V1 did.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import warnings
from pathlib import Path

import torch

from nexusgen.files import atomic_folder, read_json_object, write_json
from nexusgen.loading.weights import finish, load_weights, read_safetensors
from nexusgen.models.autoregressive import ARConfig, NexusGenARModel, without_removed_fields
from nexusgen.models.placement import meta_parameters
from nexusgen.processing.processor import build_image_processor
from nexusgen.processing.tokenizers import (
    build_byte_tokenizer,
    build_qwen25_tokenizer,
    build_tokenizer,
    check_special_token_ids,
    load_tokenizer,
)

CONFIG_FILE = "config.json"
AR_CONFIG_FILE = "nexusgen_ar.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
PREPROCESSOR_FILE = "preprocessor_config.json"
FORMAT_VERSION = 1
EXTRA_KEYS = ("vision_head.weight", "image_prefill_embeds.weight")
# V1 has no prefill table to read N from; it generated 9 x 9 = 81 tokens (252 px, `decoder_81_512.bin`).
V1_OUTPUT_GRID_SIDE = 9
# A model started from stock Qwen2.5-VL-Instruct gets V2's output: 9 x 9 = 81 tokens (252 px).
STOCK_OUTPUT_GRID_SIDE = 9
# transformers 4.x checkpoint names -> 5.x names (what from_pretrained maps on load).
_LEGACY_RENAMES = ((re.compile(r"^model\.(?!language_model\.|visual\.)"), "model.language_model."),
                   (re.compile(r"^visual\."), "model.visual."))


def load_autoregressive(folder: str | os.PathLike, device: str | torch.device | None = None,
                        dtype: torch.dtype | str | None = None, *, new_heads: bool = False, seed: int = 0):
    """Load the AR model, its tokenizer and image processor from a folder (ours, official V2, V1, or -- with
    `new_heads` -- a stock Qwen2.5-VL-Instruct folder).

    The model is built with its parameters on the meta device and the folder's tensors are assigned
    (memory-mapped where the stored dtype is `dtype`); the rotary inverse frequencies are computed in fp32
    and stay fp32 whatever `dtype` is (transformers' own `from_pretrained` does the same).

    Args:
        folder: the model folder.
        device: default cuda if available, else cpu.
        dtype: default float32 on CPU, bfloat16 on GPU.
        new_heads: a folder without `vision_head.weight` (a stock Qwen2.5-VL-Instruct folder) gets a newly
            initialised vision head and prefill table (upstream's `post_init`: N(0, initializer_range)) for
            the default 81-token (252 px) output, instead of an error.
        seed: torch seed of that initialisation.

    Returns:
        (NexusGenARModel in eval mode, tokenizer, Qwen2VLImageProcessorPil).

    Raises:
        ValueError: not a Qwen2.5-VL / Nexus-Gen folder, a missing/unexpected/mis-shaped tensor, or
            tokenizer / image processor files that disagree with the config (file and key named).
    """
    folder = Path(folder)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = _resolve_dtype(dtype, device)
    keys = weight_index(folder)  # key -> (file, shape)
    config, tokenizer, image_processor = load_autoregressive_config(folder, new_heads, keys)
    model = load_autoregressive_model(folder, config, dtype, keys, new_heads=new_heads, seed=seed)
    return finish(model, device), tokenizer, image_processor


def load_autoregressive_model(folder: str | os.PathLike, config: ARConfig, dtype: torch.dtype | None,
                              keys: dict | None = None, *, new_heads: bool = False, seed: int = 0) -> NexusGenARModel:
    """The weights of an AR folder whose config was read (`load_autoregressive_config`), on the CPU, in eval
    mode; arguments as `load_autoregressive`."""
    folder = Path(folder)
    keys = keys if keys is not None else weight_index(folder)
    new = new_keys(config, keys) if new_heads else set()
    with meta_parameters():
        model = NexusGenARModel(config)
    tensors = read_ar_tensors(folder, keys)
    if new:
        tensors.update(new_head_tensors(config, new, seed))
    if config.qwen_config.tie_word_embeddings and "vlm.lm_head.weight" not in tensors:
        tensors["vlm.lm_head.weight"] = tensors["vlm.model.language_model.embed_tokens.weight"]
    load_weights(model, tensors, dtype, str(folder))
    if config.qwen_config.tie_word_embeddings:
        model.vlm.lm_head.weight = model.vlm.model.language_model.embed_tokens.weight
    return model.eval()


def load_autoregressive_config(folder: str | os.PathLike, new_heads: bool = False, keys: dict | None = None):
    """Everything of an AR folder but the weights: (ARConfig, tokenizer, image processor), with every tensor's
    name and shape checked against the config (headers only; see `load_autoregressive` for the errors)."""
    folder = Path(folder)
    keys = keys if keys is not None else weight_index(folder)
    config = read_ar_config(folder, keys, stock=new_heads)
    check_weights(folder, config, keys, new=new_keys(config, keys) if new_heads else set())
    tokenizer = load_tokenizer(folder)
    check_special_token_ids(tokenizer, config.qwen_config, source=str(folder / "tokenizer.json"))
    return config, tokenizer, _load_image_processor(folder, config)


def read_ar_tensors(folder: Path, keys: dict | None = None) -> dict[str, torch.Tensor]:
    """Every tensor of an AR folder under the model's state-dict names (`vlm.` + transformers 5.x names, and
    the Nexus-Gen tensors as they are), memory-mapped."""
    keys = keys if keys is not None else weight_index(folder)
    tensors = {}
    for file in sorted({file for file, _ in keys.values()}):
        for raw, tensor in read_safetensors(folder / file).items():
            key = normalize_key(raw)
            tensors[key if key in EXTRA_KEYS else f"vlm.{key}"] = tensor
    return tensors


def new_keys(config: ARConfig, keys: dict) -> set[str]:
    """The Nexus-Gen tensors a stock folder lacks (vision head, prefill table)."""
    wanted = ["vision_head.weight"] + (["image_prefill_embeds.weight"] if config.use_prefill_table else [])
    return {k for k in wanted if k not in keys}


def new_head_tensors(config: ARConfig, names: set[str], seed: int = 0) -> dict[str, torch.Tensor]:
    """Freshly initialised vision head (D, D) / prefill table (N, D): N(0, initializer_range), as upstream's
    `post_init` initialises them when training starts from Qwen2.5-VL-Instruct."""
    generator = torch.Generator().manual_seed(seed)
    std = config.qwen_config.text_config.initializer_range
    shapes = {"vision_head.weight": (config.hidden_size, config.hidden_size),
              "image_prefill_embeds.weight": (config.num_output_tokens, config.hidden_size)}
    return {name: torch.randn(shapes[name], generator=generator) * std for name in sorted(names)}


def weight_index(folder: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Every tensor of the folder's safetensors weights: key (5.x name) -> (file name, shape).

    Raises:
        ValueError: not a folder, no weights, an index naming a missing shard, or an unreadable file.
    """
    from safetensors import safe_open

    if not folder.is_dir():
        raise ValueError(f"{folder}: not a directory")
    if (folder / INDEX_FILE).is_file():
        try:
            files = sorted(set(json.loads((folder / INDEX_FILE).read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, AttributeError) as err:
            raise ValueError(f"{folder / INDEX_FILE}: not a safetensors index ({err})") from err
    elif (folder / WEIGHTS_FILE).is_file():
        files = [WEIGHTS_FILE]
    else:
        pickles = sorted(p.name for p in folder.glob("*.bin"))
        hint = f" (found {pickles}: only safetensors are read, pickles are never executed)" if pickles else ""
        raise ValueError(f"{folder}: no {WEIGHTS_FILE} or {INDEX_FILE}{hint}")
    keys = {}
    for name in files:
        if not (folder / name).is_file():
            raise ValueError(f"{folder / INDEX_FILE}: names shard {name}, which is missing")
        try:
            with safe_open(str(folder / name), framework="pt") as f:
                for key in f.keys():
                    keys[normalize_key(key)] = (name, tuple(f.get_slice(key).get_shape()))
        except Exception as err:  # safetensors raises its own error types for corrupt headers
            raise ValueError(f"{folder / name}: unreadable safetensors file ({err})") from err
    return keys


def normalize_key(key: str) -> str:
    """A checkpoint key in transformers 5.x naming (4.x `model.layers.*` / `visual.*` are mapped)."""
    for pattern, replacement in _LEGACY_RENAMES:
        key = pattern.sub(replacement, key)
    return key


def official_key(key: str) -> str:
    """The inverse of `normalize_key`: a 5.x key under the transformers-4.49 name the official folders use
    (`model.language_model.X` -> `model.X`, `model.visual.X` -> `visual.X`; others unchanged)."""
    if key.startswith("model.language_model."):
        return "model." + key.removeprefix("model.language_model.")
    if key.startswith("model.visual."):
        return key.removeprefix("model.")
    return key


def read_ar_config(folder: Path, keys: dict | None = None, stock: bool = False) -> ARConfig:
    """The ARConfig of a folder: `nexusgen_ar.json` + `config.json` (ours) or inferred (official; with
    `stock`, a stock Qwen2.5-VL-Instruct folder gets upstream's 81-token output).

    Raises:
        ValueError: missing or invalid config.json, wrong model_type, or a prefill table whose row count
            is not a square number (the output grid cannot be inferred).
    """
    raw = read_json_object(folder / CONFIG_FILE)
    if raw.get("model_type") != "qwen2_5_vl":
        raise ValueError(f"{folder / CONFIG_FILE}: key 'model_type' is {raw.get('model_type')!r}, expected "
                         "'qwen2_5_vl' (not a Qwen2.5-VL / Nexus-Gen checkpoint)")
    # Bookkeeping keys of transformers, not model structure (dtype is chosen at load time).
    ignored = ("transformers_version", "architectures", "_name_or_path", "auto_map", "torch_dtype", "dtype")
    qwen = {k: v for k, v in raw.items() if k not in ignored}
    try:
        if (folder / AR_CONFIG_FILE).is_file():
            fields = read_json_object(folder / AR_CONFIG_FILE)
            if fields.pop("format_version", None) != FORMAT_VERSION:
                raise ValueError(f"{folder / AR_CONFIG_FILE}: key 'format_version' must be {FORMAT_VERSION}")
            try:
                fields = without_removed_fields(fields)
            except ValueError as err:
                raise ValueError(f"{folder / AR_CONFIG_FILE}: {err}") from None
            return ARConfig.from_dict({**fields, "qwen": qwen})
        return _official_config(folder, qwen, keys if keys is not None else weight_index(folder), stock)
    except ValueError as err:
        if str(folder) in str(err):
            raise
        raise ValueError(f"{folder / CONFIG_FILE}: {err}") from err


def _official_config(folder: Path, qwen: dict, keys: dict, stock: bool = False) -> ARConfig:
    from transformers import Qwen2_5_VLConfig

    try:
        vision = Qwen2_5_VLConfig(**copy.deepcopy(qwen)).vision_config
    except (TypeError, ValueError) as err:
        raise ValueError(f"invalid Qwen2.5-VL config ({err})") from err
    token_px = vision.patch_size * vision.spatial_merge_size
    table = keys.get("image_prefill_embeds.weight")
    if "vision_head.weight" not in keys:  # neither Nexus-Gen tensor: a stock Qwen2.5-VL-Instruct folder
        if not stock:
            raise ValueError(f"{folder}: no vision_head.weight -- a stock Qwen2.5-VL-Instruct folder, not a "
                             f"Nexus-Gen model; build one with `nexusgen assemble --qwen {folder} --flux "
                             f"FLUX_DIR --out MODEL_DIR`")
        side = STOCK_OUTPUT_GRID_SIDE
        return ARConfig(qwen=qwen, num_output_tokens=side * side, output_image_px=(side * token_px,) * 2)
    if table is None:
        warnings.warn(f"{folder}: no image_prefill_embeds.weight -- a Nexus-Gen V1 checkpoint; every output "
                      "position is fed the <|image_pad|> embedding, as V1 did", UserWarning, stacklevel=3)
        side = V1_OUTPUT_GRID_SIDE
        return ARConfig(qwen=qwen, use_prefill_table=False, num_output_tokens=side * side,
                        output_image_px=(side * token_px,) * 2)
    n = table[1][0]
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"{folder / table[0]}: image_prefill_embeds.weight has {n} rows, not a square grid")
    return ARConfig(qwen=qwen, num_output_tokens=n, output_image_px=(side * token_px,) * 2)


def check_weights(folder: Path, config: ARConfig, keys: dict, new: set[str] | frozenset = frozenset()) -> None:
    """Compare the folder's tensors with the model built on the meta device (`new`: tensors the loader
    initialises itself, not expected in the folder).

    Raises:
        ValueError: naming the file and the key of the first missing, unexpected or mis-shaped tensor.
    """
    with torch.device("meta"):
        model = NexusGenARModel(config)
    expected = {k.removeprefix("vlm."): tuple(v.shape) for k, v in model.state_dict().items() if k not in new}
    if config.qwen_config.tie_word_embeddings:
        expected.pop("lm_head.weight", None)  # tied to the token embeddings; usually not stored
        keys = {k: v for k, v in keys.items() if k != "lm_head.weight"}
    where = INDEX_FILE if (folder / INDEX_FILE).is_file() else WEIGHTS_FILE
    missing = sorted(set(expected) - set(keys))
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ValueError(f"{folder / where}: missing tensor {missing[0]!r}{more}, "
                         f"shape {expected[missing[0]]}")
    unexpected = sorted(set(keys) - set(expected))
    if unexpected:
        file, _ = keys[unexpected[0]]
        raise ValueError(f"{folder / file}: unexpected tensor {unexpected[0]!r} for this config")
    for key, shape in expected.items():
        file, found = keys[key]
        if found != shape:
            raise ValueError(f"{folder / file}: tensor {key!r} has shape {found}, the config needs {shape}")


def _load_image_processor(folder: Path, config: ARConfig):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    path = folder / PREPROCESSOR_FILE
    read_json_object(path)  # a clear error for a missing or corrupt file
    processor = Qwen2VLImageProcessorPil.from_pretrained(str(folder), local_files_only=True)
    vision = config.qwen_config.vision_config
    for key, want in (("patch_size", vision.patch_size), ("merge_size", vision.spatial_merge_size),
                      ("temporal_patch_size", vision.temporal_patch_size)):
        if int(getattr(processor, key)) != int(want):
            raise ValueError(f"{path}: key {key!r} is {getattr(processor, key)}, "
                             f"the model config needs {want}")
    return processor


def save_autoregressive(folder: str | os.PathLike, model: NexusGenARModel, tokenizer,
                        image_processor) -> None:
    """Write a model folder that `load_autoregressive` (and stock transformers) can read.

    Tensors are written under transformers 5.x names plus `vision_head.weight` and
    `image_prefill_embeds.weight`, sharded above 5 GB. The folder is assembled under a temporary name and
    renamed into place, so a crash never leaves a half-written folder.
    """
    from huggingface_hub import save_torch_state_dict

    with atomic_folder(folder) as tmp:
        model.vlm.config.save_pretrained(str(tmp))
        fields = {k: v for k, v in model.config.to_dict().items() if k != "qwen"}
        write_json({"format_version": FORMAT_VERSION, **fields}, tmp / AR_CONFIG_FILE)
        state = {k.removeprefix("vlm."): v.detach().cpu() for k, v in model.state_dict().items()}
        save_torch_state_dict(state, str(tmp), max_shard_size="5GB")
        tokenizer.save_pretrained(str(tmp))
        image_processor.save_pretrained(str(tmp))


def build_autoregressive(config: ARConfig | str, tokenizer=None, seed: int | None = None):
    """A freshly initialised model (random weights) with a matching tokenizer and image processor.

    Args:
        config: an ARConfig or a preset name ("tiny", "mid", "nexus-gen-v2").
        tokenizer: default: `config.tokenizer` by name, else the byte-level tokenizer for small vocabularies
            and the real Qwen2.5 one otherwise.
        seed: torch seed for the initialisation.

    Returns:
        (NexusGenARModel, tokenizer, image processor).
    """
    config = ARConfig.from_preset(config) if isinstance(config, str) else config
    if tokenizer is None and config.tokenizer is not None:
        tokenizer = build_tokenizer(config.tokenizer)
    elif tokenizer is None:
        small = config.qwen_config.text_config.vocab_size < 1024
        tokenizer = build_byte_tokenizer() if small else build_qwen25_tokenizer()
    check_special_token_ids(tokenizer, config.qwen_config)
    if seed is not None:
        torch.manual_seed(seed)
    model = NexusGenARModel(config)
    return model, tokenizer, image_processor_for(config)


def image_processor_for(config: ARConfig):
    """The `Qwen2VLImageProcessorPil` matching a config's patch geometry and input pixel bounds."""
    vision = config.qwen_config.vision_config
    return build_image_processor(patch_size=vision.patch_size, merge_size=vision.spatial_merge_size,
                                 temporal_patch_size=vision.temporal_patch_size,
                                 min_pixels=config.min_input_pixels, max_pixels=config.max_input_pixels)


def _resolve_dtype(dtype, device: torch.device) -> torch.dtype:
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, str):
        if dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype!r}")
        return getattr(torch, dtype)
    return dtype

