"""AdamW with decay / no-decay parameter groups, and the warm-up + cosine/constant LR schedule."""

from __future__ import annotations

import math

import torch

from nexusgen.train.config import TrainConfig


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Split the trainable parameters: weight decay on matrices only.

    Biases, norm scales and other 1-D tensors are not decayed (the usual GPT / DiT practice: decaying
    a LayerNorm gain towards 0 only fights the normalisation).
    """
    decay, no_decay = [], []
    for _, param in model.named_parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    if not decay and not no_decay:
        raise ValueError("the model has no trainable parameters (check stage.trainable)")
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW over `model`'s trainable parameters at peak `config.lr`."""
    o = config.optim
    # foreach=False: the per-tensor path is deterministic and bitwise identical however the tensors are
    # grouped, which keeps DDP / FSDP / resume comparisons exact; the fused kernels matter on GPU only.
    foreach = torch.cuda.is_available()
    return torch.optim.AdamW(param_groups(model, o.weight_decay), lr=config.lr, betas=tuple(o.betas),
                             eps=o.eps, foreach=foreach)


class LRLambda:
    """lr multiplier at a step: linear warm-up to 1, then cosine to `min_ratio` (or constant 1).

    A small object rather than a closure so that `LambdaLR.state_dict()` records its settings.
    """

    def __init__(self, kind: str, warmup_steps: int, max_steps: int, min_ratio: float):
        self.kind, self.warmup_steps = kind, warmup_steps
        self.max_steps, self.min_ratio = max_steps, min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps  # never exactly 0: the first step already moves
        if self.kind == "constant":
            return 1.0
        span = max(1, self.max_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer,
                    config: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    s = config.schedule
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, LRLambda(s.kind, s.warmup_steps, config.max_steps, s.min_lr_ratio))
