"""Whole model folders: save, load, build at random, and resolve a user's model name.

A model folder (docs/architecture.md §4, `nexusgen.config` for `nexusgen.json`)::

    MODEL/nexusgen.json            NexusGenConfig (model-level fields; records of the part configs)
    MODEL/autoregressive/          loading.autoregressive
    MODEL/generation_decoder/      loading.decoders
    MODEL/editing_decoder/         loading.decoders
    MODEL/vae/                     loading.decoders (diffusers AutoencoderKL)
    MODEL/negative.safetensors     optional: T5 embeddings of the negative prompt ("t5" negative branch)

`resolve_model(name_or_path)` accepts

* a bundled name: "shapes-mini" -> `nexusgen/assets/models/shapes-mini/`; "tiny" -> a random-weight tiny
  model built in memory (smoke tests, benchmarks);
* a nexusgen model folder (with `nexusgen.json`, or without one -- a training export or a folder written
  by `nexusgen convert` -- in which case the model-level fields are inferred and a warning says so);
* an official Nexus-GenV2 folder: the autoregressive part loads directly; its decoders are pickles that
  must be converted once (`nexusgen convert OFFICIAL_DIR OUT_DIR`), which the warning says.

Anything else is a ValueError naming the path.
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import torch

from nexusgen.config import (
    PART_NAMES,
    PRESETS,
    NexusGenConfig,
    SamplingConfig,
    dtype_name,
    resolve_device,
    resolve_dtype,
)
from nexusgen.loading.lazy import LazyPart, resolve
from nexusgen.loading.names import BUNDLED, CONFIG_FILE, RANDOM, check_model_name, is_model_folder
from nexusgen.models.memory import enable_fp8_storage, fp8_linear_count
from nexusgen.models.placement import cast_module

NEGATIVE_FILE = "negative.safetensors"
NEGATIVE_KEYS = ("prompt_embeds", "pooled")
CONVERSION_FILE = "conversion.json"
TRAIN_HINT = ("train it with the ShapesWorld recipe (`nexusgen train ... --out RUN`) and copy RUN/final "
              "to {path}, or pass --model tiny for a random-weight smoke-test model")
CONVERT_HINT = "run `nexusgen convert {path} OUT_DIR` once and load OUT_DIR"


def _part(name: str) -> property:
    """A `ModelParts` attribute: reading loads the part if it waits; assigning replaces it (module, `LazyPart`
    or None)."""
    def get(self):
        return self.get(name)

    def put(self, part) -> None:
        self._parts[name] = part

    return property(get, put)


class ModelParts:
    """The parts of a model; any part may be absent, and a part may wait unloaded (`LazyPart`).

    Reading `ar_model`, `generation_decoder`, `editing_decoder` or `vae` returns the module, loading it on
    first use (assigning one replaces it); `handle(name)` returns what is held (module, `LazyPart` or None)
    without loading.

    Args:
        ar_model: `NexusGenARModel` (eval mode) or a `LazyPart`.
        tokenizer: its tokenizer.
        image_processor: its `Qwen2VLImageProcessorPil`.
        generation_decoder: `GenerationDecoder`, a `LazyPart`, or None.
        editing_decoder: `EditingDecoder`, a `LazyPart`, or None.
        vae: diffusers `AutoencoderKL`, a `LazyPart`, or None.
        config: the `NexusGenConfig`.
        negative: {"prompt_embeds": (1, S, C), "pooled": (1, P)} for the "t5" negative branch, or None.
        source: where the parts came from (a path, or "tiny (random weights)").
        hint: what to do about missing decoders (e.g. the convert command), or "".
    """

    def __init__(self, ar_model, tokenizer, image_processor, generation_decoder, editing_decoder, vae,
                 config: NexusGenConfig, negative: dict[str, torch.Tensor] | None = None, source: str = "",
                 hint: str = ""):
        self.tokenizer, self.image_processor = tokenizer, image_processor
        self.config, self.negative, self.source, self.hint = config, negative, source, hint
        self._parts = {"autoregressive": ar_model, "generation_decoder": generation_decoder,
                       "editing_decoder": editing_decoder, "vae": vae}

    ar_model = _part("autoregressive")
    generation_decoder = _part("generation_decoder")
    editing_decoder = _part("editing_decoder")
    vae = _part("vae")

    def replace(self, **changes) -> ModelParts:
        """A copy with some parts or fields changed (e.g. `replace(generation_decoder=None)`)."""
        fields = {**self._parts, "ar_model": self._parts["autoregressive"], "tokenizer": self.tokenizer,
                  "image_processor": self.image_processor, "config": self.config, "negative": self.negative,
                  "source": self.source, "hint": self.hint, **changes}
        fields.pop("autoregressive")
        return ModelParts(**fields)

    def get(self, name: str) -> torch.nn.Module | None:
        """Part `name` (a PART_NAMES entry), loaded if it was waiting; None if the model has none."""
        return resolve(self._parts[name])

    def handle(self, name: str) -> torch.nn.Module | LazyPart | None:
        """Part `name` as held: a module, a `LazyPart` not loaded yet, or None."""
        return self._parts[name]

    def has(self, name: str) -> bool:
        return self._parts[name] is not None

    def is_loaded(self, name: str) -> bool:
        part = self._parts[name]
        return part is not None and (not isinstance(part, LazyPart) or part.loaded)

    def modules(self) -> dict[str, torch.nn.Module]:
        """Every part that is present, by folder name (waiting parts are loaded)."""
        return {name: self.get(name) for name in PART_NAMES if self.has(name)}

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> ModelParts:
        """Move / cast every loaded part (in place; rotary buffers stay fp32) and set where and in which dtype
        the waiting ones will load; returns self."""
        for name in PART_NAMES:
            part = self._parts[name]
            if isinstance(part, LazyPart) and not part.loaded:
                part.dtype = dtype if dtype is not None else part.dtype
                part.device = torch.device(device) if device is not None else part.device
            elif part is not None:
                cast_module(resolve(part), dtype=dtype, device=device).eval()
        if self.negative is not None:
            self.negative = {k: v.to(device=device, dtype=dtype) for k, v in self.negative.items()}
        return self

    def use_fp8(self) -> ModelParts:
        """Store the decoders' DiT Linear weights in fp8 (loaded ones now, waiting ones when they load)."""
        for name in ("generation_decoder", "editing_decoder"):
            part = self._parts[name]
            if isinstance(part, LazyPart) and not part.loaded:
                part.fp8 = True
            elif part is not None:
                decoder = resolve(part)
                if fp8_linear_count(decoder.transformer)[1]:
                    enable_fp8_storage(decoder.transformer)
        return self


