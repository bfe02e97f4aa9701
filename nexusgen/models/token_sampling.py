"""The next token of a decoding step: greedy, or a draw after temperature, top-k and top-p filtering.

Shared by the two decode loops (`text_generation.generate_text` for text answers, `ar_generation`'s
interleaved text-and-image loop), so both sample alike; neither imports the other for it.

Shape legend: B batch, V vocabulary.
"""

from __future__ import annotations

import torch

from nexusgen.validation import check_sampling


def check_sampling_options(do_sample: bool, temperature: float, top_k: int, top_p: float) -> None:
    """ValueError for sampling settings that cannot be used (`nexusgen.validation.check_sampling`, and a
    temperature above 0 when sampling)."""
    check_sampling(temperature, top_k, top_p)
    if do_sample and not temperature > 0:
        raise ValueError(f"temperature must be > 0 when sampling, got {temperature}")


def forced_only_ids(model) -> list[int]:
    """Tokens a NexusGenARModel never samples, only forces: an image span's `<|vision_end|>` and
    `<|image_pad|>`, and the video pad where the config has one."""
    ids = [model.vision_end_token_id, model.image_token_id]
    video = getattr(model.config.qwen_config, "video_token_id", None)
    return ids + ([video] if video is not None else [])


def choose_tokens(logits: torch.Tensor, do_sample: bool = False, temperature: float = 1.0, top_k: int = 0,
                  top_p: float = 1.0, generator=None) -> torch.Tensor:
    """Next token per row from (B, V) logits (banned tokens already at -inf): argmax, or a draw after
    temperature, top-k and top-p filtering. Returns (B,) int64 on the logits' device.

    `generator`: None, one `torch.Generator`, or one per row (each row's stream then does not depend on the
    batch it is in). A draw happens on the generator's device: a generator on the logits' device keeps the
    decode loop free of host round trips; a CPU generator gives the same tokens on any device.
    """
    if not do_sample:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        remove = probs.cumsum(-1) - probs > top_p  # keep the token that crosses top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(remove, float("-inf")))
    probs = logits.softmax(-1)
    if isinstance(generator, (list, tuple)):  # one stream per row
        if len(generator) != probs.shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {probs.shape[0]}")
        return torch.cat([_draw(probs[b:b + 1], g) for b, g in enumerate(generator)])
    return _draw(probs, generator)


def _draw(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One multinomial draw per row, on the generator's device; (B,) on the device of `probs`."""
    source = probs.to(generator.device) if generator is not None else probs
    return torch.multinomial(source, 1, generator=generator).squeeze(-1).to(probs.device)
