"""Random-weight folders in the stock layouts a user downloads, for tests and benchmarks of `assemble`.

`write_stock_folders(root, ...)` writes

* `root/Qwen2.5-VL-7B-Instruct/`: the transformers layout of Qwen2.5-VL-Instruct -- its flat 4.49-style
  `config.json`, `generation_config.json`, tokenizer files, `preprocessor_config.json`, and the weights in
  two safetensors shards with an index, under the pre-4.52 tensor names of the published shards
  (`model.layers.N.*`, `visual.*`, `lm_head.weight`), or the transformers 5.x names with `new_names`;
* `root/FLUX.1-dev/`: the diffusers layout of FLUX.1-dev -- `model_index.json`, `scheduler/`,
  `transformer/` (FluxTransformer2DModel, sharded), `vae/` (AutoencoderKL), `text_encoder/` (CLIPTextModel)
  with `tokenizer/` (vocab.json + merges.txt), `text_encoder_2/` (T5EncoderModel, sharded) with
  `tokenizer_2/`.

Widths are the real ones (Qwen2.5-VL-7B: hidden 3584, 28/4 heads, M-RoPE 16/24/24, vision 1280; FLUX DiT
3072 = 24 x 128, context 4096, pooled 768; T5-XXL 4096 with 64 heads; CLIP-L 768; the FLUX VAE), depth is
`blocks` layers of each transformer, vocabularies are small (a byte-level tokenizer). `intermediate` may
shrink the LLM's MLP (18944) where memory is short. Weights are random bf16, written as the real files are.

`size="tiny"` writes the same files at the widths of the `tiny` presets (`AR_PRESETS["tiny"]`,
`DECODER_PRESETS["tiny"]`, `VAE_PRESETS["tiny"]`; CLIP as wide as the pooled vector, T5 as the context):
stock folders that train in seconds on a CPU (`docs/training.md`, section 9).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from nexusgen.models.ar_presets import _BYTE_TOKENIZER_IDS
from nexusgen.models.placement import build_random

QWEN_DIR, FLUX_DIR = "Qwen2.5-VL-7B-Instruct", "FLUX.1-dev"
SIZES = ("real", "tiny")
BYTE_IDS = dict(bos_token_id=256, eos_token_id=258, **_BYTE_TOKENIZER_IDS)  # `build_byte_tokenizer`'s specials


def qwen_config(blocks: int, intermediate: int = 18944, vocab: int = 272) -> dict:
    """The flat (transformers 4.49) config.json of Qwen2.5-VL-7B-Instruct at `blocks` layers."""
    return {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl",
        "attention_dropout": 0.0, "hidden_act": "silu", "hidden_size": 3584, "initializer_range": 0.02,
        "intermediate_size": intermediate, "max_position_embeddings": 128000, "max_window_layers": 28,
        "num_attention_heads": 28, "num_hidden_layers": blocks, "num_key_value_heads": 4, "rms_norm_eps": 1e-6,
        "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]}, "rope_theta": 1000000.0,
        "sliding_window": 32768, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "transformers_version": "4.49.0", "use_cache": True, "use_sliding_window": False, "vocab_size": vocab,
        **BYTE_IDS,
        "vision_config": {"depth": blocks, "hidden_act": "silu", "hidden_size": 1280, "intermediate_size": 3420,
                          "num_heads": 16, "in_chans": 3, "out_hidden_size": 3584, "patch_size": 14,
                          "spatial_merge_size": 2, "spatial_patch_size": 14, "window_size": 112,
                          "fullatt_block_indexes": [blocks - 1], "tokens_per_second": 2, "temporal_patch_size": 2,
                          "model_type": "qwen2_5_vl"},
    }


def tiny_qwen_config(blocks: int = 2) -> dict:
    """`qwen_config` at the widths of `AR_PRESETS["tiny"]` (its flat 4.49 layout, `blocks` layers)."""
    from nexusgen.models.autoregressive import AR_PRESETS

    preset = AR_PRESETS["tiny"]["qwen"]
    text = {k: v for k, v in preset["text_config"].items() if k not in ("rope_parameters", "max_position_embeddings")}
    rope = preset["text_config"]["rope_parameters"]
    raw = qwen_config(blocks, text["intermediate_size"], text["vocab_size"])
    raw.update({**text, "num_hidden_layers": blocks, "rope_theta": rope["rope_theta"],
                "rope_scaling": {"type": "mrope", "mrope_section": list(rope["mrope_section"])},
                "tie_word_embeddings": preset["tie_word_embeddings"]})
    raw["vision_config"].update({**preset["vision_config"], "depth": blocks, "fullatt_block_indexes": [blocks - 1],
                                 "spatial_patch_size": preset["vision_config"]["patch_size"]})
    return raw


def _legacy_name(key: str) -> str:
    """transformers 5.x name -> the name in the published (pre-4.52) shards."""
    if key.startswith("model.language_model."):
        return "model." + key[len("model.language_model."):]
    if key.startswith("model.visual."):
        return key[len("model."):]
    return key


def _save_shards(state: dict[str, torch.Tensor], folder: Path, stem: str) -> None:
    """Two safetensors shards and an index, as transformers / diffusers write them."""
    from safetensors.torch import save_file

    names = sorted(state)
    half = (len(names) + 1) // 2
    shards = {f"{stem}-00001-of-00002.safetensors": names[:half], f"{stem}-00002-of-00002.safetensors": names[half:]}
    for file, keys in shards.items():
        save_file({k: state[k].contiguous() for k in keys}, str(folder / file), metadata={"format": "pt"})
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": {k: f for f, keys in shards.items() for k in keys}}
    (folder / f"{stem}.safetensors.index.json").write_text(json.dumps(index, indent=2))


def _random(build, seed: int) -> dict[str, torch.Tensor]:
    return build_random(build, "cpu", torch.bfloat16, seed).state_dict()


def write_qwen(folder: Path, blocks: int = 1, intermediate: int = 18944, new_names: bool = False,
               seed: int = 0, size: str = "real") -> Path:
    """A Qwen2.5-VL-Instruct folder (see the module docstring; `size="tiny"` ignores `intermediate`)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from nexusgen.processing.processor import build_image_processor
    from nexusgen.processing.tokenizers import build_byte_tokenizer

    folder.mkdir(parents=True)
    raw = tiny_qwen_config(blocks) if _size(size) == "tiny" else qwen_config(blocks, intermediate)
    patch = raw["vision_config"]["patch_size"]
    (folder / "config.json").write_text(json.dumps(raw, indent=2))
    (folder / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": 256, "eos_token_id": [258, 256], "pad_token_id": 256, "do_sample": True,
         "repetition_penalty": 1.05, "temperature": 0.1, "top_k": 1, "top_p": 0.001}))
    build_byte_tokenizer().save_pretrained(str(folder))
    build_image_processor(patch_size=patch, merge_size=2, min_pixels=16 * patch * patch,
                          max_pixels=65536 * patch * patch).save_pretrained(str(folder))
    config = Qwen2_5_VLConfig(**{k: v for k, v in raw.items() if k not in ("architectures", "torch_dtype",
                                                                             "transformers_version")})
    state = _random(lambda: Qwen2_5_VLForConditionalGeneration(config), seed)
    _save_shards({(k if new_names else _legacy_name(k)): v for k, v in state.items()}, folder, "model")
    return folder


