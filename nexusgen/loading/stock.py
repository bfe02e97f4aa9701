"""The paper's starting points as users download them: stock Qwen2.5-VL-Instruct and FLUX.1-dev folders.

Detection (`is_stock_qwen_folder`, `find_flux`), the configs a Nexus-Gen model built from them has
(`stock_decoder_config`), the AR part written as a folder of links (`write_autoregressive`), and the parts
themselves in memory (`stock_autoregressive`, `stock_decoder`, `flux_pooled`) --
what `nexusgen assemble` writes to a folder and what training from a stock parent starts from:

* AR: the Qwen2.5-VL-Instruct model (transformers layout; 4.49-style and 5.x tensor names both read),
  plus a new vision head and prefill table, initialised as upstream's `post_init` does: N(0, 0.02).
* decoders: FLUX.1-dev's `transformer/` (diffusers layout) as the DiT of both decoders; the generation
  adapter new (PyTorch's default init, as upstream); the editing merger new except its decoder layer, which
  is the Qwen LLM's layer 0 (upstream loads it from the first shard), and its RoPE is the LLM's M-RoPE.
* `vae/` as it is; the CLIP pooled vector of "" and the T5 embedding of the negative prompt
  (`nexusgen.loading.text_encoders`).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from nexusgen.files import save_tensors, write_json
from nexusgen.loading.autoregressive import (
    AR_CONFIG_FILE,
    FORMAT_VERSION,
    INDEX_FILE,
    WEIGHTS_FILE,
    load_autoregressive,
    load_autoregressive_config,
    new_head_tensors,
    new_keys,
    normalize_key,
    weight_index,
)
from nexusgen.loading.weights import finish, load_weights, read_folder_weights, read_safetensors
from nexusgen.models.connector import EmbeddingMerger, GenerationAdapter, MergerConfig, merger_projector
from nexusgen.models.decoder import DecoderConfig, EditingDecoder, GenerationDecoder
from nexusgen.models.memory import enable_fp8_storage
from nexusgen.models.placement import meta_parameters

LAYER0 = "model.language_model.layers.0."
"""The Qwen LLM's first decoder layer (5.x names), the editing merger's layer at the start."""
MERGER_EXPAND_RATIO = 4
"""Upstream's projector: RMSNorm -> Linear(D, 4C) -> RMSNorm -> SiLU -> Linear(4C, C) -> RMSNorm."""
HEADS_FILE = "model-nexusgen-heads.safetensors"
"""The new vision head and prefill table of an AR folder written from a stock one (`write_autoregressive`)."""
QWEN_FILES = ("config.json", "generation_config.json", "chat_template.json", "chat_template.jinja",
              "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "added_tokens.json",
              "special_tokens_map.json", "preprocessor_config.json")


# ----------------------------------------------------------------------------------------------------
# Detection
# ----------------------------------------------------------------------------------------------------
def _json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def is_qwen_folder(folder: str | os.PathLike) -> bool:
    """A Qwen2.5-VL folder (transformers layout): config.json with model_type "qwen2_5_vl"."""
    config = _json(Path(folder) / "config.json")
    return config is not None and config.get("model_type") == "qwen2_5_vl"


def is_stock_qwen_folder(folder: str | os.PathLike) -> bool:
    """A Qwen2.5-VL folder without Nexus-Gen's vision head (stock Qwen2.5-VL-Instruct)."""
    if not is_qwen_folder(folder):
        return False
    try:
        return "vision_head.weight" not in weight_index(Path(folder))
    except ValueError:
        return False


def is_diffusers_transformer_folder(folder: str | os.PathLike) -> bool:
    """A diffusers `FluxTransformer2DModel` folder (e.g. FLUX.1-dev's `transformer/`)."""
    config = _json(Path(folder) / "config.json")
    return config is not None and config.get("_class_name") == "FluxTransformer2DModel"


@dataclass
class FluxFolder:
    """The parts of a FLUX.1-dev download (diffusers layout); optional parts may be None."""

    transformer: Path
    vae: Path | None = None
    text_encoder: Path | None = None
    tokenizer: Path | None = None
    text_encoder_2: Path | None = None
    tokenizer_2: Path | None = None


