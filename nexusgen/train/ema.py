"""Exponential moving average of the trainable weights (used for the DiT, as DiT / FLUX trainers do)."""

from __future__ import annotations

import torch


class EMA:
    """Keeps `shadow = decay * shadow + (1 - decay) * param` for every trainable parameter.

    The shadow lives in fp32 on the parameter's device. Under FSDP2 the parameters are DTensors; the
    shadow then holds this rank's local shards, and `state_dict` gathers them (full tensors).

    With `warmup`, update n uses ``min(decay, (1 + n) / (10 + n))`` (diffusers' ``EMAModel`` default): the
    first averages span a few steps and lengthen as training goes on, so the starting weights fade out
    instead of keeping ``decay ** n`` of the average. That matters when a stage starts from a parent trained
    for another conditioning: with 0.999, 13% of the parent's weights were still in the average after
    2,000 steps, and they halved the exported decoder's exact reconstructions (0.52 -> 0.15 after 1,000).

    Args:
        module: the unwrapped training module.
        decay: in (0, 1).
        warmup: ramp the decay up as above (else constant).
    """

    def __init__(self, module: torch.nn.Module, decay: float, warmup: bool = False):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay, self.warmup = decay, warmup
        self.params = {n: p for n, p in module.named_parameters() if p.requires_grad}
        self.shadow = {n: p.detach().clone().float() for n, p in self.params.items()}

    def decay_at(self, update: int) -> float:
        """The decay of update number `update` (1 = the first)."""
        return min(self.decay, (1 + update) / (10 + update)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, update: int = 1) -> None:
        """Average in the current weights; `update` = how many updates have been made, this one included
        (the optimizer step; it sets the warm-up decay, so a resumed run averages as an uninterrupted one)."""
        weight = 1.0 - self.decay_at(update)
        for name, param in self.params.items():
            self.shadow[name].lerp_(param.detach().float(), weight)

    def state_dict(self) -> dict[str, torch.Tensor]:
        # full_tensor() gathers an FSDP2 shard (collective): call on every rank
        return {n: (t.full_tensor() if hasattr(t, "full_tensor") else t).cpu()
                for n, t in self.shadow.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.shadow) - set(state)
        if missing:
            raise ValueError(f"EMA state lacks {sorted(missing)[:5]}")
        for name, tensor in self.shadow.items():
            value = state[name]
            if hasattr(tensor, "device_mesh"):  # DTensor shard: take this rank's slice of the full tensor
                from torch.distributed.tensor import distribute_tensor

                value = distribute_tensor(value.to(tensor.device), tensor.device_mesh, tensor.placements)
            tensor.copy_(value)

    @torch.no_grad()
    def copy_to(self, module: torch.nn.Module) -> None:
        """Overwrite the module's trainable weights with the averages (before export)."""
        for name, param in module.named_parameters():
            if name in self.shadow:
                param.copy_(self.shadow[name].to(param.dtype))
