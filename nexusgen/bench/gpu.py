"""`nexusgen bench gpu`: the real Nexus-GenV2 parts at real size on one GPU, in about 3 minutes. JSON.

Every part is built with random weights directly on the device in the compute dtype (parameters on the
meta device first; bf16 on a GPU). Phases, each with its peak allocated memory:

* `peak`: the dense-compute ceiling, the best of back-to-back GEMMs (large squares and the DiT's own
  shapes at 1024^2) timed with one synchronisation, so achieved rates are judged against this GPU, now;
* `parts` (computed on the meta device): weights GB per part in bf16 and the DiT in fp8, at the depth run
  and at real depth, and host-to-device bytes per request (understand / generate / edit, first and steady
  state) under each residency policy for this device's memory;
* `ar`: one-pass prediction of a generation request's 81 embeddings, an edit request's (a 512^2 source
  through the ViT), and text decoding (KV cache) tokens/s;
* `dit`: one generation-decoder step at each size without CFG, with the T5 negative branch (81-token
  positive and 512-token negative contexts: two passes) and with the null branch batched (batch 2), the
  editing decoder's step (merger + 405-token context); counted FLOPs, achieved TFLOP/s, fraction of peak;
* `vae`: decode ms per size;
* `e2e`: `NexusGen.generate` end to end (AR + denoising + VAE) at the largest size, 50 steps, without and
  with CFG 3 (T5 negative), residency `auto` (its report included);
* `fp8`: the DiT converted to fp8 storage: GB and step ms.

The same command runs on a CPU at real widths and reduced depth (`--blocks 1 --vocab 272 --sizes 32 ...`,
fp32); a test runs it that way. Options change sizes, never the method.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass

import torch

from nexusgen.bench import count_flops, device_ms, gemm_peak, synchronize
from nexusgen.bench.real_size import (
    ar_config,
    decoder_config,
    part_bytes,
    part_factories,
    tokenizer_for,
)
from nexusgen.models.decoder import EditingDecoder
from nexusgen.models.memory import enable_fp8_storage, parameter_bytes, peak_memory, reset_peak_memory
from nexusgen.models.placement import build_random, materialize_random_, meta_parameters
from nexusgen.pipelines.residency import POLICIES, bytes_moved_per_request, capacity_for, device_capacity

GB = 1e9
PROMPT = "a red fox sitting in tall grass at sunrise, watercolour"
REQUESTS = {"understand": ["autoregressive"], "generate": ["autoregressive", "generation_decoder", "vae"],
            "edit": ["autoregressive", "editing_decoder", "vae"]}
H100_BYTES = 81559 * 2**20
"""An 80 GB H100's memory, for the computed residency table when the run has no GPU."""


@dataclass(frozen=True)
class GPUBenchSettings:
    """What `nexusgen bench gpu` measures (its options; the defaults are the real model on one GPU)."""

    device: str | None = None
    """cuda if available, else cpu."""
    dtype: str | None = None
    """"float32" or "bfloat16"; default bf16 on cuda, fp32 on cpu."""
    blocks: int | None = None
    """Depth of every transformer (LLM, ViT, DiT double and single); None: the real depths."""
    vocab: int | None = None
    """LLM vocabulary; None: the real 152064."""
    intermediate: int | None = None
    """LLM MLP width; None: the real 18944."""
    sizes: tuple[int, ...] = (512, 1024)
    """DiT / VAE image sides in pixels (multiples of 16)."""
    e2e_size: int = 1024
    e2e_steps: int = 50
    negative_tokens: int = 512
    """T5 negative context length."""
    edit_image: int = 512
    """Side of the edit source image."""
    decode_tokens: int = 64
    """Tokens of the text decode measurement."""
    repeats: int = 5
    """Timed calls per measurement."""
    warmup: int = 1
    """Untimed calls before each measurement."""


def _phase(device: torch.device, report: dict, name: str, fn) -> dict:
    reset_peak_memory(device)
    started = time.perf_counter()
    result = fn()
    result["seconds"] = time.perf_counter() - started
    result["peak_memory"] = peak_memory(device)
    report[name] = result
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def residency_table(parts: dict[str, int], capacity: int | None) -> dict:
    """Host-to-device GB of each request of the sequence understand, generate, edit, generate, twice (the
    second round is the steady state), under every policy (computed from the byte counts)."""
    names = ["understand", "generate", "edit", "generate_again"]
    sequence = [REQUESTS["understand"], REQUESTS["generate"], REQUESTS["edit"], REQUESTS["generate"]]
    table = {}
    for policy in POLICIES:
        moved = bytes_moved_per_request(policy, capacity, parts, sequence, repeats=2)
        table[policy] = {"round1": dict(zip(names, (m / GB for m in moved[:4]), strict=True)),
                         "round2": dict(zip(names, (m / GB for m in moved[4:]), strict=True))}
    return table


