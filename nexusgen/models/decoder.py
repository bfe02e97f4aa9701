"""Nexus-Gen's vision decoders: adapter | embedding merger + diffusers FLUX DiT (the VAE: `vae.py`).

The DiT is diffusers' ``FluxTransformer2DModel`` unchanged; what Nexus-Gen changes is the conditioning
(docs/upstream.md §1.3, §3.2-3.3, 4.2):

* the context tokens are connector outputs from image embeddings, *in place of* the 512 T5 tokens;
* the pooled vector is a stored constant, CLIP("") for the official models (so neither CLIP nor T5 is
  needed to generate), kept in the persistent buffer ``pooled_embeds``;
* generation: N adapted tokens, all context RoPE ids (0, 0, 0) (upstream; `generation_context_ids="grid"`
  places them as the editing target tokens below);
* editing: [target ; reference] merger tokens with spatial RoPE ids: target token (r, c) of an h x w grid
  gets ``(0, r * (Hl/2) / h, c * (Wl/2) / w)``, reference token ``(1, ...)`` likewise on its own grid, with
  ``Hl x Wl`` the latent size (image tokens are ``(0, i, j)``, i < Hl/2). These are the top-left corners of
  the tokens' cells in image-token coordinates; axis 0 = 1 tags the reference.
* embedded guidance (3.5) goes to the guidance embedder; the timestep passed to diffusers is t in [0, 1]
  (it multiplies by 1000 itself). Flow maths (time convention, schedule, sampler, loss) is in
  `nexusgen.flow`; these modules only map (x_t, t, condition) to a velocity.

Shape legend: B batch, N target/image tokens, M reference tokens, D embedding width, C context width,
P pooled width, S context length, c latent channels (16), h x w latent size, L = (h/2)(w/2) image tokens.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass

import torch
from diffusers import FluxTransformer2DModel
from torch import nn

from nexusgen.models.connector import EmbeddingMerger, GenerationAdapter, MergerConfig
from nexusgen.models.vae import pack_latents, unpack_latents

# ---------------------------------------------------------------------------------------------------------
# Configs and presets
# ---------------------------------------------------------------------------------------------------------


GENERATION_CONTEXT_IDS = ("zero", "grid")


@dataclass
class DecoderConfig:
    """A generation or editing decoder: connector + FLUX DiT (the merger config is used by editing only)."""

    embed_dim: int
    """D: width of the vision embeddings the decoder consumes (3584)."""
    context_dim: int
    """C: DiT context width, the T5 width FLUX was trained with (4096)."""
    pooled_dim: int
    """P: width of the pooled vector (768, CLIP-L)."""
    num_layers: int
    """Double-stream (joint) DiT blocks (19)."""
    num_single_layers: int
    """Single-stream DiT blocks (38)."""
    num_attention_heads: int
    """DiT heads (24)."""
    attention_head_dim: int
    """DiT head dim (128); width = heads * head_dim."""
    axes_dims_rope: tuple[int, int, int]
    """RoPE dims of the 3 id axes; sum = head dim ((16, 56, 56) for 128)."""
    latent_channels: int = 16
    """c: VAE latent channels; the DiT sees 2x2 patches, 4c values per token."""
    guidance_embeds: bool = True
    """Whether the DiT has a guidance embedder (FLUX.1-dev: yes)."""
    embedded_guidance: float = 3.5
    """Value fed to the guidance embedder at training and sampling (upstream 3.5)."""
    merger: MergerConfig | None = None
    """Editing decoder's embedding merger; None for a generation-only config."""
    generation_context_ids: str = "zero"
    """RoPE ids of the generation context: "zero" (upstream: every token (0, 0, 0), so the DiT must read
    each token's place from its content) or "grid" (a square grid of tokens placed like the editing
    decoder's target tokens)."""

    def __post_init__(self):
        self.axes_dims_rope = tuple(int(a) for a in self.axes_dims_rope)
        if isinstance(self.merger, dict):
            self.merger = MergerConfig(**self.merger)
        if sum(self.axes_dims_rope) != self.attention_head_dim or any(a % 2 for a in self.axes_dims_rope):
            raise ValueError(f"axes_dims_rope {self.axes_dims_rope} must be even and sum to "
                             f"attention_head_dim {self.attention_head_dim}")
        if self.generation_context_ids not in GENERATION_CONTEXT_IDS:
            raise ValueError(f"generation_context_ids must be one of {GENERATION_CONTEXT_IDS}, "
                             f"got {self.generation_context_ids!r}")
        if self.merger is not None and (self.merger.embed_dim, self.merger.context_dim) != (
                self.embed_dim, self.context_dim):
            raise ValueError(f"merger widths ({self.merger.embed_dim}, {self.merger.context_dim}) must equal "
                             f"(embed_dim, context_dim) = ({self.embed_dim}, {self.context_dim})")

    def transformer_kwargs(self) -> dict:
        """Constructor arguments of the diffusers ``FluxTransformer2DModel``."""
        return dict(patch_size=1, in_channels=4 * self.latent_channels, num_layers=self.num_layers,
                    num_single_layers=self.num_single_layers, attention_head_dim=self.attention_head_dim,
                    num_attention_heads=self.num_attention_heads, joint_attention_dim=self.context_dim,
                    pooled_projection_dim=self.pooled_dim, guidance_embeds=self.guidance_embeds,
                    axes_dims_rope=self.axes_dims_rope)

    def to_dict(self) -> dict:
        """JSON-ready dict (tuples become lists); `DecoderConfig(**d)` restores it."""
        return dataclasses.asdict(self)


