"""Building a stage's model parts: from the parent stage's exported folder, from stock weights, or from presets.

A stage starts from `stage.parent` (classified by `stages/parent.py`: a previous run dir, whose `final/`
is used, a model folder, an official Nexus-GenV2 folder, or a stock Qwen2.5-VL / FLUX folder) for every
part that the parent holds, and from the presets (`stage.preset`) otherwise; the parent's dimensions win.
A decoder stage whose parent has no AR model takes it from `stage.ar_parent`. Stock parents are built with
`nexusgen.loading.stock`, as upstream initialises them: the AR model from Qwen2.5-VL-Instruct with a new
vision head and prefill table; a decoder's DiT from FLUX's transformer with a new adapter, or a merger whose
layer is the AR model's LLM layer 0. The export writes the trained parts and copies the parents' untouched
parts, so RUN_DIR/final is a complete folder.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import torch

from nexusgen.train.config import TrainConfig
from nexusgen.train.parallel import print0
from nexusgen.train.stages.parent import STOCK_DIT_KINDS, Parent, classify_parent


def ar_parent(config: TrainConfig) -> Parent | None:
    """The parent the AR model comes from: `stage.parent` when it holds one, else `stage.ar_parent`."""
    parent = classify_parent(config.stage.parent) if config.stage.parent is not None else None
    if parent is not None and "autoregressive" in parent.parts:
        return parent
    return classify_parent(config.stage.ar_parent, "stage.ar_parent") if config.stage.ar_parent is not None else None


def stock_dit(config: TrainConfig) -> Path | None:
    """The FLUX transformer folder a new decoder's DiT starts from (`stage.parent` a FLUX.1-dev or
    FluxTransformer2DModel folder), else None."""
    if config.stage.parent is None:
        return None
    parent = classify_parent(config.stage.parent)
    return parent.parts["transformer"] if parent.kind in STOCK_DIT_KINDS else None


def parent_part(config: TrainConfig, part: str) -> Path | None:
    """Where the parents' `part` loads from (None if they have none): the AR model from `ar_parent`
    (a stock Qwen folder's is built by `build_autoregressive` with new heads), the VAE from `stage.parent`
    or else `stage.ar_parent` (FLUX.1-dev's vae/ is a diffusers AutoencoderKL folder as ours is), the
    decoders from `stage.parent`. A FLUX transformer is `stock_dit`."""
    if part == "autoregressive":
        source = ar_parent(config)
        return source.parts["autoregressive"] if source is not None else None
    if part == "transformer":
        return None
    for path in [config.stage.parent] + ([config.stage.ar_parent] if part == "vae" else []):
        parent = classify_parent(path) if path is not None else None
        if parent is not None and part in parent.parts:
            return parent.parts[part]
    return None


def build_vae(config: TrainConfig):
    """The VAE: the parent's `vae/` if there is one, else `VAE_PRESETS[preset]`."""
    from diffusers import AutoencoderKL

    from nexusgen.models.vae import VAE_PRESETS
    from nexusgen.models.vae import build_vae as build_from_config

    folder = parent_part(config, "vae")
    if folder is not None:
        return AutoencoderKL.from_pretrained(str(folder))
    if config.stage.parent is not None:
        print0(f"vae: new, {config.stage.preset} preset (stage.parent has none)")
    if config.stage.preset not in VAE_PRESETS:
        raise ValueError(f"unknown VAE preset {config.stage.preset!r}; known: {sorted(VAE_PRESETS)}")
    return build_from_config(VAE_PRESETS[config.stage.preset])


def build_decoder(config: TrainConfig, kind: str):
    """`GenerationDecoder` / `EditingDecoder` (kind 'generation' / 'editing') from the parent's decoder, a
    FLUX transformer (`stock_dit`) or the preset, with the settings of `stage.model` where this is the
    trained part."""
    from nexusgen.models.decoder import EditingDecoder, GenerationDecoder

    cls = GenerationDecoder if kind == "generation" else EditingDecoder
    settings = _model_settings(config, f"{kind}_decoder")
    folder = parent_part(config, f"{kind}_decoder")
    if folder is not None:
        from nexusgen.loading import decoders as decoder_loading  # the decoders engineer's loader

        decoder = getattr(decoder_loading, f"load_{kind}_decoder")(folder)
    elif stock_dit(config) is not None:
        decoder = _stock_decoder(config, kind)
    else:
        decoder_config = decoder_config_of_parent(config, kind)  # refuses an unknown preset
        if config.stage.parent is not None:
            print0(f"{kind} decoder: new, {config.stage.preset} preset (stage.parent has none)")
        return cls(decoder_config, transformer=_generation_dit(config, decoder_config) if kind == "editing" else None)
    if settings:
        decoder.config = dataclasses.replace(decoder.config, **settings)
    return decoder


def _stock_decoder(config: TrainConfig, kind: str):
    """A decoder as upstream starts one (fp32 master weights): the FLUX DiT, a new adapter or a merger
    from the AR model's layer 0 (`stage.ar_parent`, checked by `check_parent`), CLIP("") as pooled vector."""
    from nexusgen.loading.stock import flux_pooled, stock_decoder

    dit, ar = stock_dit(config), parent_part(config, "autoregressive")
    pooled = flux_pooled(dit)
    connector = "a new adapter" if kind == "generation" else f"a merger from the LLM layer 0 of {ar}"
    print0(f"{kind} decoder: DiT from {dit}, {connector}, pooled vector "
           + ("CLIP(\"\")" if pooled is not None else "zeros (no FLUX text_encoder/ beside it)"))
    return stock_decoder(dit, ar, kind == "editing", device="cpu", dtype=torch.float32, seed=config.seed,
                         pooled=pooled)


def _model_settings(config: TrainConfig, part_stage: str) -> dict:
    """The `stage.model` settings for a part: those the stage chose when it trains that part, else none."""
    return config.stage.model.chosen() if config.stage.name == part_stage else {}


def decoder_config_of_parent(config: TrainConfig, kind: str):
    """The decoder's `DecoderConfig`: the parent's own (its config.json, no weights read), else the preset's;
    with `stage.model`'s settings where this stage trains it."""
    from nexusgen.loading.decoders import read_decoder_config
    from nexusgen.models.decoder import DECODER_PRESETS

    settings = _model_settings(config, f"{kind}_decoder")
    folder = parent_part(config, f"{kind}_decoder")
    if folder is not None:
        return dataclasses.replace(read_decoder_config(folder), **settings)
    if stock_dit(config) is not None:
        from nexusgen.loading.stock import stock_decoder_config, transformer_config

        decoder_config = stock_decoder_config(ar_config_of_parent(config), transformer_config(stock_dit(config)),
                                              kind == "editing")
        return dataclasses.replace(decoder_config, **settings)
    if config.stage.preset not in DECODER_PRESETS:
        raise ValueError(f"unknown decoder preset {config.stage.preset!r}; known: {sorted(DECODER_PRESETS)}")
    return dataclasses.replace(DECODER_PRESETS[config.stage.preset], **settings)


def ar_config_of_parent(config: TrainConfig):
    """The AR model's `ARConfig`: the parent's (config files only, no weights read), else the preset's; with
    `stage.model`'s settings where this stage trains it (vlm, ar)."""
    from nexusgen.loading.autoregressive import read_ar_config
    from nexusgen.models.autoregressive import ARConfig

    settings = config.stage.model.chosen() if config.stage.name in ("ar", "vlm") else {}
    source = ar_parent(config)
    if source is not None:
        folder = source.parts["autoregressive"]
        return dataclasses.replace(read_ar_config(folder, stock=source.kind == "stock_qwen"), **settings)
    return ARConfig.from_preset(config.stage.preset, **settings)


def vae_of_parent_on_meta(config: TrainConfig):
    """The VAE (the parent's config, else the preset's) built on the meta device: shapes, no weights."""
    from diffusers import AutoencoderKL

    from nexusgen.models.vae import VAE_PRESETS
    from nexusgen.models.vae import build_vae as build_from_config

    folder = parent_part(config, "vae")
    with torch.device("meta"):
        if folder is not None:
            return AutoencoderKL.from_config(AutoencoderKL.load_config(str(folder)))
        if config.stage.preset not in VAE_PRESETS:
            raise ValueError(f"unknown VAE preset {config.stage.preset!r}; known: {sorted(VAE_PRESETS)}")
        return build_from_config(VAE_PRESETS[config.stage.preset])


def _generation_dit(config: TrainConfig, decoder_config):
    """A fresh editing decoder starts from the parent's trained generation DiT when it has one of the same
    shape -- the role FLUX.1-dev plays for both official decoders: it can already draw, and only the
    merger and the use of the reference are new. None (random DiT) otherwise."""
    folder = parent_part(config, "generation_decoder")
    if folder is None:
        return None
    from nexusgen.loading.decoders import load_generation_decoder

    generation = load_generation_decoder(folder)
    if generation.config.transformer_kwargs() != decoder_config.transformer_kwargs():
        return None
    print(f"editing decoder: DiT initialised from the generation decoder in {folder}", flush=True)
    return generation.transformer


def save_decoder(decoder, kind: str, out_dir: Path) -> None:
    """Write `<kind>_decoder/` with the loader's saver (docs/architecture.md §4)."""
    from nexusgen.loading import decoders as decoder_loading

    getattr(decoder_loading, f"save_{kind}_decoder")(decoder, Path(out_dir) / f"{kind}_decoder")


def build_autoregressive(config: TrainConfig, *, for_training: bool):
    """(model, processor): the parent's `autoregressive/` (fp32, master weights), else a fresh model of
    `ARConfig.from_preset(stage.preset)` with the tokenizer that matches the preset's token ids.

    `for_training` (the stage trains this model) applies the settings of `stage.model` (e.g. `image_feed`
    for the standard-AR ablation), to the preset's config or to the parent's alike.
    """
    from nexusgen.loading import autoregressive as ar_loading
    from nexusgen.models.autoregressive import ARConfig
    from nexusgen.processing.processor import NexusGenProcessor

    settings = config.stage.model.chosen() if for_training else {}
    source = ar_parent(config)
    if source is not None:
        folder = source.parts["autoregressive"]
        if source.kind == "stock_qwen":  # upstream's start: Qwen2.5-VL-Instruct + new heads, N(0, 0.02)
            from nexusgen.loading.stock import stock_autoregressive

            model, tokenizer, image_processor = stock_autoregressive(folder, "cpu", torch.float32, seed=config.seed)
            print0(f"autoregressive model: {folder}, vision head and prefill table new")
        else:
            model, tokenizer, image_processor = ar_loading.load_autoregressive(folder, device="cpu",
                                                                               dtype=torch.float32)
        model.train()
        if settings:
            model.config = dataclasses.replace(model.config, **settings)
    else:
        model, tokenizer, image_processor = ar_loading.build_autoregressive(
            ARConfig.from_preset(config.stage.preset, **settings))
        if config.stage.parent is not None:
            print0(f"autoregressive model: new, {config.stage.preset} preset (stage.parent has none)")
    return model, NexusGenProcessor(tokenizer, image_processor, model.config)


def save_autoregressive(model, processor, out_dir: Path) -> None:
    """Write `autoregressive/` with the autoregressive saver (docs/architecture.md §4)."""
    from nexusgen.loading.autoregressive import save_autoregressive as save

    save(Path(out_dir) / "autoregressive", model, processor.tokenizer, processor.image_processor)


def copy_untouched_parts(config: TrainConfig, out_dir: Path, trained: set[str]) -> None:
    """Complete the export with the parents' parts that this stage did not train: `stage.parent`'s, then
    `stage.ar_parent`'s where the export has none yet. A stock or official AR parent is written as `nexusgen
    assemble` writes it (its weight files linked, the new heads in their own file): no second copy."""
    from nexusgen.loading.folder import PART_NAMES, copy_parts

    for path in (config.stage.parent, config.stage.ar_parent):
        if path is None:
            continue
        parent = classify_parent(path)
        present = {part for part in PART_NAMES if (Path(out_dir) / part).exists()}
        if parent.kind == "nexusgen":
            copy_parts(parent.folder, out_dir, exclude=trained | present)
        elif "autoregressive" in parent.parts and "autoregressive" not in trained | present:  # stock / official
            from nexusgen.loading.stock import write_autoregressive

            write_autoregressive(parent.parts["autoregressive"], Path(out_dir) / "autoregressive", config.seed)
        elif "vae" in parent.parts and "vae" not in trained | present:  # FLUX.1-dev's vae/
            shutil.copytree(parent.parts["vae"], Path(out_dir) / "vae")


def write_preset_config(folder: Path, preset: str, *, overwrite: bool) -> bool:
    """Write the model-level config (nexusgen.json) into an exported folder that holds an AR model:
    the sampling defaults and editing reference of model preset `preset`, fitted to the exported AR
    model (its output size and token grid) and listing the parts present. The loader would otherwise
    infer them, and it takes the editing reference from the input size, not the grid the editing decoder
    was trained at. The weights are fp32 master weights.

    Returns:
        True if written; False for an unknown preset, a folder without `autoregressive/`, or (unless
        `overwrite`) one that already has its config (copied from the parent, e.g. tuned sampling).
    """
    from nexusgen.config import PART_NAMES, PRESETS, NexusGenConfig, SamplingConfig
    from nexusgen.files import write_json
    from nexusgen.loading.autoregressive import read_ar_config
    from nexusgen.loading.folder import CONFIG_FILE, NEGATIVE_FILE

    folder = Path(folder)
    if preset not in PRESETS or not (folder / "autoregressive").is_dir():
        return False
    if (folder / CONFIG_FILE).exists() and not overwrite:
        return False
    ar = read_ar_config(folder / "autoregressive")
    sampling = SamplingConfig(**PRESETS[preset]["sampling"])
    sampling.height, sampling.width = ar.output_image_px
    if sampling.negative == "t5" and not (folder / NEGATIVE_FILE).is_file():  # no stored T5 negative: no CFG
        sampling.negative, sampling.guidance_scale, sampling.edit_guidance_scale = "none", 1.0, 1.0
    try:
        config = NexusGenConfig(ar=ar, sampling=sampling, reference_image_px=PRESETS[preset]["reference_image_px"])
    except ValueError:  # the preset's reference is off the exported model's token grid: follow the input
        config = NexusGenConfig(ar=ar, sampling=sampling)
    data = config.to_json_dict()
    data["parts"] = [part for part in PART_NAMES if (folder / part).is_dir()]
    write_json(data, folder / CONFIG_FILE)
    return True


def frozen(module: torch.nn.Module) -> torch.nn.Module:
    """Freeze and set eval mode (a part that only provides inputs or targets)."""
    module.requires_grad_(False)
    return module.eval()
