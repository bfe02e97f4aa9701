"""Connectors from the vision-embedding space (D) to the FLUX DiT's context space (C).

* `GenerationAdapter` (generation decoder, docs/upstream.md §3.2): a per-token MLP
  Linear(D, C) -> LayerNorm(C) -> ReLU -> Linear(C, C) -> LayerNorm(C). It is an ``nn.Sequential`` so its
  parameter names are upstream's (``0``, ``1``, ``3``, ``4``; index 2 is the ReLU) and the official
  ``adapter.*`` tensors load as they are. LayerNorm eps is PyTorch's default 1e-5, as upstream.
* `EmbeddingMerger` (editing decoder, docs/upstream.md §3.3): concatenates [target ; reference] embeddings, runs one
  bidirectional Qwen2.5 decoder layer with M-RoPE positions on a shared lattice, then a projector
  RMSNorm(D) -> Linear(D, eC) -> RMSNorm(eC) -> SiLU -> Linear(eC, C) -> RMSNorm(C). Parameter names are
  upstream's ``layers.0.*`` and ``projector.{0,1,2,4,5}.*``. The decoder layer and the rotary embedding are
  transformers' own Qwen2.5-VL classes, run without a mask and with ``is_causal = False``.

Lattice positions (any grid sizes): a token (r, c) of an h x w token grid gets the M-RoPE position
``(t, y, x) = (0, r * L / h, c * L / w)`` with L = 36 tokens (upstream's 72-patch base grid), so a 9x9
target steps by 4 and an 18x18 reference by 2, and both cover the same square. Positions may be fractional.

Shape legend: B batch, N target tokens, M reference tokens, D embedding width, C context width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLTextConfig
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
    Qwen2_5_VLDecoderLayer,
    Qwen2_5_VLRMSNorm,
    Qwen2_5_VLRotaryEmbedding,
)


class GenerationAdapter(nn.Sequential):
    """Per-token MLP from embedding width D to context width C (upstream key layout ``0, 1, 3, 4``).

    Args:
        embed_dim: D (3584 for Qwen2.5-VL-7B).
        context_dim: C (4096, FLUX's T5 width).

    Input (B, N, D) -> output (B, N, C).
    """

    def __init__(self, embed_dim: int, context_dim: int):
        if embed_dim < 1 or context_dim < 1:
            raise ValueError(f"embed_dim and context_dim must be positive, got {embed_dim}, {context_dim}")
        super().__init__(nn.Linear(embed_dim, context_dim), nn.LayerNorm(context_dim), nn.ReLU(),
                         nn.Linear(context_dim, context_dim), nn.LayerNorm(context_dim))


@dataclass
class MergerConfig:
    """The editing decoder's embedding merger (upstream: layer 0 of Qwen2.5-VL-7B + a 4x projector)."""

    embed_dim: int
    """D: width of the vision embeddings and of the decoder layer (3584)."""
    context_dim: int
    """C: output width, the DiT's context width (4096)."""
    num_attention_heads: int
    """Query heads of the decoder layer (28); head dim = embed_dim / heads."""
    num_key_value_heads: int
    """Key/value heads (4)."""
    intermediate_size: int
    """SwiGLU MLP width (18944)."""
    expand_ratio: int = 4
    """Projector hidden width = expand_ratio * context_dim."""
    rope_theta: float = 1e6
    """M-RoPE base, as the LLM."""
    mrope_section: tuple[int, int, int] = (16, 24, 24)
    """Rotary pairs given to (t, y, x); must sum to head_dim / 2."""
    rms_norm_eps: float = 1e-6
    """Epsilon of every RMSNorm in the merger."""
    lattice_size: int = 36
    """Side of the shared position lattice in merged tokens (upstream's base grid of 72 patches)."""

    def __post_init__(self):
        self.mrope_section = tuple(int(s) for s in self.mrope_section)
        if self.embed_dim % self.num_attention_heads:
            raise ValueError(f"embed_dim {self.embed_dim} not divisible by {self.num_attention_heads} heads")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"{self.num_attention_heads} heads not divisible by "
                             f"{self.num_key_value_heads} KV heads")
        head_dim = self.embed_dim // self.num_attention_heads
        if len(self.mrope_section) != 3 or 2 * sum(self.mrope_section) != head_dim:
            raise ValueError(f"mrope_section {self.mrope_section} must have 3 parts summing to head_dim/2 = "
                             f"{head_dim // 2}")

    def text_config(self) -> Qwen2_5_VLTextConfig:
        """The transformers config that builds the decoder layer and its rotary embedding."""
        config = Qwen2_5_VLTextConfig(
            hidden_size=self.embed_dim, intermediate_size=self.intermediate_size, num_hidden_layers=1,
            num_attention_heads=self.num_attention_heads, num_key_value_heads=self.num_key_value_heads,
            rms_norm_eps=self.rms_norm_eps, hidden_act="silu", use_sliding_window=False,
            attention_dropout=0.0, max_position_embeddings=4 * self.lattice_size,
            vocab_size=1, bos_token_id=None, eos_token_id=None, pad_token_id=None,  # no vocabulary here
            rope_parameters={"rope_type": "default", "rope_theta": self.rope_theta,
                             "mrope_section": list(self.mrope_section)})
        config._attn_implementation = "sdpa"
        return config


