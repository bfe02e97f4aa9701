"""`nexusgen export-official MODEL_DIR OUT_DIR`: a nexusgen model folder back in the official layouts.

The inverse of `nexusgen convert` (`convert/official.py`), part by part, each written when present:

=====================  =====================================  ==============================================
part                   from MODEL_DIR                         to OUT_DIR (official Nexus-GenV2 layout)
=====================  =====================================  ==============================================
autoregressive         autoregressive/                        config.json (transformers-4.49 flat layout),
                                                              model-*.safetensors + index (4.49 names:
                                                              model.layers.*, visual.*, lm_head,
                                                              vision_head, image_prefill_embeds), tokenizer
                                                              and preprocessor files, nexusgen_ar.json
generation decoder     generation_decoder/                    generation_decoder.bin + .safetensors
                                                              (adapter.* + pipe.dit.* in DiffSynth names)
editing decoder        editing_decoder/                       edit_decoder.bin + .safetensors
                                                              (embedding_merger.* + pipe.dit.*)
VAE                    vae/                                   ae.safetensors (FLUX / BFL names)
=====================  =====================================  ==============================================

Key names come from the same maps `convert` uses, inverted (`convert.keymaps`, `normalize_key`): one
source for both directions. `nexusgen_ar.json` is ours (ignored by upstream): it keeps the settings the
official config has no field for (output size, input pixel bounds, templates), so that `convert` brings
back exactly the model that was exported.

The `.bin` files: upstream's code reads `generation_decoder.bin` / `edit_decoder.bin` with `torch.load`, so
they are `torch.save` zip archives of a plain dict of tensors, as the official files are. Their `data.pkl`
is a pickle that only rebuilds tensors (the globals `torch._utils._rebuild_tensor_v2` and the storage
types, no other code), so `torch.load(weights_only=True)` reads them (that is how `convert` reads them: no
pickle code ever runs). The `.safetensors` beside each holds the same tensors for every reader that
takes safetensors (no pickle at all).

What the official code cannot represent is refused (one line naming it), rather than exported as a
model that would behave differently there: a merger whose attention differs from the AR model's (upstream
builds it from the AR config), grid context ids, a non-default guidance value or RoPE axes, extra AR
modules. Settings the official scripts fix themselves (input pixel bound, templates) are reported.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from nexusgen.convert.keymaps import dit_state_dict_to_diffsynth, vae_state_dict_to_bfl
from nexusgen.convert.official import MAX_SHARD_BYTES, ShardWriter, flux_rope_axes
from nexusgen.files import atomic_folder, save_torch, write_json, writing
from nexusgen.loading.weights import read_folder_weights, read_safetensors

Log = Callable[[str], None]
AR_WEIGHT_FILES = ("config.json", "model.safetensors", "model.safetensors.index.json")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# The official loaders fix these; a model that differs from them behaves differently under upstream code.
UPSTREAM_GUIDANCE = 3.5
UPSTREAM_LATTICE = 36


def export_official(model_dir: str | os.PathLike, out_dir: str | os.PathLike, *, dtype: str | None = None,
                    log: Log = print, max_shard_bytes: int = MAX_SHARD_BYTES) -> dict[str, str]:
    """Write the parts of a nexusgen model folder in the official Nexus-GenV2 layout.

    Args:
        model_dir: a nexusgen model folder (or a training run directory: its `final/`).
        out_dir: the folder to write (must not exist; written under a temporary name, then renamed).
        dtype: "bfloat16" (the official files' dtype), "float32" or "float16"; None keeps the stored dtype.
        log: receives one line per part.
        max_shard_bytes: AR safetensors shard size.

    Returns:
        part name -> what was written.

    Raises:
        ValueError: not a model folder, nothing to export, `out_dir` exists, or a part the official code
            cannot represent.
    """
    model = _model_folder(Path(model_dir))
    out = Path(out_dir)
    if out.exists():
        raise ValueError(f"{out} exists; choose a new OUT_DIR")
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    cast = DTYPES.get(dtype)
    ar_text = check_representable(model)  # every refusal before anything is written
    results: dict[str, str] = {}
    with atomic_folder(out) as tmp:
        if (model / "autoregressive").is_dir():
            results["autoregressive"] = export_autoregressive(model / "autoregressive", tmp, cast, max_shard_bytes)
        for part, name, prefix in (("generation_decoder", "generation_decoder", "adapter"),
                                   ("editing_decoder", "edit_decoder", "embedding_merger")):
            if (model / part).is_dir():
                results[part] = export_decoder(model / part, tmp / name, prefix, cast)
        if (model / "vae").is_dir():
            results["vae"] = export_vae(model / "vae", tmp / "ae.safetensors", cast)
        if not results:
            raise ValueError(f"{model}: no autoregressive/, generation_decoder/, editing_decoder/ or vae/ to export")
        notes = _notes(model, ar_text)
        write_json({"source": str(model.resolve()), "parts": results, "notes": notes}, tmp / "export.json")
    for part, what in results.items():
        log(f"  {part}: {what}")
    for note in notes:
        log(f"  note: {note}")
    return results


def _model_folder(path: Path) -> Path:
    folder = path / "final" if (path / "final").is_dir() else path
    if not folder.is_dir():
        raise ValueError(f"{path}: not a model folder")
    return folder


# ---------------------------------------------------------------------------------------------------------
# What the official code can represent
# ---------------------------------------------------------------------------------------------------------


def check_representable(model: Path) -> dict:
    """Refuse what upstream's code would run differently; returns the AR text config ({} without AR).

    Raises:
        ValueError: naming the first difference.
    """
    text = {}
    if (model / "autoregressive").is_dir():
        ar = _read_json(model / "autoregressive" / "nexusgen_ar.json")
        if ar.get("image_feed", "prefill") != "prefill" or not ar.get("use_prefill_table", True):
            raise ValueError(f"{model}: the AR model feeds {ar.get('image_feed')!r} at image positions; the "
                             "official V2 code feeds the prefill table")
        if ar.get("input_image_positions"):
            raise ValueError(f"{model}: the AR model has input-image place embeddings, which the official code "
                             "does not have")
        text = _read_json(model / "autoregressive" / "config.json").get("text_config", {})
    for part in ("generation_decoder", "editing_decoder"):
        if (model / part).is_dir():
            _check_decoder(model / part, _read_json(model / part / "config.json"), text)
    return text


def _check_decoder(folder: Path, config: dict, text: dict) -> None:
    if config.get("generation_context_ids", "zero") != "zero":
        raise ValueError(f"{folder}: context ids {config['generation_context_ids']!r}; the official code gives "
                         "every generation context token the id (0, 0, 0)")
    if config.get("embedded_guidance", UPSTREAM_GUIDANCE) != UPSTREAM_GUIDANCE:
        raise ValueError(f"{folder}: embedded guidance {config['embedded_guidance']}; the official code uses "
                         f"{UPSTREAM_GUIDANCE}")
    if tuple(config["axes_dims_rope"]) != flux_rope_axes(config["attention_head_dim"]):
        raise ValueError(f"{folder}: RoPE axes {config['axes_dims_rope']} are not FLUX's rule for head dim "
                         f"{config['attention_head_dim']} (the official files do not store them)")
    merger = config.get("merger")
    if folder.name != "editing_decoder" or merger is None:
        return
    rope = text.get("rope_parameters") or {}
    upstream = {"num_attention_heads": text.get("num_attention_heads"), "rope_theta": rope.get("rope_theta"),
                "mrope_section": list(rope.get("mrope_section", [])), "rms_norm_eps": text.get("rms_norm_eps"),
                "lattice_size": UPSTREAM_LATTICE}
    ours = {**merger, "mrope_section": list(merger["mrope_section"])}
    differs = {k: (ours.get(k), v) for k, v in upstream.items() if ours.get(k) != v}
    if differs:
        raise ValueError(f"{folder}: the merger's {differs} (ours, the AR model's) differ; the official code "
                         "builds the merger from the AR config (its layer 0), so it would compute another merger")


def _notes(model: Path, text: dict) -> list[str]:
    """Settings that upstream's scripts fix themselves (reported, not refused)."""
    from nexusgen.models.ar_presets import AR_PRESETS

    notes = []
    ar_file = model / "autoregressive" / "nexusgen_ar.json"
    if ar_file.is_file():
        ours, theirs = _prompt_settings(_read_json(ar_file)), _prompt_settings(AR_PRESETS["nexus-gen-v2"])
        for key, value in ours.items():
            if value != theirs[key]:
                notes.append(f"{key} is {value!r}; upstream's scripts use {theirs[key]!r}")
    for part in ("generation_decoder", "editing_decoder"):
        pooled = model / part / "pooled.safetensors"
        if pooled.is_file():
            with safe_open(str(pooled), framework="pt") as f:
                if not f.get_tensor(f.keys()[0]).any():
                    notes.append(f"{part}: the pooled vector is zeros; upstream feeds CLIP(\"\") from FLUX "
                                 "text_encoder/ (and `convert` computes it when that folder is beside the files)")
    return notes


def _prompt_settings(fields: dict) -> dict:
    """The input size bound and the prompt text of ARConfig fields (absent or None: the defaults, the
    canonical templates)."""
    from nexusgen.models.autoregressive import ARConfig
    from nexusgen.processing.templates import model_templates

    system_prompt, answer_prefixes = model_templates(SimpleNamespace(**{
        key: fields.get(key) for key in ("system_prompt", "answer_prefixes")}))
    default_pixels = ARConfig.__dataclass_fields__["max_input_pixels"].default
    return {"max_input_pixels": fields.get("max_input_pixels", default_pixels), "system_prompt": system_prompt,
            "answer_prefixes": answer_prefixes}


# ---------------------------------------------------------------------------------------------------------
# Parts
# ---------------------------------------------------------------------------------------------------------


def export_autoregressive(folder: Path, out: Path, cast: torch.dtype | None, max_shard_bytes: int) -> str:
    """AR weights under 4.49 names in shards + index, the flat config, and every other file as is."""
    from nexusgen.loading.autoregressive import official_key, weight_index

    keys = weight_index(folder)
    writer = ShardWriter(out, prefix="model", max_shard_bytes=max_shard_bytes)
    stored = None
    for file in sorted({file for file, _ in keys.values()}):
        with safe_open(str(folder / file), framework="pt") as f:
            for key in f.keys():
                tensor = f.get_tensor(key)
                stored = stored or tensor.dtype
                writer.add(official_key(key), tensor.to(cast) if cast is not None else tensor)
    writer.finish()
    _name_single_shard(out)
    dtype = str(cast or stored).removeprefix("torch.")
    write_json(official_ar_config(_read_json(folder / "config.json"), dtype), out / "config.json")
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.name not in AR_WEIGHT_FILES and not path.name.startswith("model-"):
            shutil.copy2(path, out / path.name)
    return f"{len(keys)} tensors ({dtype}), transformers-4.49 names and config"


def _name_single_shard(out: Path) -> None:
    """The official folders always have shards and an index; ShardWriter names a single file plainly."""
    single = out / "model.safetensors"
    if single.is_file():
        final = "model-00001-of-00001.safetensors"
        os.replace(single, out / final)
        with safe_open(str(out / final), framework="pt") as f:
            weight_map = {key: final for key in f.keys()}
        size = (out / final).stat().st_size
        write_json({"metadata": {"total_size": size}, "weight_map": weight_map}, out / "model.safetensors.index.json")


def official_ar_config(nested: dict, dtype: str) -> dict:
    """A transformers-5 Qwen2.5-VL config.json in the flat 4.49 layout of the official folders: the text
    fields at the top level, M-RoPE as `rope_theta` + `rope_scaling {"type": "mrope", ...}`."""
    text = dict(nested.get("text_config") or {})
    rope = text.pop("rope_parameters", None) or {}
    for key in ("model_type", "layer_types", "dtype", "torch_dtype"):
        text.pop(key, None)
    vision = {k: v for k, v in (nested.get("vision_config") or {}).items() if k not in ("rope_parameters", "dtype")}
    vision["model_type"] = "qwen2_5_vl"
    top = {k: v for k, v in nested.items() if k not in ("text_config", "vision_config", "transformers_version",
                                                        "dtype", "torch_dtype", "architectures")}
    return {"architectures": ["Qwen2_5_VLForConditionalGeneration"], **top, **text,
            "rope_theta": rope.get("rope_theta", 1e6),
            "rope_scaling": {"type": "mrope", "mrope_section": list(rope.get("mrope_section", [16, 24, 24]))},
            "vision_config": vision, "torch_dtype": dtype, "transformers_version": "4.49.0",
            "model_type": "qwen2_5_vl"}


def export_decoder(folder: Path, out_stem: Path, prefix: str, cast: torch.dtype | None) -> str:
    """`<prefix>.*` connector keys + `pipe.dit.*` DiffSynth DiT keys, as `.safetensors` and `.bin`."""
    connector_file = folder / ("adapter.safetensors" if prefix == "adapter" else "merger.safetensors")
    state = {f"{prefix}.{k}": v for k, v in read_safetensors(connector_file).items()}
    dit = dit_state_dict_to_diffsynth(read_folder_weights(folder / "transformer"))
    state.update({f"pipe.dit.{k}": v for k, v in dit.items()})
    state = {k: (v.to(cast) if cast is not None else v).contiguous() for k, v in state.items()}
    with writing(out_stem.with_suffix(".safetensors")):
        save_file(state, str(out_stem.with_suffix(".safetensors")), metadata={"format": "pt"})
    save_torch(state, out_stem.with_suffix(".bin"))  # a plain dict of tensors: a weights-only pickle
    return f"{out_stem.name}.bin and .safetensors ({len(state)} tensors, {len(dit)} DiT)"


def export_vae(folder: Path, path: Path, cast: torch.dtype | None) -> str:
    """The diffusers AutoencoderKL in FLUX's `ae.safetensors` naming (BFL / LDM)."""
    config = _read_json(folder / "config.json")
    state = vae_state_dict_to_bfl(read_folder_weights(folder), len(config["block_out_channels"]))
    with writing(path):
        save_file({k: (v.to(cast) if cast is not None else v).contiguous() for k, v in state.items()}, str(path),
                  metadata={"format": "pt"})
    return f"{path.name} ({len(state)} tensors, BFL names)"


def _read_json(path: Path) -> dict:
    from nexusgen.files import read_json_object

    return read_json_object(path)