_QWEN25_VL_7B_LAYER0 = MergerConfig(embed_dim=3584, context_dim=4096, num_attention_heads=28,
                                    num_key_value_heads=4, intermediate_size=18944, expand_ratio=4,
                                    rope_theta=1e6, mrope_section=(16, 24, 24), rms_norm_eps=1e-6)

DECODER_PRESETS: dict[str, DecoderConfig] = {
    # CPU tests: 2 heads x 32 so the converter's RoPE-axes rule (head_dim/8, 7 head_dim/16) applies; the
    # merger has the tiny AR model's attention (4 heads, 2 KV heads, M-RoPE 2/3/3), as upstream's merger is
    # its AR model's layer 0, so a tiny model exports to the official layout (`export-official`).
    "tiny": DecoderConfig(embed_dim=64, context_dim=64, pooled_dim=16, num_layers=1, num_single_layers=1,
                          num_attention_heads=2, attention_head_dim=32, axes_dims_rope=(4, 14, 14),
                          merger=MergerConfig(embed_dim=64, context_dim=64, num_attention_heads=4,
                                              num_key_value_heads=2, intermediate_size=128, expand_ratio=2,
                                              mrope_section=(2, 3, 3))),
    # The bundled miniature model: consumes the 256-wide embeddings of AR_PRESETS["shapes-mini"].
    # Grid context ids: the DiT reads each token's place from its RoPE id, not its content (0.30 -> 0.52
    # exact reconstructions of ShapesWorld scenes; docs/training-log.md, third session).
    "shapes-mini": DecoderConfig(embed_dim=256, context_dim=256, pooled_dim=64, num_layers=2,
                                 num_single_layers=4, num_attention_heads=4, attention_head_dim=64,
                                 axes_dims_rope=(8, 28, 28), generation_context_ids="grid",
                                 merger=MergerConfig(embed_dim=256, context_dim=256, num_attention_heads=4,
                                                     num_key_value_heads=2, intermediate_size=512,
                                                     expand_ratio=2, mrope_section=(8, 12, 12))),
    "mid": DecoderConfig(embed_dim=256, context_dim=256, pooled_dim=64, num_layers=2, num_single_layers=4,
                         num_attention_heads=4, attention_head_dim=32, axes_dims_rope=(4, 14, 14),
                         merger=MergerConfig(embed_dim=256, context_dim=256, num_attention_heads=4,
                                             num_key_value_heads=2, intermediate_size=512, expand_ratio=2,
                                             mrope_section=(8, 12, 12))),
    # Official Nexus-GenV2 decoders: FLUX.1-dev DiT, Qwen2.5-VL-7B embeddings, CLIP-L pooled vector.
    "nexus-gen-v2": DecoderConfig(embed_dim=3584, context_dim=4096, pooled_dim=768, num_layers=19,
                                  num_single_layers=38, num_attention_heads=24, attention_head_dim=128,
                                  axes_dims_rope=(16, 56, 56), merger=_QWEN25_VL_7B_LAYER0),
}

