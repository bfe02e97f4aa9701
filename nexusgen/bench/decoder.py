"""`nexusgen bench decoder`: speed of the vision decoders. Prints JSON (medians over repeats).

Per preset (random weights; `tiny` at 64x64, `mid` at 256x256, and on a CUDA device with >= 40 GiB the
real `nexus-gen-v2` DiT at 512x512, bf16 and fp8 storage):

* one DiT step (one Euler step's velocity) of the generation decoder with CFG off (batch 1) and on
  (the null branch batched with the conditional one, batch 2), and the editing decoder's step (its
  context is N + M tokens);
* VAE encode and decode of one image;
* FLOPs of one CFG-off step (counted by `FlopCounterMode`) and the fraction of this machine's matmul peak
  (measured in the same run) that the step reaches;
* peak memory.

fp32 on CPU, bf16 on GPU. `--quick` runs `tiny` only with few repeats (a smoke test).
"""

from __future__ import annotations

import torch

from nexusgen.bench import count_flops, device_ms, gemm_peak, matmul_peak, median_seconds
from nexusgen.models.decoder import DECODER_PRESETS, EditingDecoder, GenerationDecoder, editing_context_ids
from nexusgen.models.memory import enable_fp8_storage, peak_memory, reset_peak_memory
from nexusgen.models.placement import build_random
from nexusgen.models.vae import VAE_PRESETS, build_vae

SIZES = {"tiny": 64, "mid": 256, "nexus-gen-v2": 512}
TARGET_GRID, REFERENCE_GRID = (9, 9), (18, 18)  # upstream's generation and editing-reference grids


def _median_ms(fn, repeats: int, device: torch.device) -> float:
    if device.type == "cuda":  # back to back, one sync: a sync per call measures launch latency
        return device_ms(fn, repeats, device)
    return 1000 * median_seconds(fn, repeats, device)


def matmul_peak_flops(device: torch.device, dtype: torch.dtype, n: int = 1024) -> float:
    """Best FLOP/s of square matmuls in `dtype`: the roofline of the dense layers (on a GPU n = 4096 and
    8192 timed back to back, so the peak is not launch-bound and a workload cannot exceed it)."""
    if device.type == "cuda":
        return gemm_peak(device, dtype, [(4096, 4096, 4096), (8192, 8192, 8192)])["flops_per_s"]
    return matmul_peak(device, sizes=(n,), repeats=3, dtype=dtype)["flops_per_s"]


def _build(preset: str, device: torch.device, dtype: torch.dtype, editing: bool):
    config = DECODER_PRESETS[preset]
    cls = EditingDecoder if editing else GenerationDecoder
    if preset != "nexus-gen-v2":
        return cls(config).to(device=device, dtype=dtype).eval()
    # 12 B parameters: built on the meta device, random values directly on the device in `dtype` (never fp32)
    decoder = build_random(lambda: cls(config), device, dtype)
    reset_peak_memory(device)  # the peak reported is the step's, not the build's
    return decoder


