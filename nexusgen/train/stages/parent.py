"""`stage.parent`: what kind of folder a stage starts from, and whether it holds what the stage needs.

A parent is exactly one of

=================  ==============================================  =========================================
kind               recognised by                                   parts it provides
=================  ==============================================  =========================================
nexusgen           a run directory (its `final/`) or a model        its part folders: autoregressive/,
                   folder: nexusgen.json or any part folder         generation_decoder/, editing_decoder/, vae/
official           a Qwen2.5-VL config.json at the top with         autoregressive (the folder itself); its
                   vision_head / image_prefill_embeds tensors       pickled decoders need `nexusgen convert`
stock_qwen         a Qwen2.5-VL-Instruct config.json + weights      autoregressive (vision head and prefill
                   without those tensors                            table new)
flux               FLUX.1-dev: model_index.json (FluxPipeline)      transformer/ (the DiT of both decoders),
                   with transformer/                                vae/
flux_transformer   a diffusers FluxTransformer2DModel folder        the DiT (and vae/ beside it when it is
                   (config.json `_class_name`)                      FLUX.1-dev's own transformer/)
=================  ==============================================  =========================================

Anything else is a ValueError, and so is a parent that holds none of the parts a stage uses
(`STAGE_PARTS`): before any model is built, never a silent start from random weights.

A decoder's DiT from FLUX needs an AR model beside it -- the frozen model that computes the embeddings, the
width of the new adapter / merger, the merger's layer 0 -- which a FLUX folder does not hold:
`stage.ar_parent` names it (a stock Qwen2.5-VL-Instruct folder, an official folder, or a nexusgen folder with
autoregressive/). `check_parent` checks the pair. The parts themselves are built from stock weights by
`stages/parts.py` with `nexusgen.loading.stock` (what `nexusgen assemble` writes, in memory).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from nexusgen.config import PART_NAMES

NEW_AR_TENSORS = ("vision_head.weight", "image_prefill_embeds.weight")

STAGE_PARTS: dict[str, tuple[str, ...]] = {
    "vae": ("vae",),
    "vlm": ("autoregressive", "vae"),
    "ar": ("autoregressive",),
    "generation_decoder": ("generation_decoder", "transformer", "autoregressive", "vae"),
    "editing_decoder": ("editing_decoder", "generation_decoder", "transformer", "autoregressive", "vae"),
}
"""Parts a stage uses from its parent, the part it trains first; a parent must hold at least one. In a
from-scratch pipeline a stage may start its part new (from the preset) beside the parent's earlier parts:
`vlm` beside the VAE, a decoder beside the VAE and AR model; a decoder's DiT may also start from a FLUX
transformer or the parent's generation decoder."""

DECODER_STAGES = ("generation_decoder", "editing_decoder")
STOCK_DIT_KINDS = ("flux", "flux_transformer")

DESCRIPTIONS = {"nexusgen": "a nexusgen model folder", "official": "an official Nexus-GenV2 folder",
                "stock_qwen": "a stock Qwen2.5-VL-Instruct folder", "flux": "a FLUX.1-dev folder",
                "flux_transformer": "a diffusers FluxTransformer2DModel folder"}


@dataclass(frozen=True)
class Parent:
    """A classified `stage.parent`.

    Attributes:
        kind: one of `DESCRIPTIONS`.
        folder: the folder itself (a run directory's `final/`).
        parts: part name ("autoregressive", "generation_decoder", "editing_decoder", "vae", "transformer")
            -> the folder it loads from.
        pickled: decoder parts present only as upstream pickles (official folders), part -> file.
    """

    kind: str
    folder: Path
    parts: dict[str, Path]
    pickled: dict[str, Path] = field(default_factory=dict)

    @property
    def description(self) -> str:
        return f"{self.folder} ({DESCRIPTIONS[self.kind]})"


def classify_parent(path: str | Path, setting: str = "stage.parent") -> Parent:
    """What kind of folder `path` is, and where each of its parts loads from.

    Args:
        path: the folder (or a run directory).
        setting: the option that named it, for the error message (`stage.parent`, `stage.ar_parent`).

    Raises:
        ValueError: not a folder, or none of the accepted kinds.
    """
    given = Path(path)
    folder = given / "final" if (given / "final").is_dir() else given
    if not folder.is_dir():
        raise ValueError(f"{setting} {str(given)!r}: no such folder")
    config = _json(folder / "config.json")
    if config.get("model_type") == "qwen2_5_vl":
        pickled = {part: folder / name for part, name in (("generation_decoder", "generation_decoder.bin"),
                                                           ("editing_decoder", "edit_decoder.bin"))
                   if (folder / name).is_file()}
        kind = "official" if _has_tensors(folder, NEW_AR_TENSORS) or pickled else "stock_qwen"
        return Parent(kind, folder, {"autoregressive": folder}, pickled)
    if _json(folder / "model_index.json").get("_class_name") == "FluxPipeline" and (folder / "transformer").is_dir():
        flux = {"transformer": folder / "transformer"}
        return Parent("flux", folder, {**flux, **({"vae": folder / "vae"} if (folder / "vae").is_dir() else {})})
    if config.get("_class_name") == "FluxTransformer2DModel":
        beside = folder.parent / "vae"
        vae = {"vae": beside} if folder.name == "transformer" and beside.is_dir() else {}
        return Parent("flux_transformer", folder, {"transformer": folder, **vae})
    parts = {p: folder / p for p in PART_NAMES if (folder / p).is_dir()}  # checked last: FLUX has vae/ too
    if parts or (folder / "nexusgen.json").is_file():
        return Parent("nexusgen", folder, parts)
    raise ValueError(f"{setting} {str(given)!r} is not {', '.join(DESCRIPTIONS.values())} "
                     "(nor a run directory with final/)")