# ----------------------------------------------------------------------------------------------------
# Saving
# ----------------------------------------------------------------------------------------------------
def save_model_folder(folder: str | os.PathLike, parts: ModelParts,
                      config: NexusGenConfig | None = None) -> None:
    """Write a complete model folder atomically (assembled under a temporary name, then renamed).

    Args:
        folder: the model folder to (re)write.
        parts: the built parts.
        config: the config to record (default `parts.config`); its part configs must be the parts'.

    Raises:
        ValueError: the config and the parts disagree.
    """
    from nexusgen.files import atomic_folder, save_tensors, write_json
    from nexusgen.loading.autoregressive import save_autoregressive
    from nexusgen.loading.decoders import (
        EDITING_DIR,
        GENERATION_DIR,
        VAE_DIR,
        save_editing_decoder,
        save_generation_decoder,
        save_vae,
    )

    config = config or parts.config
    _check_parts_match(parts, config)
    with atomic_folder(folder) as tmp:
        save_autoregressive(tmp / "autoregressive", parts.ar_model, parts.tokenizer, parts.image_processor)
        if parts.generation_decoder is not None:
            save_generation_decoder(parts.generation_decoder, tmp / GENERATION_DIR)
        if parts.editing_decoder is not None:
            save_editing_decoder(parts.editing_decoder, tmp / EDITING_DIR)
        if parts.vae is not None:
            save_vae(parts.vae, tmp / VAE_DIR)
        if parts.negative is not None:
            save_tensors(parts.negative, tmp / NEGATIVE_FILE)
        stored = dtype_name(next(parts.ar_model.parameters()).dtype)
        write_json({**config.to_json_dict(), "dtype": stored}, tmp / CONFIG_FILE)


