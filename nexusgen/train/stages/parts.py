"""Building a stage's model parts: from the parent stage's exported folder, or from presets.

A stage starts from `stage.parent` (classified by `stages/parent.py`: a previous run dir, whose `final/`
is used, a model folder, an official Nexus-GenV2 folder, or a stock Qwen2.5-VL / FLUX folder) for every
part that the parent holds, and from the presets (`stage.preset`) otherwise; the parent's dimensions win.
The export writes the trained parts and copies the parent's untouched parts, so RUN_DIR/final is a
complete folder.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from nexusgen.train.config import TrainConfig
from nexusgen.train.parallel import print0
from nexusgen.train.stages.parent import classify_parent, stock_part


def parent_folder(config: TrainConfig) -> Path | None:
    """The parent model folder (RUN_DIR/final for a run dir), or None; ValueError for a folder that is
    not one of the accepted kinds."""
    return classify_parent(config.stage.parent).folder if config.stage.parent is not None else None


def parent_part(config: TrainConfig, part: str) -> Path | None:
    """Where the parent's `part` loads from (None if it has none). A part of a stock folder goes through
    `stock_part`, except a FLUX folder's vae/, which is a diffusers AutoencoderKL folder as ours is."""
    if config.stage.parent is None:
        return None
    parent = classify_parent(config.stage.parent)
    if part not in parent.parts:
        return None
    if parent.is_stock and part != "vae":
        stock_part(parent, part)
    return parent.parts[part]


def build_vae(config: TrainConfig):
    """The VAE: the parent's `vae/` if there is one, else `VAE_PRESETS[preset]` (fields of stage.model
    replace the preset's when this is the trained part)."""
    from diffusers import AutoencoderKL

    from nexusgen.models.decoder import VAE_PRESETS, VAEConfig
    from nexusgen.models.decoder import build_vae as build_from_config

    folder = parent_part(config, "vae")
    if folder is not None:
        return AutoencoderKL.from_pretrained(str(folder))
    if config.stage.parent is not None:
        print0(f"vae: new, {config.stage.preset} preset (stage.parent has none)")
    if config.stage.preset not in VAE_PRESETS:
        raise ValueError(f"unknown VAE preset {config.stage.preset!r}; known: {sorted(VAE_PRESETS)}")
    preset = dataclasses.asdict(VAE_PRESETS[config.stage.preset])
    overrides = config.stage.model if config.stage.name == "vae" else {}
    return build_from_config(VAEConfig(**{**preset, **overrides}))


def build_decoder(config: TrainConfig, kind: str):
    """`GenerationDecoder` / `EditingDecoder` (kind 'generation' / 'editing') from parent or preset."""
    from nexusgen.models.decoder import DECODER_PRESETS, EditingDecoder, GenerationDecoder

    cls = GenerationDecoder if kind == "generation" else EditingDecoder
    parent_part(config, "transformer")  # a FLUX DiT to start from: the stock seam
    folder = parent_part(config, f"{kind}_decoder")
    if folder is not None:
        from nexusgen.loading import decoders as decoder_loading  # the decoders engineer's loader

        decoder = getattr(decoder_loading, f"load_{kind}_decoder")(folder)
        if config.stage.model:
            decoder.config = _override_loaded_decoder(decoder.config, config.stage.model, folder)
        return decoder
    if config.stage.preset not in DECODER_PRESETS:
        raise ValueError(f"unknown decoder preset {config.stage.preset!r}; known: {sorted(DECODER_PRESETS)}")
    decoder_config = decoder_config_of_parent(config, kind)
    if config.stage.parent is not None:
        print0(f"{kind} decoder: new, {config.stage.preset} preset (stage.parent has none)")
    return cls(decoder_config, transformer=_generation_dit(config, decoder_config) if kind == "editing" else None)


