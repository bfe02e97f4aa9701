"""`nexusgen convert OFFICIAL_DIR OUT_DIR`: official Nexus-Gen checkpoints -> a nexusgen model folder.

Parts, each converted independently when present (an absent part is reported and skipped; converting
nothing is an error; a present but broken part is an error after the others are written):

=====================  ===============================================  ==================================
part                   source (under OFFICIAL_DIR, see `FLUX_DIRS`)     output (under OUT_DIR)
=====================  ===============================================  ==================================
autoregressive         config.json + model*.safetensors + tokenizer     autoregressive/ (files linked)
generation decoder     generation_decoder.bin (V2) / decoder_81_512.bin generation_decoder/
                       (V1: un-prefixed adapter and DiT keys)
editing decoder        edit_decoder.bin (V2)                            editing_decoder/
VAE                    FLUX ae.safetensors (BFL naming)                 vae/ (diffusers AutoencoderKL)
pooled vector          FLUX text_encoder/ (CLIP-L): CLIP("") once       pooled.safetensors of each decoder
=====================  ===============================================  ==================================

Safety and memory: pickles are opened only with ``torch.load(weights_only=True, mmap=True)`` (a pickle that
needs code is refused with a ValueError); tensors are converted one at a time from the memory map and
written in safetensors shards of at most `MAX_SHARD_BYTES`, so a 24 GB file converts in a few GB of RAM.
Every key is checked (name and shape, against the model built on the meta device) before any tensor is
read; unknown, missing or mis-shaped tensors are a ValueError naming the file and the key. Each output
folder is written under a temporary name and renamed into place.

Without the CLIP text encoder the decoders get a zero pooled vector (reported): FLUX-based official
decoders need CLIP("") for faithful images, models trained by nexusgen with a zero vector do not.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from nexusgen.convert.keymaps import dit_key_to_diffusers, vae_key_to_diffusers
from nexusgen.files import (
    atomic_folder,
    check_output_folder,
    make_parents,
    output_error,
    remove_empty,
    save_tensors,
    write_json,
    writing,
)
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
)
from nexusgen.loading.folder import NEGATIVE_FILE
from nexusgen.loading.stock import link_or_copy
from nexusgen.loading.text_encoders import negative_branch
from nexusgen.models.connector import EmbeddingMerger, GenerationAdapter, MergerConfig
from nexusgen.models.decoder import DecoderConfig
from nexusgen.models.vae import VAEConfig, build_vae

MAX_SHARD_BYTES = 2 * 2**30
FLUX_DIRS = (".", "FLUX.1-dev", "FLUX/FLUX.1-dev", "../FLUX/FLUX.1-dev")
"""Where FLUX parts are looked for, relative to OFFICIAL_DIR (upstream downloads them next to it)."""
AR_FILES = re.compile(r"^(config\.json|nexusgen_ar\.json|generation_config\.json|preprocessor_config\.json|"
                      r"chat_template\.json|tokenizer\.json|tokenizer_config\.json|vocab\.json|merges\.txt|added_tokens\.json|"
                      r"special_tokens_map\.json|model(-\d+-of-\d+)?\.safetensors|model\.safetensors\.index\.json)$")
Log = Callable[[str], None]


# ---------------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------------


def load_pickled_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A ``torch.save``'d state dict, memory-mapped, never executing code.

    Raises:
        ValueError: the pickle needs code (refused), is not a flat str -> tensor dict, or is unreadable.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:
        raise ValueError(f"{path}: refused -- loading it would need more than plain tensors "
                         f"(weights_only=True): {err}") from err
    except (RuntimeError, OSError, EOFError) as err:
        raise ValueError(f"{path}: not a readable torch.save zip checkpoint ({err})") from err
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise ValueError(f"{path}: expected a flat state dict of tensors, got {type(state).__name__}")
    return state


def _split_decoder_keys(path: Path, keys: list[str], connector_prefix: str) -> tuple[dict, dict]:
    """(connector name -> file key, DiffSynth DiT name -> file key) for V2 or V1 layouts."""
    connector, dit = {}, {}
    if any(k.startswith("pipe.dit.") for k in keys):  # V2: adapter./embedding_merger. + pipe.dit.
        for key in keys:
            if key.startswith(connector_prefix):
                connector[key[len(connector_prefix):]] = key
            elif key.startswith("pipe.dit."):
                dit[key[len("pipe.dit."):]] = key
            else:
                raise ValueError(f"{path}: unexpected tensor {key!r} "
                                 f"(expected {connector_prefix}* or pipe.dit.*)")
    elif connector_prefix == "adapter.":  # V1 decoder_81_512.bin: un-prefixed adapter (0., 1., 3., 4.) + DiT
        for key in keys:
            (connector if re.match(r"^\d+\.(weight|bias)$", key) else dit)[key] = key
    else:
        raise ValueError(f"{path}: no pipe.dit.* tensors; not a V2 editing decoder")
    if not connector or not dit:
        raise ValueError(f"{path}: found {len(connector)} connector and {len(dit)} DiT tensors; need both")
    return connector, dit


def flux_rope_axes(head_dim: int) -> tuple[int, int, int]:
    """FLUX RoPE axes for a head dim: (16, 56, 56) at 128, i.e. (hd/8, 7hd/16, 7hd/16) (not stored)."""
    axes = (head_dim // 8, 7 * head_dim // 16, 7 * head_dim // 16)
    if sum(axes) != head_dim or any(a % 2 for a in axes):
        raise ValueError(f"cannot infer axes_dims_rope for head dim {head_dim}; pass axes_dims_rope")
    return axes


def infer_dit_kwargs(shapes: dict[str, tuple[int, ...]], path: Path) -> dict:
    """diffusers FluxTransformer2DModel arguments from DiffSynth tensor shapes (docs/upstream.md §10: heads = width /
    q-norm size; RoPE axes by `flux_rope_axes`)."""
    try:
        width, in_channels = shapes["x_embedder.weight"]
        norm_key = "blocks.0.attn.norm_q_a.weight" if "blocks.0.attn.norm_q_a.weight" in shapes else \
            "single_blocks.0.norm_q_a.weight"
        head_dim = shapes[norm_key][0]
        kwargs = dict(patch_size=1, in_channels=in_channels, num_attention_heads=width // head_dim,
                      attention_head_dim=head_dim, joint_attention_dim=shapes["context_embedder.weight"][1],
                      pooled_projection_dim=shapes["pooled_text_embedder.0.weight"][1])
    except KeyError as err:
        raise ValueError(f"{path}: missing DiT tensor {err.args[0]!r}; not a FLUX DiT checkpoint") from err
    kwargs["num_layers"] = len({k.split(".")[1] for k in shapes if k.startswith("blocks.")})
    kwargs["num_single_layers"] = len({k.split(".")[1] for k in shapes if k.startswith("single_blocks.")})
    kwargs["guidance_embeds"] = any(k.startswith("guidance_embedder.") for k in shapes)
    kwargs["axes_dims_rope"] = flux_rope_axes(head_dim)
    return kwargs


# ---------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------


class ShardWriter:
    """Writes tensors into safetensors shards as they come (diffusers naming and index file).

    Args:
        folder: output folder.
        prefix: file stem (``diffusion_pytorch_model`` for diffusers models).
        max_shard_bytes: a shard is flushed once it holds this many bytes.
    """

    def __init__(self, folder: Path, prefix: str = "diffusion_pytorch_model",
                 max_shard_bytes: int = MAX_SHARD_BYTES):
        self.folder, self.prefix, self.max_shard_bytes = Path(folder), prefix, max_shard_bytes
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes = 0
        self.shards: list[list[str]] = []
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        """Copy one tensor out of the source (e.g. a memory map) into the current shard."""
        tensor = tensor.detach().to("cpu").clone(memory_format=torch.contiguous_format)
        self.pending[name] = tensor
        self.pending_bytes += tensor.numel() * tensor.element_size()
        if self.pending_bytes >= self.max_shard_bytes:
            self._flush()

    def _flush(self) -> None:
        if not self.pending:
            return
        shard = self.folder / f".shard-{len(self.shards)}"
        with writing(shard, shard):
            save_file(self.pending, str(shard), metadata={"format": "pt"})
        self.shards.append(list(self.pending))
        self.total_bytes += self.pending_bytes
        self.pending, self.pending_bytes = {}, 0

    def finish(self) -> None:
        """Flush, give the shards their final names and write the index when there are several."""
        self._flush()
        if len(self.shards) == 1:
            os.replace(self.folder / ".shard-0", self.folder / f"{self.prefix}.safetensors")
            return
        weight_map = {}
        for index, names in enumerate(self.shards):
            final = f"{self.prefix}-{index + 1:05d}-of-{len(self.shards):05d}.safetensors"
            os.replace(self.folder / f".shard-{index}", self.folder / final)
            weight_map.update({name: final for name in names})
        write_json({"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map},
                   self.folder / f"{self.prefix}.safetensors.index.json")


# ---------------------------------------------------------------------------------------------------------
# Decoders
# ---------------------------------------------------------------------------------------------------------


def _meta_shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _check_tensors(found: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]], path: Path,
                   what: str) -> None:
    missing = sorted(set(expected) - set(found))
    if missing:
        raise ValueError(f"{path}: {what} tensor {missing[0]!r} is missing ({len(missing)} missing in all)")
    unexpected = sorted(set(found) - set(expected))
    if unexpected:
        raise ValueError(f"{path}: unexpected {what} tensor {unexpected[0]!r}")
    for key, shape in expected.items():
        if found[key] != shape:
            raise ValueError(f"{path}: {what} tensor {key!r} has shape {found[key]}, expected {shape}")


def _write_transformer(state: dict, dit_keys: dict, kwargs: dict, folder: Path, path: Path,
                       max_shard_bytes: int) -> None:
    """Validate every DiT key and shape, then write the diffusers transformer folder tensor by tensor."""
    from diffusers import FluxTransformer2DModel

    with torch.device("meta"):
        meta = FluxTransformer2DModel(**kwargs)
    converted = {}
    for name, key in dit_keys.items():
        try:
            converted.update({n: tuple(t.shape) for n, t in dit_key_to_diffusers(name, state[key])})
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from err
    _check_tensors(converted, _meta_shapes(meta), path, "DiT")
    folder.mkdir(parents=True)
    meta.save_config(folder)
    writer = ShardWriter(folder, max_shard_bytes=max_shard_bytes)
    for name, key in dit_keys.items():
        for new_name, tensor in dit_key_to_diffusers(name, state[key]):
            writer.add(new_name, tensor)
    writer.finish()


def _merger_config(shapes: dict, official_dir: Path, log: Log) -> MergerConfig:
    """Merger hyper-parameters: widths from the tensors, heads and RoPE from the AR config.json."""
    embed_dim = shapes["layers.0.self_attn.q_proj.weight"][0]
    text = {}
    if (official_dir / "config.json").is_file():
        raw = json.loads((official_dir / "config.json").read_text())
        text = raw.get("text_config") or raw  # transformers 5.x nests it; the official 4.49 file is flat
    else:
        log("  editing decoder: no AR config.json; assuming Qwen2.5 head dim 128, theta 1e6, "
            "sections 16/24/24")
    heads = int(text.get("num_attention_heads", embed_dim // 128))
    rope = text.get("rope_parameters") or text.get("rope_scaling") or {}
    return MergerConfig(
        embed_dim=embed_dim, context_dim=shapes["projector.4.weight"][0], num_attention_heads=heads,
        num_key_value_heads=shapes["layers.0.self_attn.k_proj.weight"][0] // (embed_dim // heads),
        intermediate_size=shapes["layers.0.mlp.gate_proj.weight"][0],
        expand_ratio=shapes["projector.1.weight"][0] // shapes["projector.4.weight"][0],
        rope_theta=float(rope.get("rope_theta", text.get("rope_theta", 1e6))),
        mrope_section=tuple(rope.get("mrope_section", (16, 24, 24))),
        rms_norm_eps=float(text.get("rms_norm_eps", 1e-6)))


def convert_decoder(path: Path, out_folder: Path, kind: str, pooled: torch.Tensor | None, official_dir: Path,
                    log: Log, max_shard_bytes: int = MAX_SHARD_BYTES) -> DecoderConfig:
    """Convert one official decoder pickle (kind 'generation' or 'editing') into a decoder folder.

    Raises:
        ValueError: refused pickle, unknown/missing/mis-shaped tensor, inconsistent widths.
    """
    state = load_pickled_state_dict(path)
    prefix = "adapter." if kind == "generation" else "embedding_merger."
    connector_keys, dit_keys = _split_decoder_keys(path, list(state), prefix)
    kwargs = infer_dit_kwargs({n: tuple(state[k].shape) for n, k in dit_keys.items()}, path)
    connector_shapes = {n: tuple(state[k].shape) for n, k in connector_keys.items()}
    try:
        if kind == "generation":
            merger = None
            embed_dim, context_dim = connector_shapes["0.weight"][1], connector_shapes["0.weight"][0]
            with torch.device("meta"):
                connector = GenerationAdapter(embed_dim, context_dim)
        else:
            merger = _merger_config(connector_shapes, official_dir, log)
            embed_dim, context_dim = merger.embed_dim, merger.context_dim
            with torch.device("meta"):
                connector = EmbeddingMerger(merger)
    except KeyError as err:
        raise ValueError(f"{path}: missing {prefix} tensor {err.args[0]!r}") from err
    _check_tensors(connector_shapes, _meta_shapes(connector), path, prefix.rstrip("."))
    if context_dim != kwargs["joint_attention_dim"]:
        raise ValueError(f"{path}: connector output width {context_dim} != DiT context width "
                         f"{kwargs['joint_attention_dim']}")
    config = DecoderConfig(embed_dim=embed_dim, context_dim=context_dim,
                           pooled_dim=kwargs["pooled_projection_dim"], num_layers=kwargs["num_layers"],
                           num_single_layers=kwargs["num_single_layers"],
                           num_attention_heads=kwargs["num_attention_heads"],
                           attention_head_dim=kwargs["attention_head_dim"],
                           axes_dims_rope=kwargs["axes_dims_rope"],
                           latent_channels=kwargs["in_channels"] // 4,
                           guidance_embeds=kwargs["guidance_embeds"], merger=merger)
    if pooled is None:
        pooled = torch.zeros(config.pooled_dim)
    elif pooled.shape != (config.pooled_dim,):
        raise ValueError(f"CLIP pooled vector has shape {tuple(pooled.shape)}, "
                         f"{path} needs ({config.pooled_dim},)")
    with atomic_folder(out_folder) as folder:
        write_json(config.to_dict(), folder / CONFIG_FILE)
        save_tensors({POOLED_KEY: pooled}, folder / POOLED_FILE)
        save_tensors({n: state[k] for n, k in connector_keys.items()},
                     folder / (ADAPTER_FILE if kind == "generation" else MERGER_FILE))
        _write_transformer(state, dit_keys, kwargs, folder / TRANSFORMER_DIR, path, max_shard_bytes)
    return config


# ---------------------------------------------------------------------------------------------------------
# VAE, CLIP pooled vector, AR files
# ---------------------------------------------------------------------------------------------------------


def convert_vae(path: Path, out_folder: Path, norm_num_groups: int = 32) -> VAEConfig:
    """Convert FLUX ``ae.safetensors`` (BFL naming) into a diffusers AutoencoderKL folder.

    Args:
        path: the ae.safetensors file.
        out_folder: OUT_DIR/vae.
        norm_num_groups: GroupNorm groups (not stored in the file; 32 for FLUX).

    Raises:
        ValueError: unknown/missing/mis-shaped tensors, or quant convs (not a FLUX VAE).
    """
    try:
        handle = safe_open(str(path), framework="pt")
    except Exception as err:  # safetensors raises its own error types for corrupt headers
        raise ValueError(f"{path}: unreadable safetensors file ({err})") from err
    with handle:
        shapes = {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}
        levels = len({k.split(".")[2] for k in shapes if k.startswith("encoder.down.")})
        try:
            channels = tuple(shapes[f"encoder.down.{i}.block.0.conv1.weight"][0] for i in range(levels))
            config = VAEConfig(latent_channels=shapes["encoder.conv_out.weight"][0] // 2,
                               block_out_channels=channels, norm_num_groups=norm_num_groups,
                               layers_per_block=len({k.split(".")[4] for k in shapes
                                                    if k.startswith("encoder.down.0.block.")}))
            names = {vae_key_to_diffusers(k, levels): k for k in shapes}
        except (KeyError, ValueError) as err:
            raise ValueError(f"{path}: not a FLUX VAE ({err})") from err
        with torch.device("meta"):
            meta = build_vae(config)
        expected = _meta_shapes(meta)
        found = {n: _as_linear(shapes[k], expected.get(n, ())) for n, k in names.items()}
        _check_tensors(found, expected, path, "VAE")
        tensors = {n: handle.get_tensor(k).reshape(expected[n]) for n, k in names.items()}
    with atomic_folder(out_folder) as folder:
        meta.save_config(folder)
        save_tensors(tensors, folder / "diffusion_pytorch_model.safetensors")
    return config


def _as_linear(shape: tuple[int, ...], expected: tuple[int, ...]) -> tuple[int, ...]:
    """BFL stores the VAE attention projections as 1x1 convolutions, diffusers as Linear weights."""
    return shape[:2] if len(shape) == 4 and shape[2:] == (1, 1) and len(expected) == 2 else shape


def empty_prompt_pooled(text_encoder_dir: Path, tokenizer_dir: Path | None = None) -> torch.Tensor:
    """CLIP pooled embedding of the empty prompt "" (what FLUX pipelines feed as pooled vector): (P,)."""
    from nexusgen.loading.text_encoders import clip_pooled

    return clip_pooled(text_encoder_dir, tokenizer_dir, "")


def link_autoregressive(official_dir: Path, out_folder: Path) -> list[str]:
    """Check the official AR folder with the AR loader's own checks, then hard-link (or copy) its files.

    Returns:
        Names of the files placed in `out_folder`.
    """
    from nexusgen.loading.autoregressive import check_weights, read_ar_config, weight_index

    keys = weight_index(official_dir)
    check_weights(official_dir, read_ar_config(official_dir, keys), keys)
    names = sorted(p.name for p in official_dir.iterdir() if p.is_file() and AR_FILES.match(p.name))
    with atomic_folder(out_folder) as folder:
        for name in names:
            link_or_copy(official_dir / name, folder / name)
    return names


# ---------------------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------------------


def _find(official_dir: Path, name: str, flux_dir: Path | None = None) -> Path | None:
    places = [flux_dir] if flux_dir is not None else [official_dir / sub for sub in FLUX_DIRS]
    for place in places:
        candidate = (place / name).resolve()
        if candidate.exists():
            return candidate
    return None


def _run_part(name: str, action: Callable[[], str], results: dict, failures: dict, log: Log) -> None:
    try:
        results[name] = action()
        log(f"  {name}: {results[name]}")
    except ValueError as err:
        failures[name] = str(err)
        log(f"  {name}: FAILED: {err}")


def convert_official(official_dir: str | os.PathLike, out_dir: str | os.PathLike, log: Log = print,
                     max_shard_bytes: int = MAX_SHARD_BYTES, vae_norm_num_groups: int = 32, *,
                     flux_dir: str | os.PathLike | None = None, negative_prompt: str = "",
                     device: torch.device | str | None = None) -> dict[str, str]:
    """Convert every official part found in `official_dir` into the model folder `out_dir`.

    Every part is converted into a staging folder next to `out_dir`; only when all present parts converted
    are they moved into `out_dir` (replacing the parts of an earlier conversion), `conversion.json` last. A
    failed conversion leaves `out_dir` as it was.

    Args:
        official_dir: an official Nexus-GenV2 (or V1) folder.
        out_dir: the nexusgen model folder to write.
        log: receives one line per part (converted, skipped or failed).
        max_shard_bytes: safetensors shard size for the DiTs.
        vae_norm_num_groups: GroupNorm groups of the VAE (32 for FLUX; not stored in ae.safetensors).
        flux_dir: the FLUX.1-dev folder (default: looked for in `FLUX_DIRS` around `official_dir`). Its
            `text_encoder/` (+ `tokenizer/`) gives the pooled vector, its `text_encoder_2/` + `tokenizer_2/`
            the T5 embedding of `negative_prompt` (`negative.safetensors`, the official CFG branch).
        negative_prompt: the negative prompt ("" upstream).
        device: where T5 runs (default cuda if available, else cpu).

    Returns:
        part name -> what was done, for the converted parts.

    Raises:
        ValueError: nothing to convert, or a present part failed (after the others were tried).
        OutputError: `out_dir` cannot be written.
    """
    official, out = Path(official_dir), Path(out_dir)
    if not official.is_dir():
        raise ValueError(f"{official}: not a directory")
    check_output_folder(out)
    created = make_parents(out / "_")
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        results = _convert_into(official, staging, out, log, max_shard_bytes, vae_norm_num_groups, flux_dir,
                                negative_prompt, device)
        _publish(staging, out)
    except BaseException as err:
        shutil.rmtree(staging, ignore_errors=True)
        remove_empty(created)
        if isinstance(err, OSError):
            raise output_error(out, err) from None
        raise
    shutil.rmtree(staging, ignore_errors=True)
    return results


def _convert_into(official: Path, staging: Path, out: Path, log: Log, max_shard_bytes: int,
                  vae_norm_num_groups: int, flux_dir, negative_prompt: str, device) -> dict[str, str]:
    """Convert every part found into `staging`; ValueError naming the failed parts."""
    results: dict[str, str] = {}
    failures: dict[str, str] = {}
    log(f"converting {official} -> {out}")
    pooled = None
    flux = Path(flux_dir) if flux_dir is not None else None
    clip_dir = _find(official, "text_encoder", flux)
    if clip_dir is not None:
        def clip() -> str:
            nonlocal pooled
            pooled = empty_prompt_pooled(clip_dir, _find(official, "tokenizer", flux))
            return f'CLIP("") pooled vector {tuple(pooled.shape)} from {clip_dir}'
        _run_part("pooled vector", clip, results, failures, log)
    else:
        log("  pooled vector: no FLUX text_encoder/ found -- decoders get a zero pooled vector "
            "(official decoders expect CLIP(\"\"): add text_encoder/ and convert again)")
    _convert_parts(official, staging, pooled, results, failures, log, max_shard_bytes, vae_norm_num_groups)
    t5_dir, t5_tokenizer = _find(official, "text_encoder_2", flux), _find(official, "tokenizer_2", flux)
    if t5_dir is not None and t5_tokenizer is not None and clip_dir is not None:
        def negative() -> str:
            tensors = negative_branch(t5_dir, t5_tokenizer, clip_dir, _find(official, "tokenizer", flux),
                                      negative_prompt, device, pooled=pooled if negative_prompt == "" else None)
            save_tensors(tensors, staging / NEGATIVE_FILE)
            return f"T5({negative_prompt!r}) {tuple(tensors['prompt_embeds'].shape)} -> {NEGATIVE_FILE}"
        _run_part("negative branch", negative, results, failures, log)
    else:
        log("  negative branch: no FLUX text_encoder_2/ + tokenizer_2/ (and text_encoder/) found -- "
            "classifier-free guidance (official default 3) stays off; give --flux FLUX_DIR")
    if not results and not failures:
        raise ValueError(f"nothing to convert in {official}: no generation_decoder.bin, edit_decoder.bin, "
                         f"decoder_81_512.bin, ae.safetensors or AR config.json + model*.safetensors")
    if failures:
        raise ValueError(f"nothing written to {out}: " + "; ".join(f"{k}: {v}" for k, v in failures.items()))
    write_json({"source": str(official.resolve()), "parts": results, "failed": failures},
               staging / "conversion.json")
    return results


def _publish(staging: Path, out: Path) -> None:
    """Move every converted part from `staging` into `out` (an earlier conversion's part of the same name
    is replaced), `conversion.json` last."""
    out.mkdir(exist_ok=True)
    names = sorted(p.name for p in staging.iterdir() if p.name != "conversion.json") + ["conversion.json"]
    for name in names:
        target, old = out / name, out / f".{name}.old-{os.getpid()}"
        if target.exists():
            os.replace(target, old)
        os.replace(staging / name, target)
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


def _ensure(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _convert_parts(official: Path, out: Path, pooled, results: dict, failures: dict, log: Log,
                   max_shard_bytes: int, vae_norm_num_groups: int) -> None:
    if (official / "config.json").is_file() and any(official.glob("model*.safetensors")):
        def autoregressive() -> str:
            return f"linked {len(link_autoregressive(official, out / 'autoregressive'))} files"
        _run_part("autoregressive", autoregressive, results, failures, log)
    else:
        log("  autoregressive: not present (config.json + model*.safetensors), skipped")
    sources = (("generation", ("generation_decoder.bin", "decoder_81_512.bin"), GENERATION_DIR),
               ("editing", ("edit_decoder.bin",), EDITING_DIR))
    for kind, names, target in sources:
        source = next((official / n for n in names if (official / n).is_file()), None)
        if source is None:
            log(f"  {kind} decoder: {' / '.join(names)} not present, skipped")
            continue

        def decoder(source=source, kind=kind, target=target) -> str:
            config = convert_decoder(source, _ensure(out) / target, kind, pooled, official, log,
                                     max_shard_bytes)
            return (f"{source.name} -> {target}/ ({config.num_layers}+{config.num_single_layers} blocks, "
                    f"width {config.num_attention_heads * config.attention_head_dim})")
        _run_part(f"{kind} decoder", decoder, results, failures, log)
    ae = _find(official, "ae.safetensors")
    if ae is None:
        log("  vae: ae.safetensors not present, skipped")
    else:
        def vae() -> str:
            return f"{ae} -> {VAE_DIR}/ {convert_vae(ae, _ensure(out) / VAE_DIR, vae_norm_num_groups)}"
        _run_part("vae", vae, results, failures, log)
