"""Text answers (understanding) with a KV cache and no per-token host round trips.

`generate_text` decodes a batch of prompts token by token. Everything a step needs stays on the device:
the next tokens, the per-row positions, the finished flags, the attention mask (allocated once for the
whole answer and read as a growing slice) and the sampling itself (a device generator). The only host
synchronisation per step is the check whether every row has finished. Image output is banned (answers are
text). The prompt is fed exactly as `ar_generation.generate_interleaved` feeds it, so greedy answers are
the same token for token.

Sampling (`do_sample=True`, `token_sampling.choose_tokens`): temperature, then top-k, then top-p (nucleus)
filtering, then a draw from the softmax; greedy (argmax) by default, as the official app's generation config
effectively is.

Shape legend: B batch, L prompt length, T max_new_tokens, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nexusgen.models.token_sampling import check_sampling_options, choose_tokens, forced_only_ids


@dataclass
class TextOutput:
    """Attributes:
        sequences: per prompt, the generated ids (1-D int64, CPU), ending with the end-of-turn token if one
            was generated (the processor decodes them: `NexusGenProcessor.decode_answer`).
    """

    sequences: list[torch.Tensor]


@torch.no_grad()
def generate_text(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                  pixel_values: torch.Tensor | None = None, image_grid_thw: torch.Tensor | None = None, *,
                  max_new_tokens: int = 1024, do_sample: bool = False, temperature: float = 1.0, top_k: int = 0,
                  top_p: float = 1.0, generator: torch.Generator | None = None) -> TextOutput:
    """Text answers for a batch of prompts (input images allowed, image output banned).

    Args:
        model: a NexusGenARModel.
        input_ids: (B, L) prompts ending with the open assistant turn, padded on either side.
        attention_mask: (B, L), default all ones.
        pixel_values: (P, patch_dim) input images, or None.
        image_grid_thw: (I, 3) grids of the input images in order, or None.
        max_new_tokens: per row.
        do_sample, temperature, top_k, top_p: sampling settings (`choose_tokens`); greedy by default.
        generator: a generator on the model's device, for reproducible sampling.

    Returns:
        TextOutput.
    """
    from nexusgen.models.ar_generation import _GenerationState

    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    check_sampling_options(do_sample, temperature, top_k, top_p)
    state = _GenerationState(model, input_ids, attention_mask, pixel_values, image_grid_thw)
    device = model.vision_head.weight.device
    batch, past = state.batch, state.mask.shape[1]
    mask = torch.ones(batch, past + max_new_tokens, dtype=state.mask.dtype, device=device)
    mask[:, :past] = state.mask.to(device)
    banned = _banned_ids(model, device)
    eos = model.eos_token_ids
    tokens = state.last_ids.to(device)[:, None]  # (B, 1): the last prompt token is fed by the first step
    positions = torch.tensor(state.next_pos, device=device).view(1, batch, 1).repeat(3, 1, 1)  # (3, B, 1)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    out = torch.zeros(batch, max_new_tokens, dtype=torch.long, device=device)
    cache, steps, finished = state.cache, 0, [False] * batch
    for step in range(max_new_tokens):
        if any(finished):  # a finished row feeds masked slots from now on (its outputs are ignored)
            mask[:, past + step] = (~done).to(mask.dtype)
        hidden, cache = model.language_model(model.embed_tokens(tokens), mask[:, :past + step + 1], positions,
                                             past_key_values=cache, use_cache=True)
        logits = model.vlm.lm_head(hidden[:, -1]).float()  # (B, V)
        logits[:, banned] = float("-inf")
        tokens = choose_tokens(logits, do_sample, temperature, top_k, top_p, generator)[:, None]
        out[:, step] = tokens[:, 0]
        positions += 1
        for token_id in eos:
            done |= tokens[:, 0] == token_id
        steps = step + 1
        finished = done.tolist()  # the one host synchronisation of a step
        if all(finished):
            break
    return TextOutput([_until_end(row, eos) for row in out[:, :steps].cpu()])


def _until_end(row: torch.Tensor, eos: list[int]) -> torch.Tensor:
    """A row's generated ids up to and including its first end-of-turn token (all of them if none)."""
    for index, token in enumerate(row.tolist()):
        if token in eos:
            return row[:index + 1]
    return row


def _banned_ids(model, device: torch.device) -> torch.Tensor:
    """Tokens a text answer never contains: image spans (vision start / end, image and video pads)."""
    return torch.tensor([model.vision_start_token_id, *forced_only_ids(model)], device=device)
