"""`nexusgen bench train`: training throughput per stage, as a fraction of this machine's matmul peak.

For every stage whose model code is present, at the `tiny` and a `mid` preset: samples/s and achieved
FLOP/s of full training steps (forward, backward, clip, AdamW), where the FLOPs of a step are counted
by `torch.utils.flop_counter.FlopCounterMode` (matmuls, convolutions and attention; elementwise work
is not counted, so the fraction is a lower bound of the hardware's use). The peak is the best fp32
(CPU) or bf16 (GPU) square matmul measured in the same run. Prints JSON.
"""

from __future__ import annotations

import time

import torch

from nexusgen.bench import matmul_peak, synchronize
from nexusgen.recipes import get_recipe
from nexusgen.train.config import STAGES, TrainConfig, apply_overrides

# The mid-size runs: larger models and batches that stress matmuls the way real training does.
MID_OVERRIDES = {
    "vae": ["stage.preset=mid", "batch_size=8", "data.image_size_px=64"],
    "vlm": ["stage.preset=mid", "batch_size=8", "data.image_size_px=112"],
    "ar": ["stage.preset=mid", "batch_size=8", "data.image_size_px=112"],
    "generation_decoder": ["stage.preset=mid", "batch_size=8", "data.image_size_px=64"],
    "editing_decoder": ["stage.preset=mid", "batch_size=8", "data.image_size_px=64"],
}


def measure_matmul_peak(device: torch.device, sizes=(1024, 2048), repeats: int = 5) -> dict:
    """Best FLOP/s of an n x n @ n x n matmul (fp32 on CPU, bf16 on GPU) over sizes and repeats."""
    return matmul_peak(device, sizes=sizes, repeats=repeats)


def bench_stage(config: TrainConfig, *, steps: int, warmup: int = 2) -> dict:
    """Time `steps` training steps of `config` (after `warmup`); FLOPs counted on one extra step."""
    from torch.utils.flop_counter import FlopCounterMode

    from nexusgen.train import parallel
    from nexusgen.train.loop import build_training, next_micro_batches, train_step

    info = parallel.init_distributed(config.dist, config.device)
    parts = build_training(config, info)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if info.device.type == "cuda" else _null()

    def one_step():
        batches = next_micro_batches(parts.stage, config, info)
        train_step(parts.model, parts.optimizer, batches, config=config, autocast=autocast)
        return batches

    for _ in range(warmup):
        one_step()
    counter = FlopCounterMode(display=False)
    with counter:
        batches = one_step()
    flops_per_step = counter.get_total_flops()
    counts = {}
    for batch in batches:
        for name, value in (parts.stage.count(batch) if parts.stage.count else {}).items():
            counts[name] = counts.get(name, 0) + value
    synchronize(info.device)
    started = time.perf_counter()
    for _ in range(steps):
        one_step()
    synchronize(info.device)
    seconds = (time.perf_counter() - started) / steps
    params = sum(p.numel() for p in parts.stage.module.parameters())
    trainable = sum(p.numel() for p in parts.stage.module.parameters() if p.requires_grad)
    return {"params": params, "trainable_params": trainable, "batch_size": config.batch_size,
            "step_s": seconds, "flops_per_step": flops_per_step, "flops_per_s": flops_per_step / seconds,
            **{f"{k}_per_s": v / seconds for k, v in counts.items()}}


def run(quick: bool = False) -> dict:
    """`nexusgen bench train [--quick]`: the report (printed as JSON; `quick`: fewer steps and sizes)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    peak = measure_matmul_peak(device, sizes=(1024,) if quick else (1024, 2048), repeats=3 if quick else 5)
    results = {}
    for stage in STAGES:
        for size in ("tiny", "mid"):
            overrides = ["progress=false", "deterministic=false", "data.num_samples=64"]
            overrides += MID_OVERRIDES[stage] if size == "mid" else []
            key = f"{stage}/{size}"
            try:
                config = apply_overrides(get_recipe(f"tiny-{stage}"), overrides)
                result = bench_stage(config, steps=2 if quick else 8)
            except (ImportError, AttributeError, ValueError) as err:  # a stage whose parts have not landed
                results[key] = {"skipped": f"{type(err).__name__}: {err}"}
                continue
            result["fraction_of_peak"] = result["flops_per_s"] / peak["flops_per_s"]
            results[key] = result
    return {"benchmark": "train", "device": str(device), "quick": quick, "peak": peak, "stages": results,
            "goal": "ar/mid fraction_of_peak >= 0.30"}


def _null():
    import contextlib

    return contextlib.nullcontext()
