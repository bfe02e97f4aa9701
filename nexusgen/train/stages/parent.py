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
(`STAGE_PARTS`): before any model is built, never a silent start from random weights. Stock folders are
recognised and checked here; building parts from their weights is `stock_part` (the seam where the stock
initialisation plugs in).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

PART_NAMES = ("autoregressive", "generation_decoder", "editing_decoder", "vae")
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

    @property
    def is_stock(self) -> bool:
        return self.kind in ("stock_qwen", "flux", "flux_transformer")


def classify_parent(path: str | Path) -> Parent:
    """What kind of folder `path` is, and where each of its parts loads from.

    Raises:
        ValueError: not a folder, or none of the accepted kinds.
    """
    given = Path(path)
    folder = given / "final" if (given / "final").is_dir() else given
    if not folder.is_dir():
        raise ValueError(f"stage.parent {str(given)!r}: no such folder")
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
    raise ValueError(f"stage.parent {str(given)!r} is not {', '.join(DESCRIPTIONS.values())} "
                     "(nor a run directory with final/)")


def check_parent(stage: str, path: str | Path | None) -> Parent | None:
    """Classify `stage.parent` and check that it holds a part the stage uses (`STAGE_PARTS`).

    Raises:
        ValueError: one line naming the folder, what it is and what the stage needs.
    """
    if path is None:
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
    return parent


def stock_part(parent: Parent, part: str):
    """Build `part` from a stock folder's weights: the seam where the stock initialisation plugs in (the AR
    model from a stock Qwen2.5-VL-Instruct folder with a new vision head and prefill table; a decoder's DiT
    from a FLUX transformer with a new adapter / merger, the merger layer from the Qwen model's layer 0).

    Raises:
        ValueError: not available in this version (one line, before step 1).
    """
    raise ValueError(f"stage.parent {parent.description}: starting a {part} from stock weights is not available "
                     "yet; use a nexusgen model folder or an official Nexus-GenV2 folder")


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