def decoder_config_of_parent(config: TrainConfig, kind: str):
    """The decoder's `DecoderConfig`: the parent's own (its config.json, no weights read), else the preset's
    with `stage.model` applied."""
    from nexusgen.loading.decoders import read_decoder_config
    from nexusgen.models.decoder import DECODER_PRESETS

    folder = parent_part(config, f"{kind}_decoder")
    if folder is not None:
        return read_decoder_config(folder)
    if config.stage.preset not in DECODER_PRESETS:
        raise ValueError(f"unknown decoder preset {config.stage.preset!r}; known: {sorted(DECODER_PRESETS)}")
    preset = DECODER_PRESETS[config.stage.preset]
    return dataclasses.replace(preset, **config.stage.model) if config.stage.model else preset


def ar_config_of_parent(config: TrainConfig):
    """The AR model's `ARConfig`: the parent's (config files only, no weights read), else the preset's with
    the `stage.model` fields that are ARConfig fields (AR stages)."""
    from nexusgen.loading.autoregressive import read_ar_config
    from nexusgen.models.autoregressive import ARConfig

    folder = parent_part(config, "autoregressive")
    if folder is not None:
        return read_ar_config(folder)
    fields = {f.name for f in dataclasses.fields(ARConfig)}
    overrides = {k: v for k, v in config.stage.model.items() if k in fields} if config.stage.name in ("ar", "vlm") \
        else {}
    return ARConfig.from_preset(config.stage.preset, **overrides)


def vae_of_parent_on_meta(config: TrainConfig):
    """The VAE (the parent's config, else the preset's) built on the meta device: shapes, no weights."""
    from diffusers import AutoencoderKL

    from nexusgen.models.decoder import VAE_PRESETS, VAEConfig
    from nexusgen.models.decoder import build_vae as build_from_config

    folder = parent_part(config, "vae")
    with torch.device("meta"):
        if folder is not None:
            return AutoencoderKL.from_config(AutoencoderKL.load_config(str(folder)))
        if config.stage.preset not in VAE_PRESETS:
            raise ValueError(f"unknown VAE preset {config.stage.preset!r}; known: {sorted(VAE_PRESETS)}")
        preset = dataclasses.asdict(VAE_PRESETS[config.stage.preset])
        return build_from_config(VAEConfig(**{**preset, **(config.stage.model if config.stage.name == "vae" else {})}))


# DecoderConfig fields a loaded parent decoder may change: they steer the conditioning, not the weights.
_DECODER_RUNTIME_FIELDS = ("generation_context_ids", "embedded_guidance")


def _override_loaded_decoder(decoder_config, overrides: dict, folder: Path):
    fixed = sorted(set(overrides) - set(_DECODER_RUNTIME_FIELDS))
    if fixed:
        raise ValueError(f"stage.model fields {fixed} would change the weights of the parent {folder}; "
                         f"a loaded decoder takes only {list(_DECODER_RUNTIME_FIELDS)}")
    return dataclasses.replace(decoder_config, **overrides)


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
    """Write `<kind>_decoder/` with the loader's saver (DESIGN.md folder format)."""
    from nexusgen.loading import decoders as decoder_loading

    getattr(decoder_loading, f"save_{kind}_decoder")(decoder, Path(out_dir) / f"{kind}_decoder")