def _step_times(preset: str, device: torch.device, dtype: torch.dtype, repeats: int, fp8: bool) -> dict:
    size = SIZES[preset]
    latent = (size // 8, size // 8)
    config = DECODER_PRESETS[preset]
    decoder = _build(preset, device, dtype, editing=False)
    if fp8:
        enable_fp8_storage(decoder.transformer, compute_dtype=dtype)
    x = torch.randn(1, config.latent_channels, *latent, device=device, dtype=dtype)
    t = torch.full((1,), 0.5, device=device)
    embeds = torch.randn(1, TARGET_GRID[0] * TARGET_GRID[1], config.embed_dim, device=device, dtype=dtype)
    result = {"image_px": size, "image_tokens": latent[0] * latent[1] // 4,
              "dit_params_m": sum(p.numel() for p in decoder.transformer.parameters()) / 1e6}
    with torch.no_grad():
        condition = decoder.condition(embeds, latent_size=latent)
        both = decoder.condition(torch.cat([embeds, torch.zeros_like(embeds)]), latent_size=latent)  # CFG
        result["dit_step_ms_cfg_off"] = _median_ms(lambda: decoder.velocity(x, t, condition), repeats, device)
        result["dit_step_ms_cfg_on"] = _median_ms(
            lambda: decoder.velocity(torch.cat([x, x]), torch.cat([t, t]), both), repeats, device)
        flops = count_flops(lambda: decoder.velocity(x, t, condition))
    result["dit_step_gflop"] = flops / 1e9
    result["dit_step_tflops_achieved"] = flops / result["dit_step_ms_cfg_off"] / 1e9
    return result


def _editing_step(preset: str, device: torch.device, dtype: torch.dtype, repeats: int) -> float:
    size, config = SIZES[preset], DECODER_PRESETS[preset]
    latent = (size // 8, size // 8)
    decoder = _build(preset, device, dtype, editing=True)
    x = torch.randn(1, config.latent_channels, *latent, device=device, dtype=dtype)
    t = torch.full((1,), 0.5, device=device)
    target = torch.randn(1, 81, config.embed_dim, device=device, dtype=dtype)
    reference = torch.randn(1, 324, config.embed_dim, device=device, dtype=dtype)
    with torch.no_grad():
        condition = decoder.condition(target, latent_size=latent, reference_embeds=reference,
                                      reference_grid=REFERENCE_GRID, target_grid=TARGET_GRID)
        assert condition.context_ids.shape == editing_context_ids(TARGET_GRID, REFERENCE_GRID, latent).shape
        return _median_ms(lambda: decoder.velocity(x, t, condition), repeats, device)


def _vae_times(preset: str, device: torch.device, dtype: torch.dtype, repeats: int) -> dict:
    size = SIZES[preset]
    vae = build_vae(VAE_PRESETS[preset]).to(device)
    if dtype != torch.float32:
        vae.to(dtype)
    vae.eval()
    image = torch.rand(1, 3, size, size, device=device, dtype=dtype) * 2 - 1
    with torch.no_grad():
        latents = vae.encode(image).latent_dist.mode()
        encode = _median_ms(lambda: vae.encode(image).latent_dist.mode(), repeats, device)
        decode = _median_ms(lambda: vae.decode(latents).sample, repeats, device)
    return {"vae_encode_ms": encode, "vae_decode_ms": decode}


def run(quick: bool = False) -> dict:
    """`nexusgen bench decoder [--quick]`: the report (printed as JSON; `quick`: tiny only, few repeats)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    repeats = 3 if quick else 10
    presets = ["tiny"] if quick else ["tiny", "mid"]
    big_gpu = device.type == "cuda" and torch.cuda.get_device_properties(device).total_memory >= 40 * 2**30
    torch.manual_seed(0)
    peak = matmul_peak_flops(device, dtype, n=512 if quick else 1024)
    report = {"device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
              "dtype": str(dtype).removeprefix("torch."), "threads": torch.get_num_threads(),
              "matmul_peak_tflops": peak / 1e12, "quick": quick, "presets": {}}
    for preset in presets + (["nexus-gen-v2"] if big_gpu and not quick else []):
        reset_peak_memory(device)
        entry = _step_times(preset, device, dtype, repeats, fp8=False)
        entry["editing_dit_step_ms"] = _editing_step(preset, device, dtype, repeats)
        entry.update(_vae_times(preset, device, dtype, repeats))
        entry["fraction_of_matmul_peak"] = entry["dit_step_tflops_achieved"] * 1e12 / peak
        entry["peak_memory"] = peak_memory(device)
        if preset == "nexus-gen-v2":
            reset_peak_memory(device)
            fp8 = _step_times(preset, device, dtype, repeats, fp8=True)
            entry["fp8"] = {"dit_step_ms_cfg_off": fp8["dit_step_ms_cfg_off"],
                            "peak_memory": peak_memory(device)}
        report["presets"][preset] = entry
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return report
