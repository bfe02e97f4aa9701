"""LoRA fine-tuning through `peft`, merged into plain weights on export.

LoRA replaces full training of the *targeted linear layers inside the trainable parts* only: a
targeted layer's base weight is frozen and gets low-rank adapters; every other parameter keeps the
trainable flag the stage gave it (so new heads such as the vision head or the adapter are still
trained in full). Layers in frozen parts are never adapted.
"""

from __future__ import annotations

import re

import torch

from nexusgen.train.config import LoraConfig

# Module-name suffixes adapted when `lora.target_modules` is empty: the attention and MLP projections
# of Qwen2.5 (q/k/v/o_proj, gate/up/down_proj) and of the diffusers FLUX transformer (to_q/k/v/out.0,
# add_*_proj, proj_mlp, proj_out, ff.net.*).
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                   "to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj",
                   "to_add_out", "proj_mlp", "proj_out", "ff.net.0.proj", "ff.net.2",
                   "ff_context.net.0.proj", "ff_context.net.2")


def lora_target_names(module: torch.nn.Module, suffixes) -> list[str]:
    """Full names of trainable nn.Linear layers whose name ends with one of `suffixes`."""
    names = []
    for name, sub in module.named_modules():
        if isinstance(sub, torch.nn.Linear) and sub.weight.requires_grad and \
                any(name == s or name.endswith("." + s) for s in suffixes):
            names.append(name)
    return names


def apply_lora(module: torch.nn.Module, config: LoraConfig) -> list[str]:
    """Inject LoRA adapters in place; returns the adapted layer names.

    Raises:
        ValueError: no trainable linear layer matches the targets.
    """
    from peft import LoraConfig as PeftLoraConfig
    from peft import inject_adapter_in_model

    targets = lora_target_names(module, config.target_modules or DEFAULT_TARGETS)
    if not targets:
        raise ValueError(f"LoRA: no trainable nn.Linear matches {config.target_modules or DEFAULT_TARGETS}")
    # A full-match regex over exact names: peft's suffix matching could also catch frozen layers.
    pattern = "^(" + "|".join(re.escape(t) for t in targets) + ")$"
    peft_config = PeftLoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
                                 target_modules=pattern, bias="none")
    was_trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    inject_adapter_in_model(peft_config, module)
    for name, param in module.named_parameters():
        if "lora_" in name:
            param.requires_grad_(True)
        elif ".base_layer." in name:
            param.requires_grad_(False)
        else:
            param.requires_grad_(name in was_trainable)
    return targets


@torch.no_grad()
def merge_lora(module: torch.nn.Module) -> int:
    """Fold every LoRA adapter into its base layer and put the plain layer back; returns the count."""
    from peft.tuners.lora import LoraLayer

    merged = 0
    for name, sub in list(module.named_modules()):
        if isinstance(sub, LoraLayer):
            sub.merge()
            parent_name, _, child = name.rpartition(".")
            parent = module.get_submodule(parent_name) if parent_name else module
            setattr(parent, child, sub.get_base_layer())
            merged += 1
    return merged