# ---------------------------------------------------------------------------------------------------------
# RoPE ids
# ---------------------------------------------------------------------------------------------------------


def image_ids(latent_size: tuple[int, int], device: torch.device | None = None) -> torch.Tensor:
    """(L, 3) RoPE ids (0, i, j) of the image tokens of an h x w latent."""
    rows, cols = latent_size[0] // 2, latent_size[1] // 2
    i = torch.arange(rows, device=device, dtype=torch.float32).repeat_interleave(cols)
    j = torch.arange(cols, device=device, dtype=torch.float32).repeat(rows)
    return torch.stack([torch.zeros_like(i), i, j], dim=1)


def _grid_ids(grid: tuple[int, int], latent_size: tuple[int, int], tag: float) -> torch.Tensor:
    h, w = (int(v) for v in grid)
    r = torch.arange(h, dtype=torch.float64).repeat_interleave(w) * (latent_size[0] / 2 / h)  # (h*w,)
    c = torch.arange(w, dtype=torch.float64).repeat(h) * (latent_size[1] / 2 / w)  # (h*w,)
    return torch.stack([torch.full_like(r, tag), r, c], dim=1).float()


def editing_context_ids(target_grid: tuple[int, int], reference_grid: tuple[int, int],
                        latent_size: tuple[int, int]) -> torch.Tensor:
    """FLUX RoPE ids of the editing context [target ; reference] (docs/upstream.md §3.3), for any grid sizes.

    Args:
        target_grid, reference_grid: (h, w) token grids.
        latent_size: (Hl, Wl) latent size.

    Returns:
        (N + M, 3) float32: target (0, r Hl/(2h), c Wl/(2w)), reference (1, ...) on its own grid.
    """
    return torch.cat([_grid_ids(target_grid, latent_size, 0.0), _grid_ids(reference_grid, latent_size, 1.0)])


def generation_context_ids(num_tokens: int, latent_size: tuple[int, int] | None) -> torch.Tensor:
    """(N, 3) "grid" RoPE ids of a generation context: N = g * g tokens in raster order, placed as the
    editing decoder's target tokens (`editing_context_ids`)."""
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise ValueError(f"grid context ids need a square number of image tokens, got {num_tokens}")
    if latent_size is None:
        raise ValueError("grid context ids need the latent size")
    return _grid_ids((side, side), latent_size, 0.0)


# ---------------------------------------------------------------------------------------------------------
# Decoders
# ---------------------------------------------------------------------------------------------------------


@dataclass
class DecoderCondition:
    """Everything the DiT is conditioned on besides x_t and t."""

    context: torch.Tensor
    """(B, S, C) context tokens (``encoder_hidden_states``)."""
    context_ids: torch.Tensor
    """(S, 3) RoPE ids of the context tokens."""
    pooled: torch.Tensor
    """(B, P) pooled vector."""


