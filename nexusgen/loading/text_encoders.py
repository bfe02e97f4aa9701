"""FLUX's text encoders, run once to store what the decoders need: CLIP's pooled vector and T5's embedding of
the negative prompt (upstream's negative CFG branch is the ordinary FLUX text path).

Both are computed the way diffusers' `FluxPipeline` encodes a prompt: CLIP-L (`text_encoder/` +
`tokenizer/`) on the prompt padded to 77 tokens, its `pooler_output`; T5-XXL (`text_encoder_2/` +
`tokenizer_2/`) on the prompt padded to 512 tokens without an attention mask, its last hidden state.

T5-XXL is 9.5 GB in bf16 (19 GB in fp32): `t5_prompt_embeds` never holds it. The model is built with its
parameters on the meta device; the embedding table and the final norm are assigned from the memory-mapped
file, and each encoder block gets its weights just before it runs and gives them back right after (forward
hooks), so memory holds one block (~0.8 GB in fp32) at a time.

Shape legend: S sequence length (77 / 512), C T5 width (4096), P CLIP width (768).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from nexusgen.loading.weights import folder_index, read_folder_weights, read_indexed
from nexusgen.models.placement import meta_parameters

CLIP_L_TEXT = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                   num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                   projection_dim=768, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
"""FLUX.1-dev's text_encoder (openai/clip-vit-large-patch14), used when its folder has no config.json."""
T5_MAX_LENGTH = 512
"""FLUX.1-dev's T5 sequence length (`max_sequence_length` of FluxPipeline)."""


def _single_file(folder: Path) -> dict[str, torch.Tensor]:
    if (folder / "model.safetensors").is_file() or (folder / "model.safetensors.index.json").is_file():
        return read_folder_weights(folder, stem="model")
    raise ValueError(f"{folder}: no model.safetensors (or its index)")


@torch.no_grad()
def clip_pooled(text_encoder_dir: str | os.PathLike, tokenizer_dir: str | os.PathLike | None = None,
                prompt: str = "") -> torch.Tensor:
    """CLIP's pooled embedding of `prompt` (FLUX's pooled vector): (P,) float32.

    Without `tokenizer_dir` only "" can be encoded: BOS, then EOS repeated (FLUX pads with <|endoftext|>),
    BOS and EOS being the vocabulary's last two ids.

    Raises:
        ValueError: an unreadable encoder or tokenizer, or a non-empty prompt without a tokenizer.
    """
    from transformers import CLIPTextConfig, CLIPTextModel

    folder = Path(text_encoder_dir)
    try:
        config = (CLIPTextConfig.from_pretrained(str(folder), local_files_only=True)
                  if (folder / "config.json").is_file() else CLIPTextConfig(**CLIP_L_TEXT))
        with meta_parameters():
            model = CLIPTextModel(config)
        state = _single_file(folder)
        state.pop("text_model.embeddings.position_ids", None)  # a buffer some exports include
        model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True, assign=True)
    except (OSError, RuntimeError, TypeError) as err:
        raise ValueError(f"{folder}: cannot load the CLIP text encoder ({err})") from err
    length = config.max_position_embeddings
    if tokenizer_dir is not None and Path(tokenizer_dir).is_dir():
        input_ids = _tokenize("clip", tokenizer_dir, prompt, length)
    elif prompt:
        raise ValueError(f"encoding the prompt {prompt!r} needs the CLIP tokenizer folder (tokenizer/)")
    else:
        input_ids = torch.tensor([[config.vocab_size - 2] + [config.vocab_size - 1] * (length - 1)])
    return model.eval()(input_ids=input_ids).pooler_output[0].float()


def _tokenize(kind: str, folder: str | os.PathLike, prompt: str, length: int) -> torch.Tensor:
    from transformers import CLIPTokenizer, T5Tokenizer

    cls = CLIPTokenizer if kind == "clip" else T5Tokenizer
    try:
        tokenizer = cls.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, TypeError) as err:
        raise ValueError(f"{folder}: cannot load the {kind.upper()} tokenizer ({err})") from err
    return tokenizer(prompt, padding="max_length", max_length=length, truncation=True,
                     return_tensors="pt").input_ids


