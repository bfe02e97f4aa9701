"""Key maps from upstream checkpoints to diffusers names (used by `nexusgen convert` and by the tests).

Two maps, each with its inverse so that tests can build upstream-layout checkpoints from our modules:

* **DiffSynth 1.x FluxDiT -> diffusers FluxTransformer2DModel** (docs/upstream.md §5.4). DiffSynth fuses projections:
  a double block's ``attn.a_to_qkv`` is [q; k; v] (3 x width rows), a single block's ``to_qkv_mlp`` is
  [q; k; v; mlp] (width, width, width, 4 width). The final norm is copied as is: DiffSynth and diffusers
  both order its output halves (scale, shift); only BFL's original checkpoints use (shift, scale).
  The table is the exact inverse of DiffSynth's own ``FluxDiTStateDictConverter.from_diffusers``
  (stream ``a`` = image tokens = diffusers' ``to_q``..., stream ``b`` = context = ``add_q_proj``...;
  both order the joint sequence [context ; image]).
* **BFL original VAE (``ae.safetensors``, LDM naming) -> diffusers AutoencoderKL.** The decoder's ``up``
  blocks are numbered in reverse (``up.{n-1-i}`` is diffusers' ``up_blocks.{i}``); attention projections
  are 1x1 convolutions there and Linear layers in diffusers (the converter reshapes them).

Every function raises ValueError for a key it does not know, so a renamed or foreign checkpoint can never
load silently.
"""

from __future__ import annotations

import re

import torch

# ---------------------------------------------------------------------------------------------------------
# FLUX DiT: DiffSynth 1.x names <-> diffusers names
# ---------------------------------------------------------------------------------------------------------

_DIT_TOP = {
    "x_embedder": "x_embedder",
    "context_embedder": "context_embedder",
    "time_embedder.timestep_embedder.0": "time_text_embed.timestep_embedder.linear_1",
    "time_embedder.timestep_embedder.2": "time_text_embed.timestep_embedder.linear_2",
    "guidance_embedder.timestep_embedder.0": "time_text_embed.guidance_embedder.linear_1",
    "guidance_embedder.timestep_embedder.2": "time_text_embed.guidance_embedder.linear_2",
    "pooled_text_embedder.0": "time_text_embed.text_embedder.linear_1",
    "pooled_text_embedder.2": "time_text_embed.text_embedder.linear_2",
    "final_norm_out.linear": "norm_out.linear",  # (scale, shift) in both: copied as is (docs/upstream.md §10)
    "final_proj_out": "proj_out",
}

# Per double block (DiffSynth `blocks.N.` -> diffusers `transformer_blocks.N.`). A tuple target is a
# fused tensor split along dim 0 into equal parts, in that order.
_DIT_DOUBLE = {
    "norm1_a.linear": "norm1.linear",
    "norm1_b.linear": "norm1_context.linear",
    "attn.a_to_qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "attn.b_to_qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "attn.a_to_out": "attn.to_out.0",
    "attn.b_to_out": "attn.to_add_out",
    "attn.norm_q_a": "attn.norm_q",
    "attn.norm_k_a": "attn.norm_k",
    "attn.norm_q_b": "attn.norm_added_q",
    "attn.norm_k_b": "attn.norm_added_k",
    "ff_a.0": "ff.net.0.proj",
    "ff_a.2": "ff.net.2",
    "ff_b.0": "ff_context.net.0.proj",
    "ff_b.2": "ff_context.net.2",
}

# Per single block (`single_blocks.M.` -> `single_transformer_blocks.M.`). to_qkv_mlp splits 1:1:1:4.
_DIT_SINGLE = {
    "to_qkv_mlp": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"),
    "norm_q_a": "attn.norm_q",
    "norm_k_a": "attn.norm_k",
    "norm.linear": "norm.linear",
    "proj_out": "proj_out",
}

_PARAM = re.compile(r"^(?P<module>.+)\.(?P<param>weight|bias)$")
_BLOCK = re.compile(r"^(?P<kind>blocks|single_blocks)\.(?P<index>\d+)\.(?P<rest>.+)$")


