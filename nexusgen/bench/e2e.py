"""`nexusgen bench e2e`: end-to-end speed of the user-facing API. Prints JSON.

For `--model` (default the bundled shapes-mini; `tiny` for random weights), warm (after one untimed
call), medians over repeats:

* latency of `generate` for one image at the model's default size and steps, or `--steps N` (AR +
  denoising + VAE);
* throughput of `generate` at batch 16 vs batch 1 (images/s) and their ratio: the pipeline runs one AR
  forward and one decoder batch for the whole batch;
* `understand` decoding speed with the KV cache: new tokens per second for one question about one image,
  greedy, with the end-of-turn token banned so every call generates exactly `max_new_tokens` tokens;
* the roofline of batching: FLOPs of one `generate` (counted), the FLOP rate batch 1 reaches against this
  machine's matmul peak (measured in the same run), and `batch_speedup_bound` = peak / batch-1 rate: no
  batching can multiply throughput by more, because a batch cannot run faster than the peak.

`--quick` uses fewer repeats and a smaller batch (a smoke test).
"""

from __future__ import annotations

import time

import torch
from PIL import Image

from nexusgen.bench import count_flops, matmul_peak, median_seconds
from nexusgen.openmp import current_policy

PROMPT = "a red circle left of a blue square"
QUESTION = "How many shapes are there?"


class _NoEndOfTurn:
    """Forward hook on the LM head that bans the end-of-turn tokens (fixed-length decoding)."""

    def __init__(self, model):
        self.ids = model.parts.ar_model.eos_token_ids
        self.handle = model.parts.ar_model.vlm.lm_head.register_forward_hook(self)

    def __call__(self, module, inputs, output):
        output[..., self.ids] = float("-inf")
        return output

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def understanding_speed(model, repeats: int, max_new_tokens: int) -> dict:
    """New tokens per second of `understand` (one image, greedy, KV cache)."""
    image = Image.new("RGB", (model.image_size, model.image_size), (250, 250, 250))
    with _NoEndOfTurn(model):
        seconds = median_seconds(lambda: model.understand(image, QUESTION, max_new_tokens=max_new_tokens),
                                  repeats)
    return {"understand_new_tokens": max_new_tokens, "understand_seconds_median": seconds,
            "understand_tokens_per_s": max_new_tokens / seconds}


def generation_speed(model, repeats: int, batch: int, num_steps: int) -> dict:
    """Warm single-image latency and batch-vs-single throughput of `generate`."""
    single = median_seconds(lambda: model.generate(PROMPT, seed=0, num_steps=num_steps), repeats)
    prompts = [PROMPT] * batch
    batched = median_seconds(lambda: model.generate(prompts, seed=0, num_steps=num_steps), max(1, repeats // 2))
    return {"generate_latency_s_median": single, "generate_batch": batch,
            "generate_batch_seconds_median": batched, "images_per_s_batch1": 1 / single,
            f"images_per_s_batch{batch}": batch / batched, "batch_speedup": (batch / batched) * single}


def batching_roofline(model, report: dict) -> dict:
    """Counted FLOPs per image, achieved FLOP rates, and the most throughput batching could add."""
    flops = count_flops(lambda: model.generate(PROMPT, seed=0, num_steps=report["num_steps"]))
    peak = matmul_peak(model.runtime.device, sizes=(512, 1024))["flops_per_s"]
    batch1_rate = flops / report["generate_latency_s_median"]
    batched_rate = flops * report[f"images_per_s_batch{report['generate_batch']}"]
    return {"generate_gflop_per_image": flops / 1e9, "matmul_peak_gflop_per_s": peak / 1e9,
            "batch1_gflop_per_s": batch1_rate / 1e9, "batch1_fraction_of_peak": batch1_rate / peak,
            "batched_gflop_per_s": batched_rate / 1e9, "batch_speedup_bound": peak / batch1_rate}


def run(model_name: str = "shapes-mini", *, quick: bool = False, steps: int | None = None) -> dict:
    """`nexusgen bench e2e [--model M] [--steps N] [--quick]`: the report (printed as JSON).

    Args:
        model_name: anything `NexusGen.from_pretrained` accepts.
        quick: fewer repeats and a smaller batch.
        steps: generation steps (default: the model's own).
    """
    from nexusgen.api import NexusGen

    repeats, batch, tokens = (2, 4, 8) if quick else (5, 16, 32)
    started = time.perf_counter()
    model = NexusGen.from_pretrained(model_name, progress=False)
    load_seconds = time.perf_counter() - started
    sampling = model.config.sampling
    num_steps = sampling.num_steps if steps is None else steps
    report = {"model": model_name, "device": str(model.runtime.device), "dtype": str(model.runtime.dtype),
              "threads": torch.get_num_threads(), "omp_wait_policy": current_policy(), "quick": quick,
              "repeats": repeats,
              "load_seconds": load_seconds, "image_size": [sampling.height, sampling.width],
              "num_steps": num_steps, "guidance_scale": sampling.guidance_scale,
              "num_output_tokens": model.config.num_output_tokens}
    report.update(generation_speed(model, repeats, batch, num_steps))
    report.update(batching_roofline(model, report))
    report.update(understanding_speed(model, repeats, tokens))
    return report