def check_parent(stage: str, path: str | Path | None, ar_path: str | Path | None = None) -> Parent | None:
    """Classify `stage.parent` (and `stage.ar_parent`) and check that they hold what the stage uses
    (`STAGE_PARTS`; a decoder stage from a stock DiT also needs the AR model and a VAE).

    Raises:
        ValueError: one line naming the folder, what it is and what the stage needs.
    """
    if path is None:
        if ar_path is not None:
            raise ValueError(f"stage.ar_parent={ar_path} is set but stage.parent is not: ar_parent is the AR model "
                             f"beside a stage.parent without one (a FLUX.1-dev folder); to start from {ar_path} "
                             "alone, set stage.parent to it")
        return None
    parent = classify_parent(path)
    wanted = STAGE_PARTS[stage]
    if wanted[0] in parent.pickled:  # never start a new decoder beside the one the user meant to fine-tune
        raise ValueError(f"stage.parent {parent.description}: its {wanted[0].replace('_', ' ')} is an upstream "
                         f"pickle ({parent.pickled[wanted[0]].name}); convert it once (`nexusgen convert "
                         f"{parent.folder} OUT_DIR`) and set stage.parent=OUT_DIR")
    if not any(part in parent.parts for part in wanted):
        has = ", ".join(sorted(parent.parts)) or "no model part"
        raise ValueError(f"stage {stage} starts from {' / '.join(wanted)}, but stage.parent {parent.description} "
                         f"has {has}")
    if stage in DECODER_STAGES:
        _check_decoder_parents(stage, parent, ar_path)
    elif ar_path is not None:
        raise ValueError(f"stage.ar_parent is for the decoder stages ({', '.join(DECODER_STAGES)}), not stage {stage}")
    return parent


def _check_decoder_parents(stage: str, parent: Parent, ar_path: str | Path | None) -> None:
    """A decoder stage: a stock Qwen parent has no DiT; a stock DiT needs `stage.ar_parent` and a VAE;
    `stage.ar_parent` only beside a parent without an AR model, and it must hold one."""
    if parent.kind == "stock_qwen":
        raise ValueError(f"stage {stage}: stage.parent {parent.description} has no decoder to start from; start the "
                         f"DiT from FLUX.1-dev: --set stage.parent=FLUX_DIR --set stage.ar_parent={parent.folder}")
    if "autoregressive" in parent.parts:
        if ar_path is not None:
            raise ValueError(f"stage.parent {parent.description} has its own AR model; stage.ar_parent ({ar_path}) "
                             "is only for a stage.parent without one (a FLUX.1-dev folder)")
        return
    if ar_path is None:
        if parent.kind in STOCK_DIT_KINDS:
            raise ValueError(f"stage {stage} from stage.parent {parent.description} needs the AR model whose "
                             "embeddings the decoder reads: --set stage.ar_parent=DIR (a stock Qwen2.5-VL-Instruct "
                             "folder, an official Nexus-GenV2 folder, or a nexusgen model folder or run directory)")
        return  # a nexusgen parent without an AR model: a new one from the preset, as the from-scratch recipes chain
    ar = classify_parent(ar_path, "stage.ar_parent")
    if "autoregressive" not in ar.parts:
        has = ", ".join(sorted(ar.parts)) or "no model part"
        raise ValueError(f"stage.ar_parent {ar.description} has no AR model (it has {has})")
    if parent.kind in STOCK_DIT_KINDS and "vae" not in parent.parts and "vae" not in ar.parts:
        raise ValueError(f"stage {stage}: neither stage.parent {parent.description} nor stage.ar_parent "
                         f"{ar.description} has a VAE; use the FLUX.1-dev folder itself as stage.parent")


def wants_ar_parent(stage: str, path: str | Path) -> bool:
    """Whether a decoder stage starting from `path` takes its AR model from `stage.ar_parent` (the parent
    holds none); False for a folder that is not a parent (`check_parent` reports it)."""
    try:
        return stage in DECODER_STAGES and "autoregressive" not in classify_parent(path).parts
    except ValueError:
        return False


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _has_tensors(folder: Path, names: tuple[str, ...]) -> bool:
    """Whether the folder's safetensors weights (index or single file) hold any of `names` (headers only)."""
    index = _json(folder / "model.safetensors.index.json").get("weight_map")
    if isinstance(index, dict):
        return any(name in index for name in names)
    if (folder / "model.safetensors").is_file():
        from safetensors import safe_open

        try:
            with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
                return any(name in f.keys() for name in names)
        except Exception:  # safetensors raises its own error types; the loader reports the file
            return False
    return False