def merger_projector(config: MergerConfig) -> nn.Sequential:
    """RMSNorm(D) -> Linear(D, eC) -> RMSNorm(eC) -> SiLU -> Linear(eC, C) -> RMSNorm(C) (indices 0..5, 3 the
    SiLU, as upstream's `projector.*` keys)."""
    hidden, eps = config.expand_ratio * config.context_dim, config.rms_norm_eps
    return nn.Sequential(
        Qwen2_5_VLRMSNorm(config.embed_dim, eps=eps), nn.Linear(config.embed_dim, hidden),
        Qwen2_5_VLRMSNorm(hidden, eps=eps), nn.SiLU(), nn.Linear(hidden, config.context_dim),
        Qwen2_5_VLRMSNorm(config.context_dim, eps=eps))


def lattice_position_ids(grid: tuple[int, int], lattice_size: int = 36) -> torch.Tensor:
    """M-RoPE positions of an h x w token grid mapped onto the shared lattice (raster order).

    Args:
        grid: (h, w) in merged tokens, e.g. (9, 9) for a 252x252 image.
        lattice_size: L, the lattice side in tokens.

    Returns:
        (3, h * w) float32: rows (t, y, x) = (0, r * L / h, c * L / w).
    """
    h, w = (int(v) for v in grid)
    if h < 1 or w < 1:
        raise ValueError(f"grid must be positive (h, w), got {grid}")
    rows = torch.arange(h, dtype=torch.float64).repeat_interleave(w) * (lattice_size / h)  # (h*w,)
    cols = torch.arange(w, dtype=torch.float64).repeat(h) * (lattice_size / w)  # (h*w,)
    return torch.stack([torch.zeros_like(rows), rows, cols]).float()


class EmbeddingMerger(nn.Module):
    """Fuses predicted target embeddings with reference embeddings into DiT context tokens.

    Args:
        config: `MergerConfig`.
    """

    def __init__(self, config: MergerConfig):
        super().__init__()
        self.config = config
        text_config = config.text_config()
        layer = Qwen2_5_VLDecoderLayer(text_config, layer_idx=0)
        # Upstream's merger attends without a mask: every token sees every other (bidirectional).
        layer.self_attn.is_causal = False
        self.layers = nn.ModuleList([layer])
        self.projector = merger_projector(config)
        self.rotary_emb = Qwen2_5_VLRotaryEmbedding(text_config)  # inverse frequencies only (not saved)

    def position_ids(self, target_grid: tuple[int, int], reference_grid: tuple[int, int]) -> torch.Tensor:
        """(3, N + M) lattice positions of [target ; reference] (both at t = 0, as upstream)."""
        size = self.config.lattice_size
        target = lattice_position_ids(target_grid, size)  # (3, N)
        reference = lattice_position_ids(reference_grid, size)  # (3, M)
        return torch.cat([target, reference], dim=1)

    def forward(self, target_embeds: torch.Tensor, reference_embeds: torch.Tensor,
                target_grid: tuple[int, int], reference_grid: tuple[int, int]) -> torch.Tensor:
        """Merge target and reference embeddings.

        Args:
            target_embeds: (B, N, D), N = h * w of `target_grid`, raster order.
            reference_embeds: (B, M, D), M = h * w of `reference_grid`.
            target_grid, reference_grid: (h, w) token grids.

        Returns:
            (B, N + M, C) context tokens, target first.
        """
        _check_grid(target_embeds, target_grid, "target")
        _check_grid(reference_embeds, reference_grid, "reference")
        x = torch.cat([target_embeds, reference_embeds], dim=1)  # (B, N+M, D)
        positions = self.position_ids(target_grid, reference_grid).to(x.device)  # (3, N+M)
        positions = positions[:, None, :].expand(3, x.shape[0], -1)  # (3, B, N+M)
        position_embeddings = self.rotary_emb(x, positions)  # cos, sin: (B, N+M, head_dim)
        for layer in self.layers:
            x = layer(x, attention_mask=None, position_embeddings=position_embeddings)  # (B, N+M, D)
        return self.projector(x)  # (B, N+M, C)


def _check_grid(embeds: torch.Tensor, grid: tuple[int, int], name: str) -> None:
    if embeds.ndim != 3 or embeds.shape[1] != int(grid[0]) * int(grid[1]):
        raise ValueError(f"{name} embeddings {tuple(embeds.shape)} do not match grid {tuple(grid)} "
                         f"(expected (B, {int(grid[0]) * int(grid[1])}, D))")
