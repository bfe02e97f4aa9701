"""The Nexus-Gen autoregressive model: Qwen2.5-VL + a vision head + a prefill table (docs/upstream.md §1-2).

`NexusGenARModel` wraps transformers' `Qwen2_5_VLForConditionalGeneration` (not re-implemented) and adds

* `vision_head`: a bias-free Linear D -> D read in parallel with `lm_head`; it predicts image embeddings
  in the output space of the Qwen ViT + patch merger (the space of the LLM's own image inputs);
* `image_prefill_embeds`: N learned input vectors, fed at the N positions of every *generated* image
  ("prefilled autoregression", Nexus-GenV2). A V1 model has no table and feeds the `<|image_pad|>`
  token embedding at every output position instead (`ARConfig.use_prefill_table = False`).

Alignment (docs/upstream.md §2.3): the hidden state at position t predicts the embedding of the image token at t+1,
so for an output span `[vs, i_0 .. i_{N-1}, ve]` the N predictions are read at `vs, i_0 .. i_{N-2}`.
Generated image tokens take the 3-D M-RoPE positions of an input image of the output grid starting right
after `<|vision_start|>` (docs/upstream.md §2.4); positions are always computed with the grid list and the image-token
mask, because transformers 5.x silently falls back to 1-D positions without `mm_token_type_ids`.

The N inputs of an output image never depend on predictions, so `predict_image_embeds` gets all N in one
pass (docs/upstream.md §2.5); the official step-by-step loop, "standard AR" and interleaved generation:
ar_generation.py.

Shape legend: B batch, L sequence length, D LLM hidden size (= ViT merger output), N output tokens per
image, P image patches, I images, V vocabulary.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from functools import cached_property

import torch
import torch.nn.functional as F
from torch import nn

from nexusgen.models.ar_presets import (  # noqa: F401 (re-exported: the presets' historical home)
    _BYTE_TOKENIZER_IDS,
    _QWEN_TOKENIZER_IDS,
    _SHAPES_BPE_IDS,
    AR_PRESETS,
    _rope,
)

IGNORE_INDEX = -100
IMAGE_FEEDS = ("prefill", "predicted")
# ARConfig fields measured on shapes-mini and removed because they did not help (the training log has the
# numbers): a stored `nexusgen_ar.json` that leaves them off still loads, one that turns them on is refused.
REMOVED_AR_FIELDS = {
    "input_image_positions": "ARConfig.input_image_positions (input image place embeddings) was removed: "
                             "it did not help",
    "question_first": "ARConfig.question_first (the question before the image) was removed: it did not help",
}


# ----------------------------------------------------------------------------------------------------
# Config and presets
# ----------------------------------------------------------------------------------------------------
@dataclass
class ARConfig:
    """Configuration of the autoregressive model. Serialised as `nexusgen_ar.json` + `config.json`.

    Attributes:
        qwen: `Qwen2_5_VLConfig` keyword arguments (nested `text_config` / `vision_config` dicts and the
            vision token ids; a 4.49-style flat dict is accepted too).
        num_output_tokens: N, embeddings predicted per generated image (= rows * cols of the grid).
        output_image_px: (height, width) in pixels of a generated image as the ViT sees it; multiples of
            the token size patch_size * spatial_merge_size (28 px for Qwen2.5-VL: 252 -> 9x9 = 81).
        max_input_pixels: pixel bound of input (understanding / editing) images.
        min_input_pixels: lower pixel bound of input images.
        use_prefill_table: False for a V1 model (no `image_prefill_embeds`).
        system_prompt: system turn used when a conversation has none; None: the canonical Nexus-Gen one
            (the templates live in `nexusgen.processing.templates`, which resolves None).
        answer_prefixes: assistant answers before `<image>`, keys "generate_en", "edit_zh", ...; None: the
            canonical Nexus-Gen ones.
        tokenizer: the tokenizer a *fresh* model of this config is built with (a name in
            `processing.tokenizers.TOKENIZER_BUILDERS`; None: bytes for small vocabularies, else Qwen2.5).
        image_feed: what the LLM reads at an answer image's token positions: "prefill" (Nexus-Gen's
            prefilled autoregression: the learnt table, one pass) or "predicted" (standard AR, the paper's
            ablation baseline: ground-truth embeddings in training, its own predictions fed back one
            token at a time at inference).
            A saved model folder always carries its own tokenizer files.
    """

    qwen: dict
    num_output_tokens: int = 81
    output_image_px: tuple[int, int] = (252, 252)
    max_input_pixels: int = 262_640
    min_input_pixels: int = 3_136
    use_prefill_table: bool = True
    system_prompt: str | None = None
    answer_prefixes: dict[str, str] | None = None
    tokenizer: str | None = None
    image_feed: str = "prefill"

    def __post_init__(self):
        if self.image_feed not in IMAGE_FEEDS:
            raise ValueError(f"image_feed must be one of {IMAGE_FEEDS}, got {self.image_feed!r}")
        if not isinstance(self.qwen, dict):
            raise ValueError(f"ARConfig.qwen must be a dict of Qwen2_5_VLConfig fields: {type(self.qwen)}")
        self.output_image_px = tuple(int(x) for x in self.output_image_px)
        qc = self.qwen_config
        text, vision = qc.text_config, qc.vision_config
        if vision.out_hidden_size != text.hidden_size:
            raise ValueError(f"vision out_hidden_size {vision.out_hidden_size} != text hidden_size "
                             f"{text.hidden_size}: the ViT merger must output LLM-sized embeddings")
        head_dim = text.hidden_size // text.num_attention_heads
        section = (text.rope_parameters or {}).get("mrope_section")
        if section is not None and 2 * sum(section) != head_dim:
            raise ValueError(f"mrope_section {section} must sum to head_dim/2 = {head_dim // 2}")
        height, width = self.output_image_px
        if height % self.token_px or width % self.token_px or height <= 0 or width <= 0:
            raise ValueError(f"output_image_px {self.output_image_px} must be positive multiples of the "
                             f"{self.token_px}-px token (patch {vision.patch_size}, merge {self.merge_size})")
        rows, cols = self.output_grid
        if self.num_output_tokens != rows * cols:
            raise ValueError(f"num_output_tokens {self.num_output_tokens} != {rows}x{cols} tokens of a "
                             f"{height}x{width} output image")
        if not self.token_px**2 <= self.min_input_pixels <= self.max_input_pixels:
            raise ValueError(f"need token_px^2 <= min_input_pixels <= max_input_pixels, got "
                             f"{self.token_px**2}, {self.min_input_pixels}, {self.max_input_pixels}")

    @cached_property
    def qwen_config(self):
        """The `Qwen2_5_VLConfig` built from `qwen` (treat the dataclass as immutable)."""
        from transformers import Qwen2_5_VLConfig

        try:
            return Qwen2_5_VLConfig(**copy.deepcopy(self.qwen))
        except (TypeError, ValueError) as err:  # strict config dataclasses raise on wrong types
            raise ValueError(f"invalid Qwen2.5-VL config: {err}") from err

    @property
    def merge_size(self) -> int:
        return int(self.qwen_config.vision_config.spatial_merge_size)

    @property
    def token_px(self) -> int:
        """Pixels per LLM image token side: patch_size * spatial_merge_size."""
        return int(self.qwen_config.vision_config.patch_size) * self.merge_size

    @property
    def hidden_size(self) -> int:
        return int(self.qwen_config.text_config.hidden_size)

    @property
    def output_grid(self) -> tuple[int, int]:
        """(rows, cols) of LLM tokens of a generated image."""
        return self.output_image_px[0] // self.token_px, self.output_image_px[1] // self.token_px

    @property
    def output_grid_thw(self) -> tuple[int, int, int]:
        """The ViT patch grid (t, h, w) of a generated image, as `image_grid_thw` rows are written."""
        rows, cols = self.output_grid
        return 1, rows * self.merge_size, cols * self.merge_size

    def to_dict(self) -> dict:
        return {**asdict(self), "output_image_px": list(self.output_image_px)}

    @classmethod
    def from_dict(cls, data: dict) -> ARConfig:
        """The config of a stored `to_dict`; ValueError for an unknown field or a removed one turned on."""
        data = without_removed_fields(data)
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown ARConfig fields: {sorted(unknown)}")
        return cls(**copy.deepcopy(data))

    @classmethod
    def from_preset(cls, name: str, **overrides) -> ARConfig:
        """A fresh config from `AR_PRESETS[name]`, with top-level fields overridden."""
        if name not in AR_PRESETS:
            raise ValueError(f"unknown AR preset {name!r}; choose from {sorted(AR_PRESETS)}")
        return cls(**{**copy.deepcopy(AR_PRESETS[name]), **overrides})


def without_removed_fields(data: dict) -> dict:
    """`data` (stored ARConfig fields) without the removed fields that it leaves off (false).

    Raises:
        ValueError: a removed field is turned on (the message names it).
    """
    for key in sorted(REMOVED_AR_FIELDS.keys() & data.keys()):
        if data[key]:
            raise ValueError(f"{key} is {data[key]!r}: {REMOVED_AR_FIELDS[key]}")
    return {k: v for k, v in data.items() if k not in REMOVED_AR_FIELDS}


# ----------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------
class NexusGenARModel(nn.Module):
    """Qwen2.5-VL with Nexus-Gen's vision head and prefill table.

    State-dict names: `vlm.*` (transformers 5.x names under the `vlm.` prefix), `vision_head.weight`
    (D, D) and `image_prefill_embeds.weight` (N, D). The loader maps official folders onto them.

    Args:
        config: the ARConfig.
        vlm: an already-built `Qwen2_5_VLForConditionalGeneration` (used by the loader); default: a
            freshly initialised one.
    """

    def __init__(self, config: ARConfig, vlm=None):
        super().__init__()
        from transformers import Qwen2_5_VLForConditionalGeneration

        self.config = config
        if vlm is None:  # a copy: transformers writes into the config it is given (attention backend)
            vlm = Qwen2_5_VLForConditionalGeneration(copy.deepcopy(config.qwen_config))
        self.vlm = vlm
        dim, std = config.hidden_size, config.qwen_config.text_config.initializer_range
        self.vision_head = nn.Linear(dim, dim, bias=False)
        # New modules get the LLM's own init scale (HF's post_init would use N(0, initializer_range));
        # nn.Embedding's default N(0, 1) is ~50x larger than Qwen's token embeddings.
        nn.init.normal_(self.vision_head.weight, std=std)
        self.image_prefill_embeds = None
        if config.use_prefill_table:
            self.image_prefill_embeds = nn.Embedding(config.num_output_tokens, dim)
            nn.init.normal_(self.image_prefill_embeds.weight, std=std)

    # -- token ids (always from the config, never constants) ----------------------------------------
    @property
    def image_token_id(self) -> int:
        return int(self.config.qwen_config.image_token_id)

    @property
    def vision_start_token_id(self) -> int:
        return int(self.config.qwen_config.vision_start_token_id)

    @property
    def vision_end_token_id(self) -> int:
        return int(self.config.qwen_config.vision_end_token_id)

    @property
    def eos_token_ids(self) -> list[int]:
        eos = self.config.qwen_config.text_config.eos_token_id
        return [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]) if e is not None]

    @property
    def num_output_tokens(self) -> int:
        return self.config.num_output_tokens

    # -- building blocks ----------------------------------------------------------------------------
    def encode_images(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor) -> list[torch.Tensor]:
        """ViT + merger embeddings: the shared space (inputs of the LLM, targets of the vision head).

        Args:
            pixel_values: (P, 3 * temporal_patch * patch^2) float, as the image processor returns them.
            image_grid_thw: (I, 3) int64 patch grids.

        Returns:
            list of I tensors (n_i, D), n_i = t * h * w / merge^2, tokens in raster order.
        """
        if image_grid_thw.numel() == 0:
            return []
        dtype = self.vlm.model.visual.dtype
        out = self.vlm.model.get_image_features(pixel_values.to(dtype), image_grid_thw, return_dict=True)
        return list(out.pooler_output)

    def embed_input_images(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor) -> torch.Tensor:
        """What the LLM reads at input image tokens: `encode_images`, concatenated. (T, D), images in order."""
        return torch.cat(self.encode_images(pixel_values, image_grid_thw))

    def image_token_counts(self, image_grid_thw: torch.Tensor) -> list[int]:
        """LLM tokens per image for (I, 3) patch grids."""
        return (image_grid_thw.prod(-1) // self.config.merge_size**2).tolist()

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:  # (B, L) -> (B, L, D)
        return self.vlm.model.get_input_embeddings()(input_ids)

    def output_image_inputs(self, num_images: int) -> torch.Tensor:
        """Inputs at the positions of `num_images` generated images: (num_images * N, D).

        V2: the prefill table, tiled per image. V1: the `<|image_pad|>` token embedding everywhere.
        """
        if self.image_prefill_embeds is not None:
            return self.image_prefill_embeds.weight.repeat(num_images, 1)
        pad = torch.tensor([self.image_token_id], device=self.vision_head.weight.device)
        return self.embed_tokens(pad).expand(num_images * self.num_output_tokens, -1)

    def compute_positions(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                          image_grid_thw: torch.Tensor | None) -> torch.Tensor:
        """3-D M-RoPE positions (3, B, L) over a whole sequence; image tokens get (t, h, w) positions.

        Args:
            input_ids: (B, L); image tokens (inputs *and* outputs) carry the image token id.
            attention_mask: (B, L) 1 for tokens, 0 for padding (left or right).
            image_grid_thw: (I, 3) grids of all image spans in order of appearance (row by row).
        """
        mm_token_type_ids = ((input_ids == self.image_token_id) & attention_mask.bool()).int()
        grids = image_grid_thw if image_grid_thw is not None and image_grid_thw.numel() else None
        positions, _ = self.vlm.model.get_rope_index(input_ids, mm_token_type_ids, image_grid_thw=grids,
                                                     attention_mask=attention_mask)
        return positions

    def language_model(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                       position_ids: torch.Tensor, past_key_values=None, use_cache: bool = False):
        """Run the Qwen decoder on embeddings with explicit positions.

        Returns:
            (hidden_states (B, L, D) after the final norm, past_key_values).
        """
        out = self.vlm.model.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                            position_ids=position_ids, past_key_values=past_key_values,
                                            use_cache=use_cache)
        return out.last_hidden_state, out.past_key_values

    def splice_images(self, input_ids: torch.Tensor, inputs_embeds: torch.Tensor, image_embeds: torch.Tensor,
                      attention_mask: torch.Tensor) -> torch.Tensor:
        """Write (T, D) vectors at the T image-token positions of the batch (row-major order)."""
        mask = (input_ids == self.image_token_id) & attention_mask.bool()
        if int(mask.sum()) != image_embeds.shape[0]:
            raise ValueError(f"{int(mask.sum())} image tokens in input_ids but {image_embeds.shape[0]} image "
                             "embeddings: image_grid_thw does not match the text")
        return inputs_embeds.masked_scatter(mask[..., None], image_embeds.to(inputs_embeds.dtype))

    # -- training -----------------------------------------------------------------------------------
    def forward(self, batch: dict, **kwargs) -> dict:
        """Same as `training_loss` (so DDP/FSDP wrappers see a forward call)."""
        return self.training_loss(batch, **kwargs)

    def training_loss(self, batch: dict, token_weight: float = 1.0, image_weight: float = 1.0,
                      feed_targets: bool | None = None, image_embeds: list[torch.Tensor] | None = None,
                      ce_reduction: str = "token", totals: dict[str, float] | None = None) -> dict:
        """Teacher-forced loss  w_tok * CE + w_img * (0.5 * MSE + 0.5 * (1 - cos))  (docs/upstream.md §3.1).

        Target images are encoded by the ViT without gradient (regression targets); their positions
        are fed the prefill table (or, with `feed_targets`, the targets themselves: the "standard AR"
        baseline). CE is the shifted next-token loss over labelled positions whose label is not the image
        token; the image loss is taken at positions whose *next* label is the image token. V2 trained
        with w_tok = w_img = 3.0; only their ratio matters up to the learning rate.

        Args:
            batch: `collate_ar` output: input_ids (B, L), attention_mask (B, L), labels (B, L),
                pixel_values (P, patch_dim), image_grid_thw (I, 3), image_is_target (I,).
            token_weight: w_tok.
            image_weight: w_img.
            feed_targets: feed ground-truth target embeddings instead of the prefill table; default: as
                `config.image_feed` says (True for a standard-AR model).
            image_embeds: `encode_images(pixel_values, image_grid_thw)` if the caller already has it (a
                loss on the ViT tokens themselves, as in stage `vlm`); computed here otherwise.
            ce_reduction: "token" averages CE over all text targets of the batch (upstream); "sample"
                over each sample's own, then over samples (`sample_mean`).
            totals: the denominators of the means (`loss_units` summed over a whole global batch:
                every rank and accumulation micro-step); the terms are then this batch's share of the
                global means, and summing them over ranks and micro-steps gives the means of the global
                batch. None: this batch's own counts (the terms are its means).

        Returns:
            dict of scalar tensors: `loss` (differentiable), `ce`, `image_loss`, `image_mse` and
            `image_cos` (= mean of 1 - cosine similarity), so image_loss = 0.5 * mse + 0.5 * cos.
        """
        input_ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
        grids = batch.get("image_grid_thw")
        if feed_targets is None:
            feed_targets = self.config.image_feed == "predicted"
        inputs_embeds, targets = self._training_inputs(batch, feed_targets, image_embeds)
        positions = self.compute_positions(input_ids, mask, grids)
        hidden, _ = self.language_model(inputs_embeds, mask, positions)  # (B, L, D)
        hidden, next_labels = hidden[:, :-1], labels[:, 1:]  # h[t] predicts token t + 1
        text_rows, image_rows = self.target_rows(labels)
        totals = totals if totals is not None else self.loss_units(labels)
        if text_rows.any():
            logits = self.vlm.lm_head(hidden[text_rows]).float()  # (T, V), fp32 as upstream
            per_token = F.cross_entropy(logits, next_labels[text_rows], reduction="none")
            if ce_reduction == "token":
                ce = per_token.sum() / max(totals["text_tokens"], 1)
            else:
                ce = sample_mean(per_token, text_rows.nonzero()[:, 0], text_rows.shape[0],
                                 total_samples=totals["text_samples"])
        else:
            ce = 0.0 * self.vlm.lm_head.weight.sum()
        if int(image_rows.sum()) != targets.shape[0]:
            raise ValueError(f"{int(image_rows.sum())} labelled image tokens but {targets.shape[0]} target "
                             "embeddings: labels and image_is_target disagree")
        if targets.shape[0]:
            pred = self.vision_head(hidden[image_rows]).float()  # (T, D)
            image_tokens = max(totals["image_tokens"], 1)
            mse = (pred - targets.float()).pow(2).sum() / (image_tokens * pred.shape[-1])
            cos = (1.0 - F.cosine_similarity(pred, targets.float(), dim=-1)).sum() / image_tokens
        else:
            # No target image in the batch: zero terms that still touch the new parameters, so DDP/FSDP
            # see every parameter in the graph (upstream's "0 x" trick).
            zero = 0.0 * self.vision_head.weight.sum()
            if self.image_prefill_embeds is not None:
                zero = zero + 0.0 * self.image_prefill_embeds.weight.sum()
            mse = cos = zero
        image_loss = 0.5 * mse + 0.5 * cos
        loss = token_weight * ce + image_weight * image_loss
        return {"loss": loss, "ce": ce.detach(), "image_loss": image_loss.detach(),
                "image_mse": mse.detach(), "image_cos": cos.detach()}

    def target_rows(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Which next-token positions are CE targets and which are image-regression targets.

        Args:
            labels: (B, L) as `collate_ar` makes them.

        Returns:
            (text_rows, image_rows), both (B, L - 1) bool: position t predicts label t + 1.
        """
        next_labels = labels[:, 1:]
        image_rows = next_labels == self.image_token_id
        return (next_labels != IGNORE_INDEX) & ~image_rows, image_rows

    def loss_units(self, labels: torch.Tensor) -> dict[str, int]:
        """What the loss terms of `training_loss` average over, counted in one batch: CE targets
        ("text_tokens"), samples with at least one ("text_samples", for the per-sample mean) and
        regression targets ("image_tokens"). Summed over a global batch they are `totals`."""
        text_rows, image_rows = self.target_rows(labels)
        return {"text_tokens": int(text_rows.sum()), "text_samples": int(text_rows.any(1).sum()),
                "image_tokens": int(image_rows.sum())}

    def _training_inputs(self, batch: dict, feed_targets: bool,
                         per_image: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Input embeddings with images spliced in, and the (T, D) regression targets."""
        input_ids, mask = batch["input_ids"], batch["attention_mask"]
        grids = batch.get("image_grid_thw")
        inputs_embeds = self.embed_tokens(input_ids)
        dim = inputs_embeds.shape[-1]
        if grids is None or grids.numel() == 0:
            return inputs_embeds, inputs_embeds.new_zeros(0, dim)
        is_target = batch["image_is_target"].to(torch.bool)
        if per_image is None:
            per_image = self.encode_images(batch["pixel_values"], grids)
        counts = torch.tensor(self.image_token_counts(grids), device=is_target.device)
        target_grid = torch.tensor(self.config.output_grid_thw, device=grids.device)
        if is_target.any() and not (grids[is_target] == target_grid).all():
            raise ValueError(f"target images must have the output grid {tuple(target_grid.tolist())}, got "
                             f"{grids[is_target].tolist()}")
        token_is_target = is_target.repeat_interleave(counts)  # (T_all,)
        all_embeds = torch.cat(per_image)  # (T_all, D)
        targets = all_embeds[token_is_target].detach()
        if feed_targets:
            fill = targets
        else:
            fill = self.output_image_inputs(int(is_target.sum()))
        spliced = all_embeds.to(fill.dtype).clone()  # written into below; all_embeds stays in the graph
        spliced[token_is_target] = fill.to(spliced.dtype)  # generated images: the prefill table
        return self.splice_images(input_ids, inputs_embeds, spliced, mask), targets

    # -- inference ----------------------------------------------------------------------------------
    @torch.no_grad()
    def predict_image_embeds(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                             pixel_values: torch.Tensor | None = None,
                             image_grid_thw: torch.Tensor | None = None) -> torch.Tensor:
        """Predicted image embeddings in one forward pass (prefilled autoregression, docs/upstream.md §2.5).

        The prompts must end in `<|vision_start|>` (processing's `image_prompt_inputs` builds the
        canonical text). N image tokens are appended, fed the prefill table, and the vision head is read
        at `<|vision_start|>` and image tokens 0..N-2.

        Args:
            input_ids: (B, L) prompts, padded on either side.
            attention_mask: (B, L), default all ones.
            pixel_values: (P, patch_dim) input images (editing), or None.
            image_grid_thw: (I, 3) grids of the input images in order, or None.

        Returns:
            (B, N, D) predicted embeddings, in the model's dtype.

        Raises:
            ValueError: a prompt does not end in `<|vision_start|>`, or images do not match the text.
        """
        if self.config.image_feed == "predicted":  # a standard-AR model (ablation): N sequential steps
            from nexusgen.models.ar_generation import predict_image_embeds_sequential

            return predict_image_embeds_sequential(self, input_ids, attention_mask, pixel_values, image_grid_thw,
                                                   feed="predicted")
        ids, mask, grids, base_embeds = self.prepare_image_prompts(input_ids, attention_mask, pixel_values,
                                                                    image_grid_thw)
        n = self.num_output_tokens
        batch = ids.shape[0]
        ids = torch.cat([ids, ids.new_full((batch, n), self.image_token_id)], dim=1)  # (B, L + N)
        mask = torch.cat([mask, mask.new_ones(batch, n)], dim=1)
        fill = self.output_image_inputs(batch).to(base_embeds.dtype).view(batch, n, -1)
        inputs_embeds = torch.cat([base_embeds, fill], dim=1)  # (B, L + N, D)
        positions = self.compute_positions(ids, mask, self.with_output_grids(ids, mask, grids))
        hidden, _ = self.language_model(inputs_embeds, mask, positions)
        return self.vision_head(hidden[:, -n - 1:-1])  # read at vs, i_0 .. i_{N-2}: (B, N, D)

    def prepare_image_prompts(self, input_ids, attention_mask=None, pixel_values=None, image_grid_thw=None):
        """Left-align prompts ending in `<|vision_start|>` and embed them with their input images.

        Returns:
            (input_ids (B, L), attention_mask (B, L), image_grid_thw (I, 3) or None, inputs_embeds (B, L, D)).
        """
        from nexusgen.models.ar_generation import left_align

        ids, mask = left_align(input_ids, attention_mask)
        if not (ids[:, -1] == self.vision_start_token_id).all():
            raise ValueError("every prompt must end in <|vision_start|> (id "
                             f"{self.vision_start_token_id}); got last tokens {ids[:, -1].tolist()}")
        embeds = self.embed_tokens(ids)
        if image_grid_thw is not None and image_grid_thw.numel():
            embeds = self.splice_images(ids, embeds, self.embed_input_images(pixel_values, image_grid_thw), mask)
        else:
            image_grid_thw = None
        return ids, mask, image_grid_thw, embeds

    def with_output_grids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                          input_grids: torch.Tensor | None) -> torch.Tensor:
        """Grid list for prompts followed by one generated image each: per row, its input grids, then
        the output grid (the order in which `get_rope_index` meets the image spans).

        Args:
            input_ids: (B, L) prompts *with* the N output image tokens appended.
            attention_mask: (B, L).
            input_grids: (I, 3) grids of the input images, row by row, or None.
        """
        out_grid = torch.tensor([self.config.output_grid_thw], device=input_ids.device)
        counts = self.image_token_counts(input_grids) if input_grids is not None else []
        per_row_tokens = ((input_ids == self.image_token_id) & attention_mask.bool()).sum(1).tolist()
        rows, used = [], 0
        for tokens in per_row_tokens:
            tokens -= self.num_output_tokens
            start = used
            while tokens > 0:
                tokens -= counts[used]
                used += 1
            if tokens != 0:
                raise ValueError("input image tokens do not match image_grid_thw")
            rows += [input_grids[start:used]] if used > start else []
            rows.append(out_grid)
        return torch.cat(rows).to(torch.long)

    def predict_image_embeds_sequential(self, *args, **kwargs) -> torch.Tensor:
        """The official loop, one image token per step (reference mode); see `ar_generation`."""
        from nexusgen.models.ar_generation import predict_image_embeds_sequential

        return predict_image_embeds_sequential(self, *args, **kwargs)

    def generate_interleaved(self, *args, **kwargs):
        """Interleaved text + image generation with a KV cache; see `ar_generation.generate_interleaved`."""
        from nexusgen.models.ar_generation import generate_interleaved

        return generate_interleaved(self, *args, **kwargs)


def sample_mean(values: torch.Tensor, sample_index: torch.Tensor, num_samples: int,
                total_samples: int | None = None) -> torch.Tensor:
    """Mean over samples of each sample's mean value; samples without values are left out.

    With token-mean CE a one-word answer ("yes") weighs 1/30 of a 30-token caption, and on shapes-mini
    the yes/no questions (binding, relation) stayed at chance -- the model answered "no" to over 90%
    of them -- while captions were learned. Per-sample means give every answer the same weight.

    Args:
        values: (T,) one value per token.
        sample_index: (T,) the sample each token belongs to.
        num_samples: batch size.
        total_samples: divide the sum of the per-sample means by this (the number of samples with
            values in the whole global batch) instead of by this batch's own number.
    """
    sums = values.new_zeros(num_samples).index_add_(0, sample_index, values)
    counts = torch.bincount(sample_index, minlength=num_samples)
    present = counts > 0
    means = sums[present] / counts[present]
    return means.sum() / max(total_samples if total_samples is not None else means.shape[0], 1)