def _check_parts_match(parts: ModelParts, config: NexusGenConfig) -> None:
    pairs = (("generation_decoder", parts.generation_decoder), ("editing_decoder", parts.editing_decoder))
    for name, module in pairs:
        if (module is None) != (getattr(config, name) is None):
            raise ValueError(f"config and parts disagree on {name}: config "
                             f"{'has' if getattr(config, name) else 'lacks'} it")
        if module is not None and module.config.to_dict() != getattr(config, name).to_dict():
            raise ValueError(f"config.{name} differs from the decoder's own config")
    if (parts.vae is None) != (config.vae is None):
        raise ValueError("config and parts disagree on the vae")
    if parts.ar_model.config.to_dict() != config.ar.to_dict():
        raise ValueError("config.ar differs from the autoregressive model's own config")


# ----------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------
def load_model_folder(path: str | os.PathLike, device: str | torch.device | None = None,
                      dtype: str | torch.dtype | None = None, *, lazy: bool = True) -> ModelParts:
    """The parts of a nexusgen model folder: configs, tokenizer and image processor now, the weights of each
    part when it is first used (memory-mapped; `lazy=False` loads them all now).

    Args:
        path: the model folder (with or without `nexusgen.json`).
        device: where the parts go once loaded (default cuda if available, else cpu).
        dtype: parameter dtype (default bf16 on cuda, fp32 on cpu); rotary buffers stay fp32.

    Returns:
        ModelParts.

    Raises:
        ValueError: not a model folder, or a broken / inconsistent config (the message names the file);
            a broken weights file is reported when its part loads.
    """
    from nexusgen.loading.autoregressive import load_autoregressive_config, load_autoregressive_model
    from nexusgen.loading.decoders import (
        checked_decoder_config,
        load_editing_decoder,
        load_generation_decoder,
        load_vae,
        read_vae_config,
    )

    folder = Path(path)
    if not is_model_folder(folder):
        raise ValueError(f"{folder}: not a nexusgen model folder (no {CONFIG_FILE} and no autoregressive/)")
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    ar_dir = folder / "autoregressive"
    ar_config, tokenizer, image_processor = load_autoregressive_config(ar_dir)
    ar = LazyPart("autoregressive", ar_config, lambda dt, _fp8: load_autoregressive_model(ar_dir, ar_config, dt))
    readers = {"generation_decoder": (checked_decoder_config, load_generation_decoder),
               "editing_decoder": (lambda f: checked_decoder_config(f, editing=True), load_editing_decoder),
               "vae": (read_vae_config, None)}
    parts: dict[str, LazyPart | None] = {}
    for name, (read, loader) in readers.items():
        sub = folder / name
        if not sub.is_dir():
            parts[name] = None
        elif loader is None:  # the VAE: no fp8
            parts[name] = LazyPart(name, read(sub), lambda dt, _fp8, sub=sub: load_vae(sub, "cpu", dt))
        else:
            parts[name] = LazyPart(name, read(sub), lambda dt, fp8, sub=sub, loader=loader: loader(sub, "cpu", dt, fp8))
    config = read_folder_config(folder, ar=ar_config,
                                **{name: part.config if part else None for name, part in parts.items()})
    negative = _read_negative(folder / NEGATIVE_FILE, device, dtype)
    result = ModelParts(ar, tokenizer, image_processor, parts["generation_decoder"], parts["editing_decoder"],
                        parts["vae"], config, negative, source=str(folder))
    result.to(device=device, dtype=dtype)
    if not lazy:
        result.modules()
    return result