def find_flux(folder: str | os.PathLike) -> FluxFolder:
    """The FLUX parts under `folder`: a FLUX.1-dev folder (`transformer/`, `vae/`, `text_encoder/`,
    `tokenizer/`, `text_encoder_2/`, `tokenizer_2/`), or a diffusers transformer folder alone.

    Raises:
        ValueError: no diffusers FluxTransformer2DModel folder found (the BFL single file
            `flux1-dev.safetensors` is not read: use the diffusers folders of the same download).
    """
    folder = Path(folder)
    if is_diffusers_transformer_folder(folder):
        return FluxFolder(transformer=folder)
    if not is_diffusers_transformer_folder(folder / "transformer"):
        single = " (flux1-dev.safetensors is there: nexusgen reads the diffusers folders of the same " \
                 "download, transformer/ and vae/)" if (folder / "flux1-dev.safetensors").is_file() else ""
        raise ValueError(f"{folder}: not a FLUX.1-dev folder: no transformer/config.json of a "
                         f"FluxTransformer2DModel{single}")

    def part(name: str) -> Path | None:
        return folder / name if (folder / name).is_dir() else None

    return FluxFolder(transformer=folder / "transformer", vae=part("vae"), text_encoder=part("text_encoder"),
                      tokenizer=part("tokenizer"), text_encoder_2=part("text_encoder_2"),
                      tokenizer_2=part("tokenizer_2"))


# ----------------------------------------------------------------------------------------------------
# Configs
# ----------------------------------------------------------------------------------------------------
def transformer_config(folder: str | os.PathLike) -> dict:
    """The diffusers config of a FLUX transformer folder."""
    config = _json(Path(folder) / "config.json")
    if config is None or config.get("_class_name") != "FluxTransformer2DModel":
        raise ValueError(f"{folder}/config.json: not a diffusers FluxTransformer2DModel config")
    return config


def merger_config(ar_config, context_dim: int) -> MergerConfig:
    """The editing merger of a model whose LLM is `ar_config`'s: its layer is shaped like the LLM's layers."""
    text = ar_config.qwen_config.text_config
    rope = text.rope_parameters or {}
    return MergerConfig(embed_dim=text.hidden_size, context_dim=context_dim,
                        num_attention_heads=text.num_attention_heads, num_key_value_heads=text.num_key_value_heads,
                        intermediate_size=text.intermediate_size, expand_ratio=MERGER_EXPAND_RATIO,
                        rope_theta=float(rope.get("rope_theta", 1e6)),
                        mrope_section=tuple(rope.get("mrope_section", (16, 24, 24))), rms_norm_eps=text.rms_norm_eps)


def stock_decoder_config(ar_config, transformer: dict, editing: bool) -> DecoderConfig:
    """The `DecoderConfig` of a decoder whose DiT is the FLUX transformer with diffusers config `transformer`.

    Raises:
        ValueError: a DiT this project cannot condition (patch size other than 1, odd channels).
    """
    if transformer.get("patch_size", 1) != 1 or transformer["in_channels"] % 4:
        raise ValueError(f"unsupported FLUX transformer: patch_size {transformer.get('patch_size')}, "
                         f"in_channels {transformer['in_channels']} (need 1 and a multiple of 4)")
    context = int(transformer["joint_attention_dim"])
    return DecoderConfig(
        embed_dim=ar_config.hidden_size, context_dim=context, pooled_dim=int(transformer["pooled_projection_dim"]),
        num_layers=int(transformer["num_layers"]), num_single_layers=int(transformer["num_single_layers"]),
        num_attention_heads=int(transformer["num_attention_heads"]),
        attention_head_dim=int(transformer["attention_head_dim"]),
        axes_dims_rope=tuple(transformer.get("axes_dims_rope", (16, 56, 56))),
        latent_channels=int(transformer["in_channels"]) // 4,
        guidance_embeds=bool(transformer.get("guidance_embeds", True)),
        merger=merger_config(ar_config, context) if editing else None)