@torch.no_grad()
def t5_prompt_embeds(text_encoder_dir: str | os.PathLike, tokenizer_dir: str | os.PathLike, prompt: str = "",
                     max_length: int = T5_MAX_LENGTH, device: torch.device | str = "cpu",
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """T5's embedding of `prompt`, one encoder block in memory at a time: (1, S, C) float32 on the CPU.

    Args:
        text_encoder_dir: FLUX's `text_encoder_2/` (transformers T5EncoderModel, sharded safetensors).
        tokenizer_dir: FLUX's `tokenizer_2/`.
        prompt: the negative prompt ("" upstream).
        max_length: S (512 for FLUX.1-dev).
        device, dtype: where and in which dtype the encoder runs (bf16 on a GPU, fp32 on a CPU).

    Raises:
        ValueError: unreadable or inconsistent files.
    """
    from transformers import T5Config, T5EncoderModel

    folder = Path(text_encoder_dir)
    try:
        config = T5Config.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as err:
        raise ValueError(f"{folder}: cannot read the T5 config ({err})") from err
    with meta_parameters():
        model = T5EncoderModel(config).eval()
    index = folder_index(folder, stem="model")
    for a, b in (("shared.weight", "encoder.embed_tokens.weight"), ("encoder.embed_tokens.weight", "shared.weight")):
        if a in index and b not in index:
            index[b] = index[a]  # tied: stored once
    input_ids = _tokenize("t5", tokenizer_dir, prompt, max_length).to(device)
    blocks = [(f"encoder.block.{i}.", block) for i, block in enumerate(model.encoder.block)]
    with streamed_blocks(model, index, blocks, device, dtype, str(folder)):
        hidden = model(input_ids=input_ids).last_hidden_state
    return hidden.float().cpu()


def negative_branch(t5_dir: str | os.PathLike, t5_tokenizer: str | os.PathLike, clip_dir: str | os.PathLike,
                    clip_tokenizer: str | os.PathLike | None, prompt: str = "",
                    device: torch.device | str | None = None, max_length: int = T5_MAX_LENGTH,
                    pooled: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Upstream's negative CFG branch, computed once: {"prompt_embeds": T5(prompt) (1, S, C), "pooled":
    CLIP(prompt) (1, P)}, float32 on the CPU. T5 runs on `device` (default cuda if available), bf16 on cuda,
    fp32 on cpu, one block at a time. `pooled`: CLIP(prompt) (P,) when the caller has it already."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    embeds = t5_prompt_embeds(t5_dir, t5_tokenizer, prompt, max_length, device, dtype)
    if pooled is None:
        pooled = clip_pooled(clip_dir, clip_tokenizer, prompt)
    return {"prompt_embeds": embeds, "pooled": pooled[None]}


def _release(module: nn.Module, args, output) -> None:
    """Forward hook: the block's weights go back to the meta device (memory freed); output unchanged."""
    module.to("meta")


class streamed_blocks:  # noqa: N801 (a context manager used like a function)
    """Within the block, `blocks` of `model` hold their weights only while they run.

    Each block's tensors are read from their files (memory-mapped) only when it runs, and dropped with its
    weights, so neither its weights nor the file pages behind them stay in memory once it has run.

    Args:
        model: built under `meta_parameters`.
        index: its state dict as a `folder_index` (key -> file, stored key, shape).
        blocks: (state-dict prefix, module) of the modules to stream.
        device, dtype: where and in which dtype weights are materialised.
        source: file name for errors.

    Raises:
        ValueError: a tensor of the model missing from `tensors`, or an unexpected one.
    """

    def __init__(self, model: nn.Module, index: dict, blocks: list[tuple[str, nn.Module]], device,
                 dtype: torch.dtype, source: str):
        from nexusgen.loading.weights import check_state

        check_state(model, {k: shape for k, (_, _, shape) in index.items()}, source)
        self.device, self.dtype, self.handles, self.index = torch.device(device), dtype, [], index
        prefixes = tuple(prefix for prefix, _ in blocks)
        rest = read_indexed(index, [k for k in index if not k.startswith(prefixes)])
        model.load_state_dict({k: self._cast(v) for k, v in rest.items()}, strict=False, assign=True)
        for prefix, block in blocks:
            own = [k for k in index if k.startswith(prefix)]
            self.handles.append(block.register_forward_pre_hook(self._loader(prefix, own)))
            self.handles.append(block.register_forward_hook(_release))
        for buffer in model.buffers():  # real buffers (e.g. position ids) join the device
            buffer.data = buffer.data.to(self.device)

    def _cast(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(self.device, self.dtype) if tensor.is_floating_point() else tensor.to(self.device)

    def _loader(self, prefix: str, keys: list[str]):
        def hook(module, args):
            tensors = read_indexed(self.index, keys)
            module.load_state_dict({k[len(prefix):]: self._cast(v) for k, v in tensors.items()}, strict=True,
                                   assign=True)
        return hook

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()
        return False