def read_folder_config(folder: Path, **part_configs) -> NexusGenConfig:
    """The folder's NexusGenConfig: `nexusgen.json` checked against the parts, or inferred (warning)."""
    path = folder / CONFIG_FILE
    if path.is_file():
        from nexusgen.files import read_json_object

        return NexusGenConfig.from_json_dict(read_json_object(path), source=str(path), **part_configs)
    converted = (folder / CONVERSION_FILE).is_file()
    preset = PRESETS["nexus-gen-v2" if converted else "shapes-mini"]
    sampling = SamplingConfig(**preset["sampling"])
    ar = part_configs["ar"]
    if not converted:  # a training export: sample at the size the AR model works at, no CFG
        sampling.height, sampling.width = ar.output_image_px
    warnings.warn(f"{folder}: no {CONFIG_FILE}; model-level settings inferred "
                  f"({'official' if converted else 'training export'} defaults: {sampling})",
                  UserWarning, stacklevel=3)
    reference = _reference_for(ar, preset["reference_image_px"]) if converted else None
    return NexusGenConfig(sampling=sampling, reference_image_px=reference, **part_configs)


def _read_negative(path: Path, device, dtype) -> dict[str, torch.Tensor] | None:
    if not path.is_file():
        return None
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except Exception as err:  # safetensors raises its own error types for corrupt files
        raise ValueError(f"{path}: unreadable safetensors file ({err})") from err
    if "prompt_embeds" not in tensors or set(tensors) - set(NEGATIVE_KEYS):
        raise ValueError(f"{path}: expected tensors {NEGATIVE_KEYS} ('pooled' optional), "
                         f"got {sorted(tensors)}")
    return {k: v.to(device=device, dtype=dtype) for k, v in tensors.items()}


def load_official_folder(path: str | os.PathLike, device=None, dtype=None) -> ModelParts:
    """The autoregressive part of an official Nexus-GenV2 folder; its decoders need `nexusgen convert`."""
    from nexusgen.loading.autoregressive import load_autoregressive

    folder = Path(path)
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    ar_model, tokenizer, image_processor = load_autoregressive(folder, device, dtype)
    hint = CONVERT_HINT.format(path=folder)
    pickles = sorted(p.name for p in folder.glob("*.bin"))
    warnings.warn(f"{folder} is an official Nexus-Gen folder: only the autoregressive model is loaded "
                  f"(understanding, embeddings); for generation and editing {hint}"
                  + (f" (decoders found: {pickles})" if pickles else ""), UserWarning, stacklevel=3)
    preset = PRESETS["nexus-gen-v2"]
    config = NexusGenConfig(ar=ar_model.config, sampling=SamplingConfig(**preset["sampling"]),
                            reference_image_px=_reference_for(ar_model.config, preset["reference_image_px"]),
                            dtype=dtype_name(dtype))
    return ModelParts(ar_model, tokenizer, image_processor, None, None, None, config, source=str(folder),
                      hint=hint)


def _reference_for(ar_config, reference_px):
    """Upstream's reference size when it fits the model's token size, else twice the output size."""
    token = ar_config.token_px
    if all(x % token == 0 for x in reference_px):
        return tuple(reference_px)
    return tuple(2 * x for x in ar_config.output_image_px)