def parts_phase(settings: GPUBenchSettings, device: torch.device) -> dict:
    run = part_bytes(ar_config(settings.blocks, settings.vocab, settings.intermediate),
                     decoder_config(settings.blocks, settings.intermediate))
    real = run if settings.blocks is None and settings.vocab is None and settings.intermediate is None else \
        part_bytes(ar_config(), decoder_config())
    capacity = device_capacity(device) if device.type == "cuda" else capacity_for(H100_BYTES)
    sizes = {k: real[k] for k in ("autoregressive", "generation_decoder", "editing_decoder", "vae")}
    fp8_sizes = {**sizes, "generation_decoder": real["generation_decoder_fp8"],
                 "editing_decoder": real["editing_decoder"] - real["dit_bf16"] + real["dit_fp8"]}
    return {"weights_gb_run": {k: v / GB for k, v in run.items()},
            "weights_gb_real_depth": {k: v / GB for k, v in real.items()},
            "capacity_gb": capacity / GB, "capacity_of": "this GPU" if device.type == "cuda" else "an 80 GB H100",
            "bytes_moved_gb_per_request": residency_table(sizes, capacity),
            "bytes_moved_gb_per_request_fp8": residency_table(fp8_sizes, capacity),
            "peak_vram_gb_estimate": {
                "auto_generate_resident": sum(sizes[k] for k in REQUESTS["generate"]) / GB,
                "fp8_model_offload_largest_resident":
                    (max(sizes["autoregressive"], fp8_sizes["generation_decoder"]) + sizes["vae"]) / GB}}


def ar_phase(settings: GPUBenchSettings, device, dtype) -> dict:
    from PIL import Image

    from nexusgen.loading.autoregressive import image_processor_for
    from nexusgen.models.text_generation import generate_text
    from nexusgen.pipelines.inputs import image_request_inputs, to_device
    from nexusgen.processing.processor import NexusGenProcessor

    config = ar_config(settings.blocks, settings.vocab, settings.intermediate)
    model = build_random(part_factories(config, decoder_config())["autoregressive"], device, dtype)
    processor = NexusGenProcessor(tokenizer_for(config), image_processor_for(config), config)
    gen = to_device(image_request_inputs(processor, [PROMPT], "generate"), device)
    source = Image.new("RGB", (settings.edit_image, settings.edit_image), (120, 160, 200))
    edit = to_device(image_request_inputs(processor, ["make the sky purple"], "edit", [source]), device)
    with torch.inference_mode():
        def predict(batch):
            return lambda: model.predict_image_embeds(batch["input_ids"], batch["attention_mask"],
                                                      batch["pixel_values"].to(dtype), batch["image_grid_thw"])
        result = {"weights_gb": parameter_bytes(model) / GB, "prompt_tokens": int(gen["input_ids"].shape[1]),
                  "edit_prompt_tokens": int(edit["input_ids"].shape[1]),
                  "predict_ms": device_ms(predict(gen), settings.repeats, device, settings.warmup),
                  "edit_predict_ms": device_ms(predict(edit), settings.repeats, device, settings.warmup)}
        eos = model.eos_token_ids
        handle = model.vlm.lm_head.register_forward_hook(lambda m, a, out: out.index_fill_(-1, torch.tensor(
            eos, device=out.device), float("-inf")))  # fixed-length answers
        try:
            def decode(tokens: int):
                return lambda: generate_text(model, gen["input_ids"], gen["attention_mask"], max_new_tokens=tokens)
            prefill_ms = device_ms(decode(1), 1, device, settings.warmup)  # the prompt and the first token
            total_ms = device_ms(decode(settings.decode_tokens + 1), 1, device, settings.warmup)
        finally:
            handle.remove()
    result["decode_tokens"] = settings.decode_tokens
    result["decode_tokens_per_s"] = settings.decode_tokens / max(total_ms - prefill_ms, 1e-6) * 1000
    return result


