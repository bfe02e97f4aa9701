"""Generation loops of the autoregressive model: reference modes and interleaved text + image output.

* `predict_image_embeds_sequential` -- the official decoding of an image, one token per step with a KV
  cache, recomputing the M-RoPE index at every step from the sequence padded with the image tokens still
  to come (docs/upstream.md §2.5). `feed="prefill"` is Nexus-GenV2's prefilled AR (equal to the one-pass
  `NexusGenARModel.predict_image_embeds`); `feed="predicted"` is "standard AR": each predicted embedding is
  fed back as the next input, the baseline whose error accumulation motivates prefilled AR.
* `generate_interleaved` -- chat: sample text; when a sequence opens an image (`<|vision_start|>`, sampled
  or forced) all N image positions are filled in *one* step with the prefill table and the image is closed
  with `<|vision_end|>`; then text continues. Several images per answer and a batch of prompts are
  supported. Positions follow training exactly: image token (r, c) gets (s, s + r, s + c) with s the
  position after `<|vision_start|>`, and `<|vision_end|>` gets s + max(rows, cols) (the official code gave
  it p + N + 1, docs/upstream.md §9.4).

Batches are left-aligned. When rows feed different numbers of tokens in one step (an image block of N + 2
tokens next to a single text token), the shorter rows are padded *inside* the step with masked slots; the
attention mask keeps those slots masked for the rest of the generation, and positions are explicit, so
padding never shifts a position.

Shape legend: B batch, L sequence length, W tokens fed in one step, N output tokens, D hidden, V vocab.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nexusgen.models.token_sampling import check_sampling_options, choose_tokens, forced_only_ids


@torch.no_grad()
def predict_image_embeds_sequential(model, input_ids: torch.Tensor,
                                    attention_mask: torch.Tensor | None = None,
                                    pixel_values: torch.Tensor | None = None,
                                    image_grid_thw: torch.Tensor | None = None,
                                    feed: str = "prefill") -> torch.Tensor:
    """Image embeddings by the official step-by-step loop (reference mode for tests and ablations).

    Args:
        model: a NexusGenARModel.
        input_ids, attention_mask, pixel_values, image_grid_thw: as `predict_image_embeds`.
        feed: "prefill" (Nexus-GenV2) or "predicted" (standard AR: feed back the predictions).

    Returns:
        (B, N, D) predicted embeddings.
    """
    if feed not in ("prefill", "predicted"):
        raise ValueError(f"feed must be 'prefill' or 'predicted', got {feed!r}")
    ids, mask, grids, embeds = model.prepare_image_prompts(input_ids, attention_mask, pixel_values,
                                                            image_grid_thw)
    batch, n = ids.shape[0], model.num_output_tokens
    positions = model.compute_positions(ids, mask, grids)  # the prompt alone, as upstream
    hidden, cache = model.language_model(embeds, mask, positions, use_cache=True)
    outputs = [model.vision_head(hidden[:, -1])]  # at <|vision_start|>: embedding 0
    prefill = model.output_image_inputs(1).to(embeds.dtype)  # (N, D)
    prompt_len = ids.shape[1]
    for k in range(n - 1):  # image token k predicts embedding k + 1
        # Upstream re-derives the position at every step from the current sequence padded with the
        # image tokens still to come (N in all), with the output grid appended to the grid list.
        current = torch.cat([ids, ids.new_full((batch, k + 1), model.image_token_id)], dim=1)
        full_ids = torch.cat([current, ids.new_full((batch, n - k - 1), model.image_token_id)], dim=1)
        full_mask = torch.cat([mask[:, :prompt_len], mask.new_ones(batch, n)], dim=1)
        full_grids = model.with_output_grids(full_ids, full_mask, grids)
        step = current.shape[1] - 1  # the image token fed now
        step_positions = model.compute_positions(full_ids, full_mask, full_grids)[:, :, step:step + 1]
        step_input = prefill[k].expand(batch, 1, -1) if feed == "prefill" else outputs[-1][:, None]
        mask = torch.cat([mask, mask.new_ones(batch, 1)], dim=1)
        hidden, cache = model.language_model(step_input.to(embeds.dtype), mask, step_positions,
                                             past_key_values=cache, use_cache=True)
        outputs.append(model.vision_head(hidden[:, -1]))
    return torch.stack(outputs, dim=1)  # (B, N, D)


def left_align(input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
    """Move padding to the left so every row ends at the last column.

    Returns:
        (input_ids (B, L), attention_mask (B, L)); the same tensors when already left-aligned.
    """
    if attention_mask is None:
        return input_ids, torch.ones_like(input_ids)
    if bool(attention_mask[:, -1].all()) and bool((attention_mask.cummax(1).values == attention_mask).all()):
        return input_ids, attention_mask  # already left padded (or unpadded)
    lengths = attention_mask.sum(1)
    width = int(lengths.max())
    ids = input_ids.new_zeros(input_ids.shape[0], width)
    mask = attention_mask.new_zeros(input_ids.shape[0], width)
    for row in range(input_ids.shape[0]):
        valid = input_ids[row][attention_mask[row].bool()]
        ids[row, width - valid.numel():] = valid
        mask[row, width - valid.numel():] = 1
    return ids, mask


@dataclass
class InterleavedOutput:
    """Result of `generate_interleaved`, one entry per prompt.

    Attributes:
        sequences: generated ids (1-D int64) including complete image spans `<|vision_start|>`,
            N x `<|image_pad|>`, `<|vision_end|>`; a `<|vision_start|>` that ended the prompt is included
            at the front so that every span is complete. Ends with the end-of-turn token if one was sampled.
        image_embeds: per prompt, one (N, D) tensor per generated image, in order.
        position_ids: per prompt, (3, len(sequence)) M-RoPE positions used for each generated token.
    """

    sequences: list[torch.Tensor]
    image_embeds: list[list[torch.Tensor]]
    position_ids: list[torch.Tensor]


@dataclass
class _Chunk:
    """Tokens one row feeds in one step (text: 1 token; image: vs, N pads, ve)."""

    ids: list[int]
    positions: torch.Tensor  # (3, n)
    is_image: bool


@torch.no_grad()
def generate_interleaved(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                         pixel_values: torch.Tensor | None = None,
                         image_grid_thw: torch.Tensor | None = None, *,
                         max_new_tokens: int = 256, do_sample: bool = False, temperature: float = 1.0,
                         top_k: int = 0, top_p: float = 1.0, force_image: bool = False,
                         max_images: int | None = None,
                         generator: torch.Generator | list[torch.Generator] | None = None) -> InterleavedOutput:
    """Generate answers that interleave text and images (KV cache, batch of prompts).

    `<|vision_end|>` and `<|image_pad|>` are never sampled (they are only forced). A prompt that ends in
    `<|vision_start|>` starts with an image (use an answer prefix ending in `<image>` to force one up
    front); `force_image=True` turns an end-of-turn (or the last token allowed by `max_new_tokens`) into
    `<|vision_start|>` while a row has no image yet.

    Args:
        model: a NexusGenARModel.
        input_ids: (B, L) prompts ending with the open assistant turn, padded on either side.
        attention_mask: (B, L), default all ones.
        pixel_values: (P, patch_dim) input images, or None.
        image_grid_thw: (I, 3) grids of the input images in order, or None.
        max_new_tokens: per row; an image block (N + 2 tokens) is never cut.
        do_sample: sample (temperature / top-k / top-p) instead of greedy decoding.
        temperature, top_k, top_p: sampling settings (top_k 0 and top_p 1 disable them).
        force_image: guarantee at least one image per answer.
        max_images: ban `<|vision_start|>` once a row has this many images.
        generator: torch.Generator for reproducible sampling, or one per row (a row's tokens then do not
            depend on the other rows of the batch).

    Returns:
        InterleavedOutput.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if model.config.image_feed != "prefill" and max_images != 0:  # text-only answers need no image feed
        raise ValueError("interleaved chat needs a prefilled-AR model (image_feed='prefill'); this one is a "
                         "standard-AR ablation model: use understand, generate or edit")
    state = _GenerationState(model, input_ids, attention_mask, pixel_values, image_grid_thw)
    sampler = _Sampler(model, do_sample, temperature, top_k, top_p, generator)
    chunks: list[_Chunk | None] = [state.chunk(b, int(state.last_ids[b])) for b in range(state.batch)]
    for b, chunk in enumerate(chunks):  # a prompt ending in <|vision_start|> starts with an image
        if chunk.is_image:
            state.record(b, chunk)
    active = [True] * state.batch  # False: the row's last chunk is fed, but nothing more is sampled
    while any(c is not None for c in chunks):
        logits, images = state.step(chunks)  # (B, V), {row: (N, D)}
        for b, emb in images.items():
            state.image_embeds[b].append(emb)
        allow_image = [max_images is None or len(images_b) < max_images for images_b in state.image_embeds]
        next_ids = sampler(logits, allow_image).tolist()  # one host round trip per step
        for b in range(state.batch):
            if chunks[b] is None or not active[b]:
                chunks[b] = None
                continue
            token = next_ids[b]
            last = token in model.eos_token_ids or len(state.sequences[b]) + 1 >= max_new_tokens
            if force_image and last and model.vision_start_token_id not in state.sequences[b]:
                token = model.vision_start_token_id
            chunks[b] = state.chunk(b, token)
            state.record(b, chunks[b])
            if token in model.eos_token_ids:
                active[b], chunks[b] = False, None
            elif len(state.sequences[b]) >= max_new_tokens:
                active[b] = False  # an image block that was just opened is still fed, to close it
                chunks[b] = chunks[b] if chunks[b].is_image else None
    return state.output()