# ----------------------------------------------------------------------------------------------------
# Random models and name resolution
# ----------------------------------------------------------------------------------------------------
def build_random_model(preset: str = "tiny", seed: int = 0) -> ModelParts:
    """A model with freshly initialised weights from `PRESETS[preset]` (fp32, CPU), for tests and benchmarks.

    The same (preset, seed) always gives the same weights. Never build "nexus-gen-v2" on a CPU machine.
    """
    from nexusgen.loading.autoregressive import build_autoregressive
    from nexusgen.models.decoder import EditingDecoder, GenerationDecoder
    from nexusgen.models.vae import build_vae

    config = NexusGenConfig.from_preset(preset)
    ar_model, tokenizer, image_processor = build_autoregressive(config.ar, seed=seed)
    torch.manual_seed(seed + 1)
    generation = GenerationDecoder(config.generation_decoder) if config.generation_decoder else None
    torch.manual_seed(seed + 2)
    editing = EditingDecoder(config.editing_decoder) if config.editing_decoder else None
    torch.manual_seed(seed + 3)
    vae = build_vae(config.vae) if config.vae else None
    parts = ModelParts(ar_model.eval(), tokenizer, image_processor, generation, editing, vae, config,
                       source=f"{preset} (random weights, seed {seed})")
    for module in parts.modules().values():
        module.eval()
    return parts


def resolve_model(name_or_path: str | os.PathLike, device: str | torch.device | None = None,
                  dtype: str | torch.dtype | None = None) -> ModelParts:
    """Build the parts for a bundled name, "tiny", a nexusgen model folder or an official folder.

    Raises:
        ValueError: the bundled model is missing (says how to train it), an unknown name or path, or a
            folder that is not a model.
    """
    name = str(name_or_path)
    if name in RANDOM:
        device = resolve_device(device)
        return build_random_model(name).to(device, resolve_dtype(dtype, device))
    if name in BUNDLED:
        path = BUNDLED[name]
        if not is_model_folder(path):
            raise ValueError(f"the bundled model {name!r} is missing ({path} does not exist yet): "
                             + TRAIN_HINT.format(path=path))
        return load_model_folder(path, device, dtype)
    path = Path(check_model_name(name)).expanduser()  # a model folder or an official one, or ValueError
    if is_model_folder(path):
        return load_model_folder(path, device, dtype)
    return load_official_folder(path, device, dtype)


def load_autoregressive_part(name_or_path: str | os.PathLike, device=None, dtype=None):
    """(model, tokenizer, image_processor) of the autoregressive part only (e.g. for prepare-embeds).

    Accepts what `resolve_model` accepts, plus a bare autoregressive folder; decoders are never loaded.
    """
    from nexusgen.loading.autoregressive import load_autoregressive

    name = str(name_or_path)
    if name in RANDOM or name in BUNDLED:
        if name in BUNDLED and is_model_folder(BUNDLED[name]):
            return load_autoregressive(BUNDLED[name] / "autoregressive", device, dtype)
        parts = resolve_model(name, device, dtype)  # "tiny", or the missing-bundle error
        return parts.ar_model, parts.tokenizer, parts.image_processor
    path = Path(name).expanduser()
    if not path.is_dir():
        raise ValueError(f"model {name!r} is not a folder (give a nexusgen model folder or its "
                         f"autoregressive/ sub-folder)")
    if (path / "autoregressive").is_dir():
        path = path / "autoregressive"
    return load_autoregressive(path, device, dtype)


def copy_parts(source: str | os.PathLike, out_dir: str | os.PathLike, exclude: set[str]) -> list[str]:
    """Copy the parts of model folder `source` not in `exclude` (and its nexusgen.json / negative file, unless
    `out_dir` has them) into `out_dir`; returns the copied part names. Used by training exports to complete a
    folder."""
    source, out_dir = Path(source), Path(out_dir)
    copied = []
    for part in PART_NAMES:
        if part not in exclude and (source / part).is_dir():
            shutil.copytree(source / part, out_dir / part)
            copied.append(part)
    for name in (CONFIG_FILE, NEGATIVE_FILE):
        if (source / name).is_file() and not (out_dir / name).exists():
            shutil.copy2(source / name, out_dir / name)
    return copied