def _step(decoder, latent: int, contexts: list[int], dtype, device, batch: int = 1):
    """A velocity call per context length (the T5 CFG pair is two calls), as one callable."""
    embed = decoder.config.embed_dim
    x = torch.randn(batch, decoder.config.latent_channels, latent, latent, device=device, dtype=dtype)
    t = torch.full((batch,), 0.5, device=device)
    conditions = []
    for length in contexts:
        if length == 81:
            conditions.append(decoder.condition(torch.randn(batch, 81, embed, device=device, dtype=dtype),
                                                latent_size=(latent, latent)))
        else:  # the T5 negative branch: FLUX's ordinary text path, `length` tokens of context width
            conditions.append(decoder.text_condition(torch.randn(batch, length, decoder.config.context_dim,
                                                                 device=device, dtype=dtype)))
    return lambda: [decoder.velocity(x, t, c) for c in conditions]


def dit_phase(settings: GPUBenchSettings, device, dtype, peak: float, decoder) -> dict:
    result = {"weights_gb": parameter_bytes(decoder.transformer) / GB, "sizes": {}}
    with torch.inference_mode():
        for size in settings.sizes:
            latent = size // 8
            off = _step(decoder, latent, [81], dtype, device)
            t5 = _step(decoder, latent, [81, settings.negative_tokens], dtype, device)
            null = _step(decoder, latent, [81], dtype, device, batch=2)
            flops = count_flops(off)
            entry = {"image_tokens": (latent // 2) ** 2,
                     "step_ms_cfg_off": device_ms(off, settings.repeats, device, settings.warmup),
                     "step_ms_cfg_t5": device_ms(t5, settings.repeats, device, settings.warmup),
                     "step_ms_cfg_null_batched": device_ms(null, settings.repeats, device, settings.warmup),
                     "step_tflop_cfg_off": flops / 1e12}
            entry["tflops_achieved"] = flops / (entry["step_ms_cfg_off"] / 1000) / 1e12
            entry["fraction_of_peak"] = entry["tflops_achieved"] * 1e12 / peak
            result["sizes"][str(size)] = entry
        with meta_parameters():  # the same DiT, a merger of its own
            editing = EditingDecoder(decoder.config, transformer=decoder.transformer)
        materialize_random_(editing.merger, device, dtype, seed=4)
        editing.pooled_embeds = decoder.pooled_embeds
        size = settings.sizes[0]
        latent = size // 8
        embed = decoder.config.embed_dim
        side = max(settings.edit_image // 28, 1)  # the source's token grid (upstream's 504-px reference: 18)
        target = torch.randn(1, 81, embed, device=device, dtype=dtype)
        reference = torch.randn(1, side * side, embed, device=device, dtype=dtype)
        x = torch.randn(1, decoder.config.latent_channels, latent, latent, device=device, dtype=dtype)
        t = torch.full((1,), 0.5, device=device)

        def edit_step():
            condition = editing.condition(target, latent_size=(latent, latent), reference_embeds=reference,
                                          reference_grid=(side, side), target_grid=(9, 9))
            return editing.velocity(x, t, condition)
        result["editing_step_ms"] = {str(size): device_ms(edit_step, settings.repeats, device, settings.warmup)}
        result["editing_context_tokens"] = 81 + side * side
        result["merger_weights_gb"] = parameter_bytes(editing.merger) / GB
    return result


def vae_phase(settings: GPUBenchSettings, device, dtype, vae) -> dict:
    result = {"weights_gb": parameter_bytes(vae) / GB, "decode_ms": {}}
    with torch.inference_mode():
        for size in settings.sizes:
            latents = torch.randn(1, 16, size // 8, size // 8, device=device, dtype=dtype)
            result["decode_ms"][str(size)] = device_ms(lambda latents=latents: vae.decode(latents).sample,
                                                       settings.repeats, device, settings.warmup)
    return result


def e2e_phase(settings: GPUBenchSettings, device, dtype, ar, decoder, vae) -> dict:
    from nexusgen.api import NexusGen
    from nexusgen.config import NexusGenConfig, SamplingConfig
    from nexusgen.loading.autoregressive import image_processor_for
    from nexusgen.loading.folder import ModelParts
    from nexusgen.models.vae import VAE_PRESETS

    config = NexusGenConfig(ar=ar.config, generation_decoder=decoder.config, vae=VAE_PRESETS["nexus-gen-v2"],
                            sampling=SamplingConfig(num_steps=settings.e2e_steps, guidance_scale=3.0, negative="t5",
                                                    height=settings.e2e_size, width=settings.e2e_size))
    negative = {"prompt_embeds": torch.randn(1, settings.negative_tokens, decoder.config.context_dim, dtype=dtype),
                "pooled": torch.randn(1, decoder.config.pooled_dim, dtype=dtype)}
    parts = ModelParts(ar, tokenizer_for(ar.config), image_processor_for(ar.config), decoder, None, vae, config,
                       negative, source="random real-size parts")
    model = NexusGen(parts, device=device, dtype=dtype, progress=False, offload="auto")
    result = {"size": settings.e2e_size, "steps": settings.e2e_steps}
    for name, scale in (("no_cfg", 1.0), ("cfg3_t5", 3.0)):
        model.generate(PROMPT, num_steps=1, guidance_scale=scale)  # warm: kernels, residency
        reset_peak_memory(device)
        started = time.perf_counter()
        model.generate(PROMPT, guidance_scale=scale)
        synchronize(device)
        result[f"generate_s_{name}"] = time.perf_counter() - started
        result[f"peak_memory_{name}"] = peak_memory(device)
    result["residency"] = model.runtime.residency.report()
    return result


def fp8_phase(settings: GPUBenchSettings, device, dtype, decoder) -> dict:
    enable_fp8_storage(decoder.transformer)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    size = settings.sizes[-1]
    with torch.inference_mode():
        step = device_ms(_step(decoder, size // 8, [81], dtype, device), settings.repeats, device, settings.warmup)
    return {"dit_weights_gb": parameter_bytes(decoder.transformer) / GB, "size": size, "step_ms_cfg_off": step}


def _peak(device: torch.device, dtype: torch.dtype, sizes: list[int]) -> dict:
    if device.type == "cuda":
        tokens = (sizes[-1] // 16) ** 2 + 81
        shapes = [(8192, 8192, 8192), (4096, 4096, 4096), (tokens, 3072, 12288), (tokens, 12288, 3072),
                  (tokens, 3072, 9216)]
        return gemm_peak(device, dtype, shapes, repeats=10)
    return gemm_peak(device, dtype, [(1024, 1024, 1024), (2048, 2048, 2048)], repeats=2)


def run(settings: GPUBenchSettings | None = None) -> dict:
    """`nexusgen bench gpu`: the report (printed as JSON); `settings` default to the real model on one GPU."""
    settings = settings or GPUBenchSettings()
    device = torch.device(settings.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, settings.dtype) if settings.dtype else (
        torch.bfloat16 if device.type == "cuda" else torch.float32)
    started = time.perf_counter()
    report = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "dtype": str(dtype).removeprefix("torch."), "blocks": settings.blocks or "real",
              "vocab": settings.vocab or "real", "intermediate": settings.intermediate or "real",
              "sizes": list(settings.sizes),
              "threads": torch.get_num_threads(), "statistic": "mean of back-to-back calls, one sync"}
    torch.manual_seed(0)
    peak = _phase(device, report, "peak", lambda: _peak(device, dtype, settings.sizes))
    report["peak"]["method"] = "best of back-to-back GEMMs (squares and the DiT's own shapes), one sync"
    _phase(device, report, "parts", lambda: parts_phase(settings, device))
    _phase(device, report, "ar", lambda: ar_phase(settings, device, dtype))
    factories = part_factories(ar_config(settings.blocks, settings.vocab, settings.intermediate),
                               decoder_config(settings.blocks, settings.intermediate))
    decoder = build_random(factories["generation_decoder"], device, dtype, seed=1)
    vae = build_random(factories["vae"], device, dtype, seed=2)
    _phase(device, report, "dit", lambda: dit_phase(settings, device, dtype, peak["flops_per_s"], decoder))
    _phase(device, report, "vae", lambda: vae_phase(settings, device, dtype, vae))
    _phase(device, report, "e2e", lambda: e2e_phase(settings, device, dtype, build_random(
        factories["autoregressive"], device, dtype, seed=3), decoder, vae))
    _phase(device, report, "fp8", lambda: fp8_phase(settings, device, dtype, decoder))
    report["total_seconds"] = time.perf_counter() - started
    return report