def _split(tensor: torch.Tensor, parts: int, key: str) -> list[torch.Tensor]:
    if parts == 3:
        sizes = [tensor.shape[0] // 3] * 3
    else:  # q, k, v, mlp = 1 : 1 : 1 : 4 of the block width
        width = tensor.shape[0] // 7
        sizes = [width, width, width, 4 * width]
    if sum(sizes) != tensor.shape[0]:
        raise ValueError(f"fused tensor {key!r} has {tensor.shape[0]} rows, not divisible as {parts} parts")
    return list(torch.split(tensor, sizes, dim=0))


def dit_key_to_diffusers(key: str, tensor: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """Convert one DiffSynth FluxDiT tensor (name without ``pipe.dit.``) to diffusers tensors.

    Args:
        key: e.g. ``blocks.3.attn.a_to_qkv.weight``.
        tensor: its value (may be memory-mapped; split parts are views).

    Returns:
        [(diffusers key, tensor)], three or four entries for fused projections.

    Raises:
        ValueError: unknown key.
    """
    match = _PARAM.match(key)
    if match is None:
        raise ValueError(f"unknown DiT tensor {key!r} (not a weight or bias)")
    module, param = match["module"], match["param"]
    block = _BLOCK.match(module)
    if block is None:
        table, prefix, name = _DIT_TOP, "", module
    elif block["kind"] == "blocks":
        table, prefix, name = _DIT_DOUBLE, f"transformer_blocks.{block['index']}.", block["rest"]
    else:
        table, prefix, name = _DIT_SINGLE, f"single_transformer_blocks.{block['index']}.", block["rest"]
    if name not in table:
        raise ValueError(f"unknown DiT tensor {key!r}")
    target = table[name]
    if isinstance(target, str):
        return [(f"{prefix}{target}.{param}", tensor)]
    return [(f"{prefix}{t}.{param}", part) for t, part in zip(target, _split(tensor, len(target), key))]


def _reverse(table: dict) -> dict[str, tuple[str, int, int]]:
    """diffusers module -> (DiffSynth module, part index, number of parts)."""
    reverse = {}
    for source, target in table.items():
        targets = (target,) if isinstance(target, str) else target
        for index, name in enumerate(targets):
            reverse[name] = (source, index, len(targets))
    return reverse


_DIT_REVERSE = {"": ("", _reverse(_DIT_TOP)), "transformer_blocks": ("blocks", _reverse(_DIT_DOUBLE)),
                "single_transformer_blocks": ("single_blocks", _reverse(_DIT_SINGLE))}
_DIFFUSERS_BLOCK = re.compile(r"^(?P<kind>transformer_blocks|single_transformer_blocks)\.(?P<index>\d+)\."
                              r"(?P<rest>.+)$")


def dit_state_dict_to_diffsynth(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse map: a diffusers FluxTransformer2DModel state dict in DiffSynth 1.x layout (fused).

    Raises:
        ValueError: a key with no DiffSynth name, or a fused tensor with a missing part.
    """
    parts: dict[str, dict[int, torch.Tensor]] = {}
    counts: dict[str, int] = {}
    for key, tensor in state_dict.items():
        match = _PARAM.match(key)
        block = _DIFFUSERS_BLOCK.match(match["module"]) if match else None
        kind, name = (block["kind"], block["rest"]) if block else ("", match["module"] if match else key)
        source_prefix, reverse = _DIT_REVERSE[kind]
        if match is None or name not in reverse:
            raise ValueError(f"no DiffSynth name for diffusers tensor {key!r}")
        source, index, count = reverse[name]
        prefix = f"{source_prefix}.{block['index']}." if block else ""
        fused = f"{prefix}{source}.{match['param']}"
        parts.setdefault(fused, {})[index] = tensor
        counts[fused] = count
    incomplete = [k for k, v in parts.items() if len(v) != counts[k]]
    if incomplete:
        raise ValueError(f"fused tensor {incomplete[0]!r} is missing parts")
    return {k: torch.cat([v[i] for i in sorted(v)]) for k, v in parts.items()}


# ---------------------------------------------------------------------------------------------------------
# VAE: BFL / LDM names <-> diffusers AutoencoderKL names
# ---------------------------------------------------------------------------------------------------------

_VAE_FIXED = {
    "conv_in": "conv_in", "conv_out": "conv_out", "norm_out": "conv_norm_out",
    "mid.block_1": "mid_block.resnets.0", "mid.block_2": "mid_block.resnets.1",
    "mid.attn_1.norm": "mid_block.attentions.0.group_norm", "mid.attn_1.q": "mid_block.attentions.0.to_q",
    "mid.attn_1.k": "mid_block.attentions.0.to_k", "mid.attn_1.v": "mid_block.attentions.0.to_v",
    "mid.attn_1.proj_out": "mid_block.attentions.0.to_out.0",
}
_VAE_TOP = {"quant_conv": "quant_conv", "post_quant_conv": "post_quant_conv"}
_RESNET_PARTS = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2",
                 "nin_shortcut": "conv_shortcut"}
_VAE_BLOCK = re.compile(r"^(?P<side>down|up)\.(?P<level>\d+)\.(?:block\.(?P<block>\d+)\.(?P<part>\w+)|"
                        r"(?P<sample>downsample|upsample)\.conv)$")


def _vae_module(side: str, module: str, num_levels: int) -> str | None:
    """diffusers module path inside encoder/decoder for a BFL module path, or None if unknown."""
    for source, target in _VAE_FIXED.items():
        if module == source or module.startswith(source + "."):
            return target + module[len(source):]
    match = _VAE_BLOCK.match(module)
    if match is None or match["side"] != ("down" if side == "encoder" else "up"):
        return None
    level = int(match["level"])
    if side == "decoder":
        level = num_levels - 1 - level  # BFL numbers the decoder's up path from the lowest resolution
    blocks = "down_blocks" if side == "encoder" else "up_blocks"
    if match["sample"] is not None:
        sampler = "downsamplers" if side == "encoder" else "upsamplers"
        return f"{blocks}.{level}.{sampler}.0.conv"
    if match["part"] not in _RESNET_PARTS:
        return None
    return f"{blocks}.{level}.resnets.{match['block']}.{_RESNET_PARTS[match['part']]}"


def vae_key_to_diffusers(key: str, num_levels: int) -> str:
    """diffusers AutoencoderKL key of a BFL ``ae.safetensors`` key.

    Args:
        key: e.g. ``decoder.up.0.block.2.conv1.weight``.
        num_levels: number of resolutions (4 for FLUX).

    Raises:
        ValueError: unknown key.
    """
    match = _PARAM.match(key)
    if match is None:
        raise ValueError(f"unknown VAE tensor {key!r}")
    side, _, module = match["module"].partition(".")
    if side in ("encoder", "decoder"):
        target = _vae_module(side, module, num_levels)
        if target is not None:
            return f"{side}.{target}.{match['param']}"
    elif match["module"] in _VAE_TOP:
        return f"{_VAE_TOP[match['module']]}.{match['param']}"
    raise ValueError(f"unknown VAE tensor {key!r}")


_VAE_FIXED_REVERSE = {target: source for source, target in _VAE_FIXED.items()}
_RESNET_REVERSE = {target: source for source, target in _RESNET_PARTS.items()}
_DIFFUSERS_VAE_BLOCK = re.compile(r"^(?P<blocks>down_blocks|up_blocks)\.(?P<level>\d+)\."
                                  r"(?:resnets\.(?P<block>\d+)\.(?P<part>\w+)|(?:downsamplers|upsamplers)\.0\.conv)$")


def vae_key_to_bfl(key: str, num_levels: int) -> str:
    """Inverse of `vae_key_to_diffusers`. Raises ValueError for an unknown key."""
    match = _PARAM.match(key)
    side, _, module = match["module"].partition(".") if match else ("", "", "")
    if match and match["module"] in _VAE_TOP:
        return key
    source = None
    for target, name in _VAE_FIXED_REVERSE.items():
        if module == target or module.startswith(target + "."):
            source = name + module[len(target):]
    block = _DIFFUSERS_VAE_BLOCK.match(module)
    if source is None and block is not None:
        level = int(block["level"])
        if side == "decoder":
            level = num_levels - 1 - level
        bfl_side = "down" if block["blocks"] == "down_blocks" else "up"
        if block["part"] is None:
            source = f"{bfl_side}.{level}.{'downsample' if bfl_side == 'down' else 'upsample'}.conv"
        elif block["part"] in _RESNET_REVERSE:
            source = f"{bfl_side}.{level}.block.{block['block']}.{_RESNET_REVERSE[block['part']]}"
    if source is None or side not in ("encoder", "decoder"):
        raise ValueError(f"no BFL name for diffusers VAE tensor {key!r}")
    return f"{side}.{source}.{match['param']}"


def vae_state_dict_to_bfl(state_dict: dict[str, torch.Tensor], num_levels: int) -> dict[str, torch.Tensor]:
    """Inverse map: a diffusers AutoencoderKL state dict in BFL naming, attention weights as 1x1 convs."""
    out = {}
    for key, tensor in state_dict.items():
        name = vae_key_to_bfl(key, num_levels)
        if ".attn_1." in name and name.endswith(".weight") and ".norm." not in name:
            tensor = tensor[:, :, None, None]  # Linear -> 1x1 conv
        out[name] = tensor
    return out