@contextlib.contextmanager
def _exact_time_embedding(transformer: FluxTransformer2DModel, t: torch.Tensor, guidance: float | None,
                          dtype: torch.dtype):
    """Feed the time (and guidance) embedder 1000 * t and 1000 * guidance in fp32.

    diffusers' FLUX transformer casts them to the compute dtype before its fp32 sinusoidal embedding: in bf16
    1000 * 0.7 becomes 700 +- 2 and 3500 becomes 3504, and the highest sinusoid frequencies (1 rad per unit)
    turn by radians -- every bf16 step sees a slightly different time and guidance. Upstream's DiT
    (DiffSynth) embeds the fp32 values; this pre-hook on `time_text_embed` gives it those. In fp32 the
    values are the same as diffusers' own, so fp32 outputs do not change.
    """
    if dtype == torch.float32:
        yield
        return
    timestep = t.float() * 1000
    exact_guidance = torch.full_like(timestep, float(guidance)) * 1000 if guidance is not None else None

    def hook(module, args):
        args = list(args)
        args[0] = timestep.to(args[0].device)
        if exact_guidance is not None and len(args) == 3:
            args[1] = exact_guidance.to(args[1].device)
        return tuple(args)

    handle = transformer.time_text_embed.register_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


class _FluxDecoder(nn.Module):
    """Shared part of both decoders: the DiT, the stored pooled vector and the velocity call."""

    def __init__(self, config: DecoderConfig, transformer: FluxTransformer2DModel | None = None):
        super().__init__()
        self.config = config
        self.transformer = transformer if transformer is not None else FluxTransformer2DModel(
            **config.transformer_kwargs())
        # CLIP("") for the official models (set by conversion); zeros for models trained without it.
        self.register_buffer("pooled_embeds", torch.zeros(config.pooled_dim))

    def text_condition(self, prompt_embeds: torch.Tensor,
                       pooled: torch.Tensor | None = None) -> DecoderCondition:
        """The ordinary FLUX text path (upstream's negative CFG branch).

        Args:
            prompt_embeds: (B, S, C) T5 embeddings of a prompt.
            pooled: (B, P) CLIP pooled vector of the same prompt; default the stored CLIP("").

        Returns:
            `DecoderCondition` with all context RoPE ids zero.
        """
        if prompt_embeds.ndim != 3 or prompt_embeds.shape[-1] != self.config.context_dim:
            raise ValueError(f"prompt_embeds must be (B, S, {self.config.context_dim}), "
                             f"got {tuple(prompt_embeds.shape)}")
        ids = torch.zeros(prompt_embeds.shape[1], 3, device=prompt_embeds.device)
        return DecoderCondition(prompt_embeds, ids, self._pooled(prompt_embeds, pooled))

    def _pooled(self, like: torch.Tensor, pooled: torch.Tensor | None = None) -> torch.Tensor:
        if pooled is None:
            pooled = self.pooled_embeds.expand(like.shape[0], -1)
        return pooled.to(device=like.device, dtype=like.dtype)

    def velocity(self, latents: torch.Tensor, t: torch.Tensor, condition: DecoderCondition,
                 guidance: float | None = None) -> torch.Tensor:
        """Predicted velocity ``x_1 - x_0`` (time convention in `nexusgen.flow.path`).

        Args:
            latents: x_t, (B, c, h, w) with h, w even.
            t: (B,) noise levels in [0, 1].
            condition: from ``condition`` or ``text_condition``.
            guidance: embedded guidance; default ``config.embedded_guidance``.

        Returns:
            (B, c, h, w) in the dtype of `latents`.
        """
        dtype = condition.context.dtype  # the compute dtype (the DiT may store weights in fp8)
        B, _, h, w = latents.shape
        guidance = self.config.embedded_guidance if guidance is None else guidance
        guidance_vector = torch.full((B,), float(guidance), device=latents.device, dtype=dtype)
        exact_guidance = float(guidance) if self.config.guidance_embeds else None
        with _exact_time_embedding(self.transformer, t, exact_guidance, dtype):
            tokens = self.transformer(
                hidden_states=pack_latents(latents.to(dtype)),  # (B, L, 4c)
                encoder_hidden_states=condition.context,  # (B, S, C)
                pooled_projections=condition.pooled,  # (B, P)
                timestep=t.to(device=latents.device, dtype=dtype),  # diffusers multiplies by 1000
                img_ids=image_ids((h, w), latents.device),  # (L, 3)
                txt_ids=condition.context_ids.to(latents.device),  # (S, 3)
                guidance=guidance_vector if self.config.guidance_embeds else None,
                return_dict=False)[0]  # (B, L, 4c)
        return unpack_latents(tokens, (h, w)).to(latents.dtype)

    def forward(self, latents: torch.Tensor, t: torch.Tensor, image_embeds: torch.Tensor,
                **condition_kwargs) -> torch.Tensor:
        """Velocity from image embeddings in one call: ``velocity(latents, t, condition(image_embeds))``."""
        condition = self.condition(image_embeds, latent_size=tuple(latents.shape[-2:]), **condition_kwargs)
        return self.velocity(latents, t, condition)


