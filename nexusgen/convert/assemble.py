"""`nexusgen assemble --qwen QWEN_DIR --flux FLUX_DIR --out MODEL_DIR`: an untrained Nexus-Gen model folder
from the paper's starting points (stock Qwen2.5-VL-Instruct + FLUX.1-dev), loadable at once.

What each part of MODEL_DIR is (`nexusgen.loading.stock` says why each is initialised so):

=====================  ======================================================================
autoregressive/        the Qwen folder's files (linked), `model-nexusgen-heads.safetensors` with
                       the new vision head and prefill table, a merged index, nexusgen_ar.json
generation_decoder/    transformer/ = FLUX transformer/ (linked), adapter.safetensors (new),
                       pooled.safetensors = CLIP("")
editing_decoder/       transformer/ = the same files (linked), merger.safetensors (layer 0 of the
                       Qwen LLM + a new projector), pooled.safetensors
vae/                   FLUX vae/ (linked)
negative.safetensors   T5 embedding of the negative prompt (default "") + CLIP pooled vector of it:
                       the official CFG branch, computed once, T5 released
nexusgen.json          Nexus-GenV2's sampling defaults (50 steps, CFG 3, 504-px editing reference)
=====================  ======================================================================

Memory: nothing big is copied. Weight files are hard-linked (copied file to file where a link is not
possible, never through Python memory); the new tensors are the vision head, the prefill table, the
adapter and the merger's projector; T5 runs one block at a time. The folder is written under a temporary
name and renamed into place.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import torch

from nexusgen.config import PRESETS, NexusGenConfig, SamplingConfig, dtype_name
from nexusgen.files import atomic_folder, save_tensors, write_json
from nexusgen.loading.decoders import (
    ADAPTER_FILE,
    CONFIG_FILE,
    EDITING_DIR,
    GENERATION_DIR,
    MERGER_FILE,
    POOLED_FILE,
    POOLED_KEY,
    TRANSFORMER_DIR,
    VAE_DIR,
    read_vae_config,
)
from nexusgen.loading.folder import CONFIG_FILE as MODEL_CONFIG_FILE
from nexusgen.loading.folder import NEGATIVE_FILE
from nexusgen.loading.stock import (
    find_flux,
    is_qwen_folder,
    link_or_copy,
    new_adapter_state,
    new_merger_state,
    stock_decoder_config,
    transformer_config,
    write_autoregressive,
)
from nexusgen.loading.text_encoders import T5_MAX_LENGTH, clip_pooled, negative_branch

ASSEMBLY_FILE = "assembly.json"
Log = Callable[[str], None]


def link_folder(source: Path, target: Path) -> None:
    """Link every file of `source` (not sub-folders) into the new folder `target`."""
    target.mkdir(parents=True, exist_ok=True)
    for path in sorted(p for p in source.iterdir() if p.is_file()):
        link_or_copy(path, target / path.name)


def write_decoder(flux_transformer: Path, target: Path, config, connector: dict[str, torch.Tensor],
                  connector_file: str, pooled: torch.Tensor) -> None:
    """A decoder folder whose transformer/ is the FLUX transformer (linked)."""
    target.mkdir(parents=True)
    write_json(config.to_dict(), target / CONFIG_FILE)
    save_tensors({POOLED_KEY: pooled}, target / POOLED_FILE)
    save_tensors(connector, target / connector_file)
    link_folder(flux_transformer, target / TRANSFORMER_DIR)


def assemble_model(qwen_dir: str | os.PathLike, flux_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
                   negative_prompt: str = "", device: torch.device | str | None = None,
                   t5_max_length: int = T5_MAX_LENGTH, seed: int = 0, log: Log = print) -> dict:
    """Write an untrained Nexus-Gen model folder from stock Qwen2.5-VL-Instruct and FLUX.1-dev folders.

    Args:
        qwen_dir: stock Qwen2.5-VL-Instruct folder (transformers layout).
        flux_dir: FLUX.1-dev folder (diffusers layout: transformer/, vae/, text_encoder/, tokenizer/,
            text_encoder_2/, tokenizer_2/).
        out_dir: the model folder to write (replaced atomically if it exists).
        negative_prompt: prompt of the stored negative CFG branch ("" upstream).
        device: where T5 runs (default cuda if available, else cpu; bf16 on cuda, fp32 on cpu).
        t5_max_length: T5 tokens of the negative branch (512 for FLUX.1-dev).
        seed: torch seed of the new weights.
        log: receives one line per step.

    Returns:
        what was written, by part (also stored as MODEL_DIR/assembly.json).

    Raises:
        ValueError: a folder that is not what it should be, or parts whose widths disagree.
    """
    qwen, out = Path(qwen_dir), Path(out_dir)
    if not is_qwen_folder(qwen):
        raise ValueError(f"{qwen}: not a Qwen2.5-VL folder (config.json with model_type 'qwen2_5_vl')")
    flux = find_flux(flux_dir)
    for name in ("vae", "text_encoder"):
        if getattr(flux, name) is None:
            raise ValueError(f"{flux_dir}: no {name}/ (a FLUX.1-dev folder in diffusers layout has it)")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    report: dict = {"qwen": str(qwen.resolve()), "flux": str(Path(flux_dir).resolve()), "seed": seed,
                    "negative_prompt": negative_prompt}
    log(f"assembling {qwen} + {flux_dir} -> {out}")
    pooled = clip_pooled(flux.text_encoder, flux.tokenizer, "")
    negative = _negative(flux, negative_prompt, device, t5_max_length, log, pooled)
    with atomic_folder(out) as tmp:
        ar_config, dtype, heads = write_autoregressive(qwen, tmp / "autoregressive", seed)
        report["autoregressive"] = f"linked from {qwen}; new: {heads}"
        log(f"  autoregressive: {report['autoregressive']}")
        transformer = transformer_config(flux.transformer)
        configs = {kind: stock_decoder_config(ar_config, transformer, kind == "editing")
                   for kind in ("generation", "editing")}
        vae_config = read_vae_config(flux.vae)
        _check_widths(configs["generation"], pooled, negative, vae_config, flux)
        adapter = {k: v.to(dtype) for k, v in new_adapter_state(configs["generation"], seed).items()}
        write_decoder(flux.transformer, tmp / GENERATION_DIR, configs["generation"], adapter, ADAPTER_FILE, pooled)
        merger = {k: v.to(dtype) for k, v in new_merger_state(configs["editing"].merger, qwen, seed).items()}
        write_decoder(flux.transformer, tmp / EDITING_DIR, configs["editing"], merger, MERGER_FILE, pooled)
        report["decoders"] = (f"DiT linked from {flux.transformer} ({transformer['num_layers']}+"
                              f"{transformer['num_single_layers']} blocks); new adapter; merger = Qwen layer 0 + "
                              f"new projector")
        log(f"  decoders: {report['decoders']}")
        link_folder(flux.vae, tmp / VAE_DIR)
        report["vae"] = f"linked from {flux.vae}"
        if negative is not None:
            save_tensors(negative, tmp / NEGATIVE_FILE)
        sampling = SamplingConfig(**PRESETS["nexus-gen-v2"]["sampling"])
        config = NexusGenConfig(ar=ar_config, generation_decoder=configs["generation"],
                                editing_decoder=configs["editing"], vae=vae_config,
                                sampling=sampling, reference_image_px=PRESETS["nexus-gen-v2"]["reference_image_px"],
                                dtype=dtype_name(dtype))
        write_json(config.to_json_dict(), tmp / MODEL_CONFIG_FILE)
        report["sampling"] = dataclasses.asdict(sampling)
        write_json(report, tmp / ASSEMBLY_FILE)
    log(f"  written {out}")
    return report


def _negative(flux, prompt: str, device: torch.device, max_length: int, log: Log,
              empty_pooled: torch.Tensor) -> dict[str, torch.Tensor] | None:
    if flux.text_encoder_2 is None or flux.tokenizer_2 is None:
        log("  negative branch: no text_encoder_2/ + tokenizer_2/ -- not stored; classifier-free guidance "
            "stays off until it is (add them and assemble again)")
        return None
    tensors = negative_branch(flux.text_encoder_2, flux.tokenizer_2, flux.text_encoder, flux.tokenizer, prompt,
                              device, max_length, pooled=empty_pooled if prompt == "" else None)
    log(f"  negative branch: T5({prompt!r}) {tuple(tensors['prompt_embeds'].shape)} on {device}, CLIP pooled of it")
    return tensors


def _check_widths(config, pooled: torch.Tensor, negative: dict | None, vae, flux) -> None:
    if pooled.shape != (config.pooled_dim,):
        raise ValueError(f"{flux.text_encoder}: CLIP width {pooled.shape[0]} != the DiT's pooled_projection_dim "
                         f"{config.pooled_dim}")
    if negative is not None and negative["prompt_embeds"].shape[-1] != config.context_dim:
        raise ValueError(f"{flux.text_encoder_2}: T5 width {negative['prompt_embeds'].shape[-1]} != the DiT's "
                         f"joint_attention_dim {config.context_dim}")
    if vae.latent_channels != config.latent_channels:
        raise ValueError(f"{flux.vae}: {vae.latent_channels} latent channels, the DiT takes {config.latent_channels}")