def write_clip_tokenizer(folder: Path) -> int:
    """A minimal CLIP BPE (vocab.json + merges.txt, as FLUX's tokenizer/); returns its vocabulary size."""
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = {t: i for i, t in enumerate(letters + [f"{c}</w>" for c in letters])}
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "bos_token": "<|startoftext|>",
         "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}))
    return len(vocab)


def write_t5_tokenizer(folder: Path) -> int:
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(f"\u2581{w}", -2.0) for w in
                                                                 ("a", "the", "blurry", "ugly", "cat")]
    pieces += [(chr(c), -5.0) for c in range(ord("a"), ord("z") + 1)]
    tokenizer = T5Tokenizer(vocab=pieces, extra_ids=0)
    tokenizer.save_pretrained(str(folder))
    return len(tokenizer)


def _size(size: str) -> str:
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    return size


def _flux_widths(size: str, blocks: int) -> tuple[dict, dict, dict, dict]:
    """Constructor arguments of (the DiT, the VAE, CLIP, T5) at `size`."""
    if _size(size) == "tiny":
        from nexusgen.models.decoder import DECODER_PRESETS
        from nexusgen.models.vae import VAE_PRESETS

        decoder, vae = DECODER_PRESETS["tiny"], VAE_PRESETS["tiny"]
        dit = {**decoder.transformer_kwargs(), "num_layers": blocks, "num_single_layers": blocks}
        vae_kwargs = dict(block_out_channels=vae.block_out_channels, layers_per_block=vae.layers_per_block,
                          norm_num_groups=vae.norm_num_groups)
        clip = dict(hidden_size=decoder.pooled_dim, intermediate_size=4 * decoder.pooled_dim, num_attention_heads=2)
        t5 = dict(d_model=decoder.context_dim, d_kv=16, d_ff=2 * decoder.context_dim, num_heads=4)
        return dit, vae_kwargs, clip, t5
    dit = dict(patch_size=1, in_channels=64, num_layers=blocks, num_single_layers=blocks, attention_head_dim=128,
               num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
               axes_dims_rope=(16, 56, 56))
    vae_kwargs = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32)
    clip = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12)
    t5 = dict(d_model=4096, d_kv=64, d_ff=10240, num_heads=64)
    return dit, vae_kwargs, clip, t5