class _GenerationState:
    """Per-row bookkeeping of `generate_interleaved`: cache, mask, next positions, outputs."""

    def __init__(self, model, input_ids, attention_mask, pixel_values, image_grid_thw):
        self.model = model
        ids, mask = left_align(input_ids, attention_mask)
        self.batch = ids.shape[0]
        grids = image_grid_thw if image_grid_thw is not None and image_grid_thw.numel() else None
        embeds = model.embed_tokens(ids)
        if grids is not None:
            embeds = model.splice_images(ids, embeds, model.embed_input_images(pixel_values, grids), mask)
        positions = model.compute_positions(ids, mask, grids)  # (3, B, L)
        self.last_ids = ids[:, -1]
        self.next_pos = positions[:, :, -1].max(0).values.tolist()  # position of the last prompt token
        self.cache = None
        self.mask = mask[:, :-1]
        if ids.shape[1] > 1:  # the last prompt token is fed by the first step, like any chunk
            _, self.cache = model.language_model(embeds[:, :-1], self.mask, positions[:, :, :-1],
                                                 use_cache=True)
        self.sequences: list[list[int]] = [[] for _ in range(self.batch)]
        self.positions: list[list[torch.Tensor]] = [[] for _ in range(self.batch)]
        self.image_embeds: list[list[torch.Tensor]] = [[] for _ in range(self.batch)]
        rows, cols = model.config.output_grid
        r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
        # (3, N) offsets of image token k = (r, c) from the image's first position s: (0, r, c)
        self.grid_offsets = torch.stack([torch.zeros_like(r.flatten()), r.flatten(), c.flatten()])
        self.image_span = max(rows, cols)  # text after an image resumes this far after its first position

    def chunk(self, row: int, token: int) -> _Chunk:
        """The tokens row `row` feeds next, starting at its next position, which is then advanced."""
        p = self.next_pos[row]
        m = self.model
        if token != m.vision_start_token_id:
            self.next_pos[row] = p + 1
            return _Chunk([token], torch.full((3, 1), p, dtype=torch.long), is_image=False)
        s = p + 1  # first position of the image: (s, s + r, s + c)
        end = s + self.image_span  # <|vision_end|>
        positions = torch.cat([torch.full((3, 1), p), self.grid_offsets + s, torch.full((3, 1), end)], dim=1)
        self.next_pos[row] = end + 1
        ids = [token] + [m.image_token_id] * m.num_output_tokens + [m.vision_end_token_id]
        return _Chunk(ids, positions.long(), is_image=True)

    def record(self, row: int, chunk: _Chunk) -> None:
        self.sequences[row] += chunk.ids
        self.positions[row].append(chunk.positions)

    def step(self, chunks: list[_Chunk | None]):
        """Feed every row's chunk (right-aligned in a block of the longest), return the last logits and
        the (N, D) embeddings of the rows that fed an image."""
        m, n = self.model, self.model.num_output_tokens
        device = m.vision_head.weight.device
        width = max(len(c.ids) for c in chunks if c is not None)
        ids = torch.zeros(self.batch, width, dtype=torch.long)
        block_mask = torch.zeros(self.batch, width, dtype=self.mask.dtype)
        positions = torch.zeros(3, self.batch, width, dtype=torch.long)
        for b, c in enumerate(chunks):
            if c is not None:
                ids[b, width - len(c.ids):] = torch.tensor(c.ids)
                block_mask[b, width - len(c.ids):] = 1
                positions[:, b, width - len(c.ids):] = c.positions
        ids, block_mask, positions = ids.to(device), block_mask.to(device), positions.to(device)
        embeds = m.embed_tokens(ids)  # (B, W, D)
        image_rows = [b for b, c in enumerate(chunks) if c is not None and c.is_image]
        if image_rows:
            fill = m.output_image_inputs(1).to(embeds.dtype)  # the N prefill inputs of one image
            embeds[image_rows, width - n - 1:width - 1] = fill
        self.mask = torch.cat([self.mask.to(device), block_mask], dim=1)
        hidden, self.cache = m.language_model(embeds, self.mask, positions, past_key_values=self.cache,
                                              use_cache=True)
        images = {b: m.vision_head(hidden[b, width - n - 2:width - 2]) for b in image_rows}
        return m.vlm.lm_head(hidden[:, -1]).float(), images

    def output(self) -> InterleavedOutput:
        sequences = [torch.tensor(s, dtype=torch.long) for s in self.sequences]
        positions = [torch.cat(p, dim=1) if p else torch.zeros(3, 0, dtype=torch.long)
                     for p in self.positions]
        return InterleavedOutput(sequences, self.image_embeds, positions)


class _Sampler:
    """Logits -> next token ids: bans forced-only tokens, then greedy or temperature/top-k/top-p."""

    def __init__(self, model, do_sample, temperature, top_k, top_p, generator):
        check_sampling_options(do_sample, temperature, top_k, top_p)
        self.banned = forced_only_ids(model)
        self.vision_start = model.vision_start_token_id
        self.do_sample, self.temperature, self.top_k, self.top_p = do_sample, temperature, top_k, top_p
        self.generator = generator

    def __call__(self, logits: torch.Tensor, allow_image: list[bool]) -> torch.Tensor:
        logits = logits.clone()  # (B, V)
        logits[:, self.banned] = float("-inf")
        for b, allowed in enumerate(allow_image):
            if not allowed:
                logits[b, self.vision_start] = float("-inf")
        return choose_tokens(logits, self.do_sample, self.temperature, self.top_k, self.top_p, self.generator)