class GenerationDecoder(_FluxDecoder):
    """Generation decoder: `GenerationAdapter` + FLUX DiT (docs/upstream.md §1.3 generation, 3.2).

    Args:
        config: `DecoderConfig`.
        transformer: an existing ``FluxTransformer2DModel`` (e.g. loaded); built from `config` if None.
    """

    def __init__(self, config: DecoderConfig, transformer: FluxTransformer2DModel | None = None):
        super().__init__(config, transformer)
        self.adapter = GenerationAdapter(config.embed_dim, config.context_dim)

    def condition(self, image_embeds: torch.Tensor,
                  latent_size: tuple[int, int] | None = None) -> DecoderCondition:
        """Context = adapter(image_embeds), RoPE ids per ``config.generation_context_ids``, stored pooled
        vector.

        Args:
            image_embeds: (B, N, D).
            latent_size: (Hl, Wl) of the latent being denoised; needed only for "grid" ids.

        Returns:
            `DecoderCondition` with context (B, N, C).
        """
        if image_embeds.ndim != 3 or image_embeds.shape[-1] != self.config.embed_dim:
            raise ValueError(f"image_embeds must be (B, N, {self.config.embed_dim}), "
                             f"got {tuple(image_embeds.shape)}")
        context = self.adapter(image_embeds)  # (B, N, C)
        if self.config.generation_context_ids == "zero":
            ids = torch.zeros(context.shape[1], 3, device=context.device)  # (N, 3)
        else:
            ids = generation_context_ids(context.shape[1], latent_size).to(context.device)  # (N, 3)
        return DecoderCondition(context, ids, self._pooled(context))


class EditingDecoder(_FluxDecoder):
    """Editing decoder: `EmbeddingMerger` + FLUX DiT (docs/upstream.md §1.3 editing, 3.3).

    Args:
        config: `DecoderConfig` with a ``merger`` config.
        transformer: an existing ``FluxTransformer2DModel``; built from `config` if None.
    """

    def __init__(self, config: DecoderConfig, transformer: FluxTransformer2DModel | None = None):
        if config.merger is None:
            raise ValueError("an EditingDecoder needs DecoderConfig.merger")
        super().__init__(config, transformer)
        self.merger = EmbeddingMerger(config.merger)

    def condition(self, image_embeds: torch.Tensor, *, latent_size: tuple[int, int],
                  reference_embeds: torch.Tensor, reference_grid: tuple[int, int],
                  target_grid: tuple[int, int]) -> DecoderCondition:
        """Context = merger([target ; reference]) with spatial RoPE ids.

        Args:
            image_embeds: (B, N, D) predicted target embeddings, N = prod(target_grid).
            latent_size: (Hl, Wl) of the latent being denoised.
            reference_embeds: (B, M, D) source-image embeddings, M = prod(reference_grid).
            reference_grid, target_grid: (h, w) token grids.

        Returns:
            `DecoderCondition` with context (B, N + M, C).
        """
        if reference_embeds.shape[0] != image_embeds.shape[0]:
            raise ValueError(f"batch of reference_embeds {tuple(reference_embeds.shape)} differs from "
                             f"image_embeds {tuple(image_embeds.shape)}")
        context = self.merger(image_embeds, reference_embeds, target_grid, reference_grid)  # (B, N+M, C)
        ids = editing_context_ids(target_grid, reference_grid, latent_size).to(context.device)  # (N+M, 3)
        return DecoderCondition(context, ids, self._pooled(context))