def write_flux(folder: Path, blocks: int = 1, seed: int = 0, size: str = "real") -> Path:
    """A FLUX.1-dev folder in diffusers layout (see the module docstring)."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    dit_kwargs, vae_widths, clip_widths, t5_widths = _flux_widths(size, blocks)

    folder.mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "FluxPipeline", "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"], "text_encoder_2": ["transformers", "T5EncoderModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "T5TokenizerFast"],
        "transformer": ["diffusers", "FluxTransformer2DModel"], "vae": ["diffusers", "AutoencoderKL"]}))
    (folder / "scheduler").mkdir()
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps({
        "_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0, "use_dynamic_shifting": True,
        "base_shift": 0.5, "max_shift": 1.15, "base_image_seq_len": 256, "max_image_seq_len": 4096}))
    dit = build_random(lambda: FluxTransformer2DModel(**dit_kwargs), "cpu", torch.bfloat16, seed)
    (folder / "transformer").mkdir()
    dit.save_config(folder / "transformer")
    _save_shards(dit.state_dict(), folder / "transformer", "diffusion_pytorch_model")
    del dit
    vae_kwargs = dict(in_channels=3, out_channels=3, latent_channels=16, down_block_types=("DownEncoderBlock2D",) * 4,
                      up_block_types=("UpDecoderBlock2D",) * 4, scaling_factor=0.3611, shift_factor=0.1159,
                      use_quant_conv=False, use_post_quant_conv=False, **vae_widths)
    vae = build_random(lambda: AutoencoderKL(**vae_kwargs), "cpu", torch.bfloat16, seed + 1)
    vae.save_pretrained(folder / "vae", safe_serialization=True)
    clip_vocab = write_clip_tokenizer(folder / "tokenizer")
    clip = CLIPTextConfig(vocab_size=clip_vocab, num_hidden_layers=blocks, max_position_embeddings=77,
                          hidden_act="quick_gelu", projection_dim=clip_widths["hidden_size"],
                          bos_token_id=clip_vocab - 2, eos_token_id=clip_vocab - 1, pad_token_id=clip_vocab - 1,
                          **clip_widths)
    _save_transformers(lambda: CLIPTextModel(clip), clip, folder / "text_encoder", seed + 2, sharded=False)
    t5_vocab = write_t5_tokenizer(folder / "tokenizer_2")
    t5 = T5Config(vocab_size=t5_vocab, num_layers=blocks, relative_attention_num_buckets=32,
                  relative_attention_max_distance=128, feed_forward_proj="gated-gelu", is_encoder_decoder=False,
                  use_cache=False, **t5_widths)
    _save_transformers(lambda: T5EncoderModel(t5), t5, folder / "text_encoder_2", seed + 3, sharded=True)
    return folder


def _save_transformers(build, config, folder: Path, seed: int, sharded: bool) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    config.save_pretrained(str(folder))
    state = _random(build, seed)
    state.pop("text_model.embeddings.position_ids", None)
    state = {k: v for k, v in state.items() if k != "encoder.embed_tokens.weight"}  # tied to shared.weight
    if sharded:
        _save_shards(state, folder, "model")
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"),
                  metadata={"format": "pt"})


def write_stock_folders(root: str | Path, blocks: int = 1, intermediate: int = 18944, new_names: bool = False,
                        seed: int = 0, size: str = "real") -> tuple[Path, Path]:
    """Write both folders under `root`; returns (qwen_dir, flux_dir)."""
    root = Path(root)
    qwen = write_qwen(root / QWEN_DIR, blocks, intermediate, new_names, seed, size)
    flux = write_flux(root / FLUX_DIR, blocks, seed + 10, size)
    return qwen, flux
