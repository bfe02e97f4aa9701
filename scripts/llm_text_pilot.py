"""What the text-only pilots share (`text_comparison_pilot.py`, `text_lookup_pilot.py`): an autoregressive
folder's LLM run on text conversations without its ViT, and a plain AdamW loop over the LLM's weights that
prints the pilot's held-out measures as JSON lines."""

import json
import time

import numpy as np
import torch
import torch.nn.functional as F

from nexusgen.loading.autoregressive import load_autoregressive
from nexusgen.processing.processor import ImageOnlyProcessor


def load(folder: str):
    """(model, processor) of an autoregressive folder, on the CPU."""
    model, tokenizer, image_processor = load_autoregressive(folder, device="cpu")
    return model, ImageOnlyProcessor(tokenizer, image_processor, model.config)


def hidden_states(model, batch) -> torch.Tensor:
    """(B, L, D) final hidden states of a padded text batch."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    positions = model.compute_positions(ids, mask, None)
    return model.language_model(model.embed_tokens(ids), mask, positions)[0]


def teacher_forced(model, processor, conversations) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden states that predict each next token (B, L-1, D), its label (B, L-1), -100 outside answers)."""
    batch = processor.pad([processor.encode(messages, []) for messages in conversations], padding_side="right")
    return hidden_states(model, batch)[:, :-1], batch["labels"][:, 1:]


def answer_loss(model, processor, conversations) -> torch.Tensor:
    """Mean cross-entropy over the answers' tokens."""
    hidden, labels = teacher_forced(model, processor, conversations)
    rows = labels != -100
    return F.cross_entropy(model.vlm.lm_head(hidden[rows]).float(), labels[rows])


def train(model, batch_loss, evaluate, *, steps: int, eval_every: int, lr: float, seed: int) -> None:
    """AdamW on the LLM, its embeddings and head; `batch_loss(rng)` is a fresh batch's loss, `evaluate()` the
    held-out measures (a dict) printed with the step every `eval_every` steps, from step 0."""
    model.train()
    params = [p for name, p in model.named_parameters() if name.startswith("vlm.model.language_model")
              or "lm_head" in name or "embed_tokens" in name]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    rng, start = np.random.default_rng([seed, 0]), time.time()
    for step in range(steps + 1):
        if step:
            loss = batch_loss(rng)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if step % eval_every == 0:
            print(json.dumps({"step": step, **evaluate(), "seconds": round(time.time() - start)}), flush=True)
