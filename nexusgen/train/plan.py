"""`nexusgen train RECIPE --dry-run`: a stage's memory per GPU, planned before launching.

Each stage is built on the meta device (no weights are read or allocated) with the classes, parent
dimensions and trainable parts the real stage uses, and the memory of one GPU is added up for DDP and
FSDP2 on 1 and N ranks, with and without gradient checkpointing and LoRA (docs/training.md, "Memory").

Counted exactly (from the modules built on meta): parameters, trainable parameters, weights, gradients,
AdamW state and EMA in the precisions the loop keeps them (fp32 master weights, every part on the GPU in
fp32, frozen helpers included), FSDP2 shards (/N). Estimated (formulas below, stated in the output):
activations, the language-model logits, DDP's gradient buckets, FSDP2's gathered units. Not included: the
CUDA context and allocator fragmentation (keep ~10 % free), communication buffers, temporaries.

Activation formula (bf16 autocast, per token per transformer layer, elements stored for backward): the
layer input, normed input, q, attention output, the residual and its norm (6 h), k and v (2 h_kv), the
MLP's gate, up, activation and product (4 i), plus 2 h for the fp32 RMSNorm up-casts -> 8 h + 2 h_kv + 4 i,
2 bytes each. With gradient checkpointing each layer keeps only its input (h) and one layer is recomputed
at a time. FLUX blocks use the same formula with i = 4 h over the joint (image + context) sequence. The
AR stage adds its logits over text targets: T x V x (2 bf16 + 4 fp32 + 4 fp32 gradient) bytes, T = every
token of the micro-batch (an upper bound).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nexusgen.train.config import TrainConfig

GB = 1e9
GPU_GB = 80.0
FP32, BF16 = 4, 2


@dataclass
class StageShape:
    """What the memory plan needs from a stage built on meta."""

    parameters: int
    trainable: int
    helpers: int
    """Frozen models outside the training module (decoder stages: VAE, AR encoder)."""
    lora_targets: list[tuple[int, int, int]]
    """(in_features, out_features, bias size) of the Linear layers LoRA would adapt (their base weight and
    bias are frozen)."""
    largest_unit: int
    """Parameters of the biggest FSDP2 unit (a block, or the root's own parameters)."""
    layers: list[tuple[int, int, int, int]]
    """Per trained transformer layer: (tokens per sample, hidden h, KV width h_kv, MLP width i)."""
    logits: tuple[int, int] | None
    """(tokens per sample, vocabulary) for the AR stages' CE."""
    notes: list[str]


def plan_stage(config: TrainConfig, ranks: int = 8, seq_len: int = 4096) -> dict:
    """The memory plan of one stage (JSON-ready).

    Args:
        config: the resolved config (recipe + overrides; `stage.parent` gives the dimensions).
        ranks: N, the data-parallel size planned besides 1.
        seq_len: tokens per AR sample assumed for activations and logits.
    """
    shape = stage_shape(config, seq_len)
    lora_rank = config.lora.rank or 16
    lora_params = sum(lora_rank * (i + o) for i, o, _ in shape.lora_targets)
    lora_trainable = shape.trainable - sum(i * o + bias for i, o, bias in shape.lora_targets) + lora_params
    plans = []
    for world in sorted({1, ranks}):
        for strategy in ("ddp", "fsdp"):
            if strategy == "fsdp" and world == 1:
                continue
            for checkpointing in (False, True):
                for lora in (False, True) if shape.lora_targets else (False,):
                    plans.append(_plan(config, shape, world, strategy, checkpointing,
                                       lora_trainable if lora else shape.trainable, lora_params if lora else 0))
    configured = next(p for p in plans if p["strategy"] == (config.dist.strategy if ranks > 1 else "ddp")
                      and p["ranks"] == ranks and p["gradient_checkpointing"] == config.stage.gradient_checkpointing
                      and p["lora"] == bool(config.lora.rank and shape.lora_targets))
    return {"stage": config.stage.name, "configured": configured,
            "parameters": shape.parameters, "trainable_parameters": shape.trainable,
            "frozen_helper_parameters": shape.helpers,
            "lora": {"rank": lora_rank, "adapted_layers": len(shape.lora_targets),
                     "trainable_parameters": lora_trainable},
            "optimizer_state_gb": round(2 * FP32 * shape.trainable / GB, 2),
            "assumptions": {"global_batch": config.batch_size, "grad_accum_steps": config.optim.grad_accum_steps,
                            "ema": bool(config.stage.ema_decay), "ar_tokens_per_sample": seq_len,
                            "weights": "fp32 master weights for every part, bf16 autocast"},
            "notes": shape.notes, "plans": plans}


def _plan(config: TrainConfig, shape: StageShape, world: int, strategy: str, checkpointing: bool,
          trainable: int, lora_params: int) -> dict:
    micro = max(1, config.batch_size // (world * config.optim.grad_accum_steps))
    shard = world if strategy == "fsdp" else 1
    module = shape.parameters + lora_params
    memory = {"weights": FP32 * module / shard + FP32 * shape.helpers,
              "gradients": FP32 * trainable / shard,
              "optimizer": 2 * FP32 * trainable / shard,
              "ema": FP32 * trainable / shard if config.stage.ema_decay else 0.0,
              "activations": _activations(shape.layers, micro, checkpointing),
              "logits": _logits(shape.logits, micro)}
    if strategy == "ddp" and world > 1:
        memory["ddp_buckets"] = FP32 * trainable  # DDP's flat gradient buckets beside .grad
    if strategy == "fsdp":
        memory["fsdp_gathered_units"] = 2 * FP32 * shape.largest_unit  # current + prefetched unit
    peak = sum(memory.values())
    return {"strategy": strategy, "ranks": world, "gradient_checkpointing": checkpointing,
            "lora": bool(lora_params), "micro_batch": micro,
            "memory_gb": {**{k: round(v / GB, 4) for k, v in memory.items()}, "peak": round(peak / GB, 4)},
            f"fits_{int(GPU_GB)}gb": peak / GB <= 0.9 * GPU_GB}


def _activations(layers, micro: int, checkpointing: bool) -> float:
    per_layer = [tokens * micro * (8 * h + 2 * kv + 4 * i) * BF16 for tokens, h, kv, i in layers]
    if not per_layer:
        return 0.0
    if not checkpointing:
        return float(sum(per_layer))
    kept = sum(tokens * micro * h * BF16 for tokens, h, _, _ in layers)
    return float(kept + max(per_layer))


def _logits(logits, micro: int) -> float:
    if logits is None:
        return 0.0
    tokens, vocab = logits
    return float(tokens * micro * vocab * (BF16 + FP32 + FP32))


# ---------------------------------------------------------------------------------------------------------
# Stages on the meta device
# ---------------------------------------------------------------------------------------------------------


def stage_shape(config: TrainConfig, seq_len: int) -> StageShape:
    """Build the stage's modules on meta (dimensions from `stage.parent`, else `stage.preset`)."""
    name = config.stage.name
    if name in ("ar", "vlm"):
        return _ar_shape(config, seq_len)
    if name in ("generation_decoder", "editing_decoder"):
        return _decoder_shape(config, name.removesuffix("_decoder"))
    return _vae_shape(config)


def _ar_shape(config: TrainConfig, seq_len: int) -> StageShape:
    from nexusgen.models.autoregressive import NexusGenARModel
    from nexusgen.train.stages import ar, vlm
    from nexusgen.train.stages.common import set_trainable
    from nexusgen.train.stages.parts import ar_config_of_parent

    ar_config = ar_config_of_parent(config)
    weights = {"token": 1.0, "image": 1.0, "pixels": 1.0, "semantic": 1.0}
    with torch.device("meta"):
        model = NexusGenARModel(ar_config)
        module = (vlm.VLMTrainModule if config.stage.name == "vlm" else ar.ARTrainModule)(model, weights)
    set_trainable(module, config.stage.trainable or (vlm.VLM_TRAINABLE if config.stage.name == "vlm"
                                                     else ar.AR_TRAINABLE))
    text = ar_config.qwen_config.text_config
    head_dim = text.hidden_size // text.num_attention_heads
    layer = (seq_len, text.hidden_size, text.num_key_value_heads * head_dim, text.intermediate_size)
    blocks = [*model.vlm.model.language_model.layers, *model.vlm.model.visual.blocks]
    return StageShape(parameters=_count(module), trainable=_count(module, trainable=True), helpers=0,
                      lora_targets=_lora_targets(module, config), largest_unit=_largest_unit(module, blocks),
                      layers=[layer] * text.num_hidden_layers, logits=(seq_len, text.vocab_size),
                      notes=[f"dimensions of {config.stage.parent or 'preset ' + config.stage.preset}"])


def _decoder_shape(config: TrainConfig, kind: str) -> StageShape:
    from nexusgen.models.autoregressive import NexusGenARModel
    from nexusgen.models.decoder import EditingDecoder, GenerationDecoder
    from nexusgen.train.stages.parts import ar_config_of_parent, decoder_config_of_parent, vae_of_parent_on_meta

    decoder_config = decoder_config_of_parent(config, kind)
    with torch.device("meta"):
        decoder = (GenerationDecoder if kind == "generation" else EditingDecoder)(decoder_config)
    vae = vae_of_parent_on_meta(config)
    helpers, notes = _count(vae), [f"dimensions of {config.stage.parent or 'preset ' + config.stage.preset}"]
    if _precomputed(config, kind):
        notes.append("precomputed embeddings: no AR model on the GPU")
    else:
        with torch.device("meta"):
            helpers += _count(NexusGenARModel(ar_config_of_parent(config)))
        notes.append("embeddings computed on the fly: the frozen AR model is on every GPU (fp32)")
    t = decoder.transformer
    width = decoder_config.num_attention_heads * decoder_config.attention_head_dim
    latent_side = config.data.image_size_px // 16  # VAE /8, then 2x2 patches
    context = 405 if kind == "editing" else 81  # upstream: 81 target (+ 324 reference) tokens
    tokens = latent_side * latent_side + context
    layers = [(tokens, width, width, 4 * width)] * (len(t.transformer_blocks) + len(t.single_transformer_blocks))
    module = decoder.requires_grad_(True)
    return StageShape(parameters=_count(module), trainable=_count(module), helpers=helpers,
                      lora_targets=_lora_targets(module, config),
                      largest_unit=_largest_unit(module, [*t.transformer_blocks, *t.single_transformer_blocks]),
                      layers=layers, logits=None, notes=notes)


def _vae_shape(config: TrainConfig) -> StageShape:
    from nexusgen.train.stages.parts import vae_of_parent_on_meta

    vae = vae_of_parent_on_meta(config).requires_grad_(True)
    return StageShape(parameters=_count(vae), trainable=_count(vae), helpers=0, lora_targets=[],
                      largest_unit=_count(vae), layers=[], logits=None,
                      notes=["activations of convolutional VAEs are not estimated"])


def _precomputed(config: TrainConfig, kind: str) -> bool:
    if not config.data.uses_files or not config.data.paths:
        return config.data.source == "embeds"
    from nexusgen.train.stages.generation_decoder import precomputed_embeddings

    return precomputed_embeddings(config, kind)


def _count(module: torch.nn.Module, trainable: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable)


def _largest_unit(module: torch.nn.Module, units: list[torch.nn.Module]) -> int:
    in_units = {id(p) for unit in units for p in unit.parameters()}
    root = sum(p.numel() for p in module.parameters() if id(p) not in in_units)
    return max([root, *(_count(unit) for unit in units)])


def _lora_targets(module: torch.nn.Module, config: TrainConfig) -> list[tuple[int, int, int]]:
    from nexusgen.train.lora import DEFAULT_TARGETS, lora_target_names

    layers = [module.get_submodule(n) for n in lora_target_names(module, config.lora.target_modules or DEFAULT_TARGETS)]
    return [(layer.in_features, layer.out_features, layer.bias.numel() if layer.bias is not None else 0)
            for layer in layers]


def plan_recipe(configs: dict[str, TrainConfig], ranks: int, seq_len: int) -> dict:
    """`--dry-run` output for a recipe's stages ({name: config})."""
    return {"dry_run": True, "gpu_gb": GPU_GB, "ranks": ranks,
            "stages": {name: plan_stage(config, ranks, seq_len) for name, config in configs.items()},
            "counted": ["parameters", "trainable_parameters", "weights", "gradients", "optimizer", "ema"],
            "estimated": ["activations", "logits", "ddp_buckets", "fsdp_gathered_units"],
            "fits_rule": f"peak <= 90% of {GPU_GB:g} GB (CUDA context and fragmentation not counted)"}