# ----------------------------------------------------------------------------------------------------
# New and reused connector weights
# ----------------------------------------------------------------------------------------------------
def new_adapter_state(config: DecoderConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """A newly initialised generation adapter (PyTorch's default init, as upstream), float32."""
    torch.manual_seed(seed)
    return {k: v.detach() for k, v in GenerationAdapter(config.embed_dim, config.context_dim).state_dict().items()}


def qwen_layer0(qwen_dir: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The Qwen LLM's layer 0 under the merger's names (`layers.0.*`), memory-mapped."""
    folder = Path(qwen_dir)
    keys = weight_index(folder)
    wanted = {k: file for k, (file, _) in keys.items() if k.startswith(LAYER0)}
    if not wanted:
        raise ValueError(f"{folder}: no tensors of the LLM's layer 0 ({LAYER0}*)")
    out = {}
    for file in sorted(set(wanted.values())):
        for raw, tensor in read_safetensors(folder / file).items():
            key = normalize_key(raw)
            if key in wanted:
                out["layers.0." + key[len(LAYER0):]] = tensor
    return out


def new_merger_state(config: MergerConfig, qwen_dir: str | os.PathLike, seed: int = 0) -> dict[str, torch.Tensor]:
    """The editing merger at the start of training: layer 0 of the Qwen LLM, a newly initialised projector.

    Raises:
        ValueError: the Qwen layer does not have the merger's shapes.
    """
    from nexusgen.loading.weights import check_state

    torch.manual_seed(seed)
    with meta_parameters():
        merger = EmbeddingMerger(config)
    fresh = {k: v.detach() for k, v in merger_projector(config).state_dict().items()}
    state = {**qwen_layer0(qwen_dir), **{f"projector.{k}": v for k, v in fresh.items()}}
    check_state(merger, {k: tuple(v.shape) for k, v in state.items()}, f"{qwen_dir} (layer 0)", "merger")
    return state


# ----------------------------------------------------------------------------------------------------
# The AR part written as a folder (linked, not copied)
# ----------------------------------------------------------------------------------------------------
def link_or_copy(source: Path, target: Path) -> None:
    """Hard-link `source` to `target` (checkpoints of many GB: no copy when possible), or copy it file to
    file (no Python buffer, metadata kept) where links fail."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


SAFETENSORS_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}


def storage_dtype(qwen_dir: Path, keys: dict) -> torch.dtype:
    """The dtype the Qwen weights are stored in (the new tensors are written in it too)."""
    from safetensors import safe_open

    file, _ = keys["model.language_model.norm.weight"]
    with safe_open(str(qwen_dir / file), framework="pt") as handle:
        stored = {handle.get_slice(k).get_dtype() for k in handle.keys()}
    found = [SAFETENSORS_DTYPES[d] for d in ("BF16", "F16", "F32") if d in stored]
    return found[0] if found else torch.float32


def write_autoregressive(qwen_dir: Path, target: Path, seed: int) -> tuple:
    """An AR folder at `target` from a stock Qwen2.5-VL-Instruct (or official) folder without a second copy:
    its files linked, the new heads (`stock_autoregressive`'s, in the stored dtype) in their own shard, a
    merged index, nexusgen_ar.json. What `nexusgen assemble` writes, and a training export from a stock parent.

    Returns:
        (ARConfig, the stored dtype, the names of the new tensors).
    """
    keys = weight_index(qwen_dir)
    config, _, _ = load_autoregressive_config(qwen_dir, new_heads=True, keys=keys)
    dtype = storage_dtype(qwen_dir, keys)
    target.mkdir(parents=True)
    for name in QWEN_FILES:
        if (qwen_dir / name).is_file():
            link_or_copy(qwen_dir / name, target / name)
    shards = sorted({file for file, _ in keys.values()})
    for name in shards:
        link_or_copy(qwen_dir / name, target / name)
    heads = {k: v.to(dtype) for k, v in new_head_tensors(config, new_keys(config, keys), seed).items()}
    weight_map = {}
    if (qwen_dir / INDEX_FILE).is_file():
        weight_map = dict(json.loads((qwen_dir / INDEX_FILE).read_text())["weight_map"])
    else:
        from safetensors import safe_open

        with safe_open(str(qwen_dir / WEIGHTS_FILE), framework="pt") as handle:
            weight_map = {k: WEIGHTS_FILE for k in handle.keys()}
    if heads:
        save_tensors(heads, target / HEADS_FILE)
        weight_map.update({k: HEADS_FILE for k in heads})
    total = sum((qwen_dir / n).stat().st_size for n in shards) + sum(v.numel() * v.element_size()
                                                                     for v in heads.values())
    write_json({"metadata": {"total_size": total}, "weight_map": weight_map}, target / INDEX_FILE)
    fields = {k: v for k, v in config.to_dict().items() if k != "qwen"}
    write_json({"format_version": FORMAT_VERSION, **fields}, target / AR_CONFIG_FILE)
    return config, dtype, sorted(heads)


# ----------------------------------------------------------------------------------------------------
# Parts in memory (training from stock parents)
# ----------------------------------------------------------------------------------------------------
def stock_autoregressive(qwen_dir: str | os.PathLike, device=None, dtype=None, seed: int = 0):
    """(NexusGenARModel, tokenizer, image processor) from a stock Qwen2.5-VL-Instruct folder, with a new
    vision head and prefill table (81 output tokens)."""
    return load_autoregressive(qwen_dir, device, dtype, new_heads=True, seed=seed)


def flux_pooled(flux_dir: str | os.PathLike) -> torch.Tensor | None:
    """CLIP's pooled vector of "" -- what upstream feeds the DiT -- from a FLUX.1-dev folder (or its
    `transformer/`, reading `text_encoder/` and `tokenizer/` beside it): (P,) float32; None where there is no
    text encoder (a bare transformer folder)."""
    from nexusgen.loading.text_encoders import clip_pooled

    folder = Path(flux_dir)
    flux = find_flux(folder)
    if flux.text_encoder is None and folder.name == "transformer" and (folder.parent / "text_encoder").is_dir():
        flux = find_flux(folder.parent)
    return clip_pooled(flux.text_encoder, flux.tokenizer, "") if flux.text_encoder is not None else None


def stock_decoder(flux_dir: str | os.PathLike, qwen_dir: str | os.PathLike, editing: bool, device=None,
                  dtype: torch.dtype | None = None, fp8: bool = False, seed: int = 0,
                  pooled: torch.Tensor | None = None):
    """A generation (or editing) decoder at the start of training: FLUX.1-dev's DiT (memory-mapped where
    the stored dtype is `dtype`) with a new adapter (or a merger starting from Qwen's layer 0).

    Args:
        flux_dir: a FLUX.1-dev folder or its `transformer/`.
        qwen_dir: the AR model's folder, whose widths the connector takes and whose LLM layer 0 starts the
            merger: the stock Qwen2.5-VL-Instruct folder (upstream), an official Nexus-GenV2 folder or a
            nexusgen `autoregressive/`.
        editing: build the editing decoder instead of the generation decoder.
        device, dtype, fp8: as `nexusgen.loading.decoders.load_generation_decoder`.
        seed: torch seed of the new weights.
        pooled: (P,) the stored pooled vector (`flux_pooled`); None leaves zeros.
    """
    from nexusgen.loading.autoregressive import read_ar_config

    flux = find_flux(flux_dir)
    ar_config = read_ar_config(Path(qwen_dir), stock=True)
    transformer = transformer_config(flux.transformer)
    config = stock_decoder_config(ar_config, transformer, editing)
    from diffusers import FluxTransformer2DModel

    with meta_parameters():
        dit = FluxTransformer2DModel.from_config(transformer)
        decoder = (EditingDecoder if editing else GenerationDecoder)(config, transformer=dit)
    if editing:
        connector = {f"merger.{k}": v for k, v in new_merger_state(config.merger, qwen_dir, seed).items()}
    else:
        connector = {f"adapter.{k}": v for k, v in new_adapter_state(config, seed).items()}
    tensors = {**connector, **{f"transformer.{k}": v for k, v in read_folder_weights(flux.transformer).items()}}
    tensors["pooled_embeds"] = torch.zeros(config.pooled_dim) if pooled is None else pooled.float()
    load_weights(decoder, tensors, dtype, str(flux.transformer))
    if fp8:
        enable_fp8_storage(decoder.transformer)
    return finish(decoder, device)