def build_autoregressive(config: TrainConfig, *, for_training: bool):
    """(model, processor): the parent's `autoregressive/` (fp32, master weights), else a fresh model of
    `ARConfig.from_preset(stage.preset)` with the tokenizer that matches the preset's token ids.

    `for_training` applies the top-level fields of stage.model to the preset (AR stages only), or to a
    parent's config where they leave the weights' shapes alone (e.g. `image_feed` for the ablation);
    `rope_theta` re-bases the LLM's M-RoPE (`NexusGenARModel.set_rope_theta`); `input_image_positions`
    true gives a parent the input-image place embeddings, at zero (`add_input_image_positions`);
    `add_layers` n deepens a parent's LLM by n layers that start as the identity (`add_identity_layers`).
    """
    from nexusgen.loading import autoregressive as ar_loading
    from nexusgen.models.autoregressive import ARConfig
    from nexusgen.processing.processor import ImageOnlyProcessor

    overrides = dict(config.stage.model) if for_training else {}
    rope_theta = overrides.pop("rope_theta", None)
    folder = parent_part(config, "autoregressive")
    places = overrides.pop("input_image_positions", None) if folder is not None else None
    add_layers = overrides.pop("add_layers", None)
    if add_layers is not None and folder is None:
        raise ValueError("stage.model add_layers deepens a parent's LLM; from a preset set "
                         "qwen.text_config.num_hidden_layers instead")
    if folder is not None:
        model, tokenizer, image_processor = ar_loading.load_autoregressive(folder, device="cpu",
                                                                           dtype=torch.float32)
        model.train()
        if overrides:
            model.config = _override_loaded(model.config, overrides, folder)
    else:
        ar_config = ARConfig.from_preset(config.stage.preset, **overrides)
        model, tokenizer, image_processor = ar_loading.build_autoregressive(ar_config)
        if config.stage.parent is not None:
            print0(f"autoregressive model: new, {config.stage.preset} preset (stage.parent has none)")
    if rope_theta is not None:
        model.set_rope_theta(float(rope_theta))
    if places is not None:
        _set_input_image_positions(model, places, folder)
    if add_layers is not None:
        model.add_identity_layers(add_layers)
    return model, ImageOnlyProcessor(tokenizer, image_processor, model.config)


# ARConfig fields that shape the weights: a loaded parent's cannot change.
_WEIGHT_SHAPING = ("qwen", "num_output_tokens", "output_image_px", "use_prefill_table", "tokenizer")


def _set_input_image_positions(model, on, folder: Path) -> None:
    if on is True:
        model.add_input_image_positions()
    elif on is not False:
        raise ValueError(f"stage.model input_image_positions must be true or false, got {on!r}")
    elif model.input_image_positions is not None:
        raise ValueError(f"stage.model input_image_positions=false would drop trained weights of the parent "
                         f"{folder}; train from a preset (stage.parent=null) instead")


def _override_loaded(ar_config, overrides: dict, folder: Path):
    fixed = sorted(set(overrides) & set(_WEIGHT_SHAPING))
    if fixed:
        raise ValueError(f"stage.model fields {fixed} would change the weights of the parent {folder}; "
                         "train from a preset (stage.parent=null) to change them")
    try:
        return dataclasses.replace(ar_config, **overrides)
    except TypeError as err:
        raise ValueError(f"stage.model: {err}") from None


def save_autoregressive(model, processor, out_dir: Path) -> None:
    """Write `autoregressive/` with the AR engineer's saver (DESIGN.md folder format)."""
    from nexusgen.loading.autoregressive import save_autoregressive as save

    save(Path(out_dir) / "autoregressive", model, processor.tokenizer, processor.image_processor)


def copy_untouched_parts(config: TrainConfig, out_dir: Path, trained: set[str]) -> None:
    """Copy the parent's parts that this stage did not train into the export (complete folder)."""
    from nexusgen.loading.folder import copy_parts

    folder = parent_folder(config)
    if folder is not None:
        copy_parts(folder, out_dir, exclude=trained)


def write_preset_config(folder: Path, preset: str, *, overwrite: bool) -> bool:
    """Write the model-level config (nexusgen.json) into an exported folder that holds an AR model:
    the sampling defaults and editing reference of model preset `preset`, fitted to the exported AR
    model (its output size and token grid, which `stage.model` may have changed) and listing the parts
    present. The loader would otherwise infer them, and it takes the editing reference from the input
    size, not the grid the editing decoder was trained at. The weights are fp32 master weights.

    Returns:
        True if written; False for an unknown preset, a folder without `autoregressive/`, or (unless
        `overwrite`) one that already has its config (copied from the parent, e.g. tuned sampling).
    """
    from nexusgen.config import PART_NAMES, PRESETS, NexusGenConfig, SamplingConfig
    from nexusgen.loading.autoregressive import read_ar_config
    from nexusgen.loading.files import write_json
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
