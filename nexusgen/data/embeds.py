"""The decoders' training datasets: message records plus precomputed image embeddings (docs/upstream.md §6).

Generation decoder (`embeds_gen/*.jsonl`): a message record plus `"embed_path"`, a tensor (N, D) or
(1, N, D) of ground-truth ViT+merger embeddings (N = 81 and D = 3584 for Nexus-GenV2); the target image
is `images[0]`.

Editing decoder (`embeds_edit/*.jsonl`): a message record plus `"embed_source"` (M, D) -- the source
image's ViT vectors at the editing reference grid (M = 324 upstream) -- and `"embed_target"` (N, D) -- the
AR model's teacher-forced predicted target embeddings; `images[0]` is the source, `images[1]` the edited
target.

Embedding files are either upstream `.pt` files (read with `torch.load(weights_only=True)` only: a pickle
that needs code to load is refused, never executed) or our own `.safetensors` files holding one tensor
named "embeds" (written by `nexusgen prepare-embeds`, which also records each tensor's token grid as
`"embed_grid"` / `"embed_source_grid"` / `"embed_target_grid"`: [rows, cols]; upstream files have no grid,
so a square one, sqrt(N) x sqrt(N), is assumed for them). Embedding paths resolve like image paths (against
`image_root`, default the JSONL's folder). A missing embedding file is a bad record (reason
"embed_missing"): the official example JSONLs name `.pt` files that upstream does not ship.
"""

from __future__ import annotations

import math
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from nexusgen.data.messages import InvalidRecord, MessageDataset, resolve_path
from nexusgen.files import save_tensors

EMBEDS_TENSOR = "embeds"
"""Name of the tensor inside our embedding .safetensors files."""
PICKLE_SUFFIXES = (".pt", ".pth", ".bin")


def _check_shape(embeds: torch.Tensor, where: str) -> torch.Tensor:
    if embeds.ndim == 3 and embeds.shape[0] == 1:
        embeds = embeds[0]  # upstream saves (1, N, D) as well as (N, D)
    if embeds.ndim != 2 or embeds.shape[0] == 0 or embeds.shape[1] == 0:
        raise InvalidRecord("embed_shape", f"{where}: expected a tensor (N, D) or (1, N, D), got shape "
                                           f"{tuple(embeds.shape)}")
    if not embeds.is_floating_point():
        raise InvalidRecord("embed_shape", f"{where}: expected floating-point embeddings, got {embeds.dtype}")
    return embeds


def _load_pickle(path: Path) -> torch.Tensor:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's message suggests weights_only=False; we never do that, so report only the cause.
        match = re.search(r"WeightsUnpickler error:\s*(.+?)(?: was not an allowed global|\n|$)", str(err))
        cause = match.group(1).strip() if match else str(err).splitlines()[0]
        if "Unsupported global" in cause:
            raise InvalidRecord("embed_unsafe", f"{path} is a pickle that needs code to load; refused "
                                                f"(only torch.load(weights_only=True) is used): "
                                                f"{cause}") from None
        raise InvalidRecord("embed_unreadable", f"{path} is not a readable torch file ({cause})") from None
    except (RuntimeError, OSError, EOFError, ValueError) as err:
        raise InvalidRecord("embed_unreadable", f"{path} is not a readable torch file ({err})") from None
    if not isinstance(obj, torch.Tensor):
        raise InvalidRecord("embed_unreadable", f"{path} holds a {type(obj).__name__}, expected one tensor")
    return obj


def load_embeds(path: str | Path) -> torch.Tensor:
    """Load one embedding file: an upstream `.pt` pickle (weights only) or our `.safetensors`.

    Args:
        path: the file; `.pt` / `.pth` / `.bin` are read with `torch.load(weights_only=True)`,
            `.safetensors` must hold a tensor named "embeds".

    Returns:
        Tensor (N, D) in the stored dtype, on the CPU (a leading batch dim of 1 is squeezed).

    Raises:
        InvalidRecord: embed_missing, embed_unsafe (pickle needing code), embed_unreadable, embed_shape.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidRecord("embed_missing", f"embedding file {path} not found")
    if path.suffix == ".safetensors":
        try:
            tensors = load_file(path, device="cpu")
        except (SafetensorError, OSError, ValueError) as err:
            raise InvalidRecord("embed_unreadable", f"{path} is not a readable safetensors file "
                                                    f"({err})") from None
        if EMBEDS_TENSOR not in tensors:
            raise InvalidRecord("embed_unreadable", f"{path} has no tensor {EMBEDS_TENSOR!r} "
                                                    f"(tensors: {sorted(tensors)})")
        embeds = tensors[EMBEDS_TENSOR]
    elif path.suffix in PICKLE_SUFFIXES:
        embeds = _load_pickle(path)
    else:
        raise InvalidRecord("embed_unreadable", f"{path}: unknown embedding format {path.suffix!r} "
                                                f"(expected .safetensors or {', '.join(PICKLE_SUFFIXES)})")
    return _check_shape(embeds, str(path))


def save_embeds(path: str | Path, embeds: torch.Tensor) -> None:
    """Write embeddings (N, D) to `path` (.safetensors, tensor "embeds") atomically.

    Written atomically (`nexusgen.files.save_tensors`): a crash never leaves a half-written file under
    the final name.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"embedding files are written as .safetensors, got {path}")
    _check_shape(embeds, str(path))
    save_tensors({EMBEDS_TENSOR: embeds}, path)


def token_grid(record: dict[str, Any], key: str, num_tokens: int) -> tuple[int, int]:
    """The (rows, cols) token grid of an embedding: `record[key]` if present, else a square grid.

    Raises:
        InvalidRecord: the grid does not match the number of tokens, or N is not a square and no grid
            is recorded.
    """
    grid = record.get(key)
    if grid is None:
        side = math.isqrt(num_tokens)
        if side * side != num_tokens:
            raise InvalidRecord("embed_shape", f"{num_tokens} tokens is not a square grid and the record has "
                                               f"no {key!r}")
        return side, side
    if (not isinstance(grid, list) or len(grid) != 2 or not all(isinstance(g, int) and g > 0 for g in grid)
            or grid[0] * grid[1] != num_tokens):
        raise InvalidRecord("embed_shape", f"{key} {grid!r} is not [rows, cols] with rows * cols = "
                                           f"{num_tokens} tokens")
    return grid[0], grid[1]


def embedding_kind(path: str | Path) -> str | None:
    """Which precomputed embeddings a JSONL's first record names: "generation" (`embed_path`), "editing"
    (`embed_source` and `embed_target`), or None (plain message records, or unreadable: the dataset reports
    that). Decides how a decoder stage reads the file."""
    import json

    try:
        with open(path, "rb") as f:
            line = next((raw for raw in f if raw.strip()), b"")
        record = json.loads(line.decode("utf-8-sig"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    if "embed_path" in record:
        return "generation"
    return "editing" if "embed_source" in record and "embed_target" in record else None


class _EmbedDataset(MessageDataset):
    """A message dataset whose records also name embedding files (keys `embed_keys`)."""

    embed_keys: tuple[str, ...] = ()
    min_images: int = 1

    def __init__(self, path: str | Path, *, num_tokens: int | None = None, embed_dim: int | None = None,
                 **kwargs: Any):
        self.num_tokens, self.embed_dim = num_tokens, embed_dim
        super().__init__(path, **kwargs)

    def validate(self, record: dict[str, Any], full: bool = True) -> str:
        task = super().validate(record, full)
        if len(record.get("images", [])) < self.min_images:
            raise InvalidRecord("image_count", f"{type(self).__name__} needs at least {self.min_images} "
                                               f"image(s), the record has {len(record.get('images', []))}")
        for key in self.embed_keys:
            value = record.get(key)
            if value is None:
                raise InvalidRecord("missing_key", f"no {key!r} key (keys: {sorted(record)})")
            if not isinstance(value, str) or not value:
                raise InvalidRecord("wrong_type", f"{key!r} must be a path string, got {value!r:.80}")
            if full and not resolve_path(value, self.image_root).is_file():
                raise InvalidRecord("embed_missing", f"{key} file {value!r} not found (looked at "
                                                     f"{resolve_path(value, self.image_root)}; "
                                                     f"`nexusgen prepare-embeds` computes them)")
        return task

    def _embeds(self, record: dict[str, Any], key: str, num_tokens: int | None) -> torch.Tensor:
        embeds = load_embeds(resolve_path(record[key], self.image_root))
        if num_tokens is not None and embeds.shape[0] != num_tokens:
            raise InvalidRecord("embed_shape", f"{key}: expected {num_tokens} tokens, got shape "
                                               f"{tuple(embeds.shape)}")
        if self.embed_dim is not None and embeds.shape[1] != self.embed_dim:
            raise InvalidRecord("embed_shape", f"{key}: expected dim {self.embed_dim}, got shape "
                                               f"{tuple(embeds.shape)}")
        return embeds


class GenEmbedDataset(_EmbedDataset):
    """Generation-decoder dataset: (ground-truth image embeddings, target image) pairs.

    `dataset[i]` is the `MessageDataset` sample plus::

        "image_embeds": Tensor (N, D), stored dtype -- conditioning of the generation decoder
        "image_grid":   (rows, cols) with rows * cols = N
        "target_image": PIL.Image (RGB) -- images[0], the image to reconstruct

    Args:
        path: the JSONL file (records with "embed_path").
        num_tokens: if given, every embedding must have this many tokens N (81 upstream).
        embed_dim: if given, every embedding must have this width D.
        **kwargs: `MessageDataset` options (image_root, skip_bad, check_images, max_image_pixels).
    """

    embed_keys = ("embed_path",)
    min_images = 1

    def build_sample(self, record: dict[str, Any], task: str, line: int) -> dict[str, Any]:
        embeds = self._embeds(record, "embed_path", self.num_tokens)
        sample = super().build_sample(record, task, line)
        sample["image_embeds"] = embeds
        sample["image_grid"] = token_grid(record, "embed_grid", embeds.shape[0])
        sample["target_image"] = sample["images"][0]
        return sample


class EditEmbedDataset(_EmbedDataset):
    """Editing-decoder dataset: (source embeddings, predicted target embeddings, edited image) triples.

    `dataset[i]` is the `MessageDataset` sample plus::

        "source_embeds": Tensor (M, D) -- ViT vectors of the source at the reference grid (M = 324 upstream)
        "target_embeds": Tensor (N, D) -- the AR model's predicted target embeddings (N = 81 upstream)
        "source_grid", "target_grid": (rows, cols) token grids of the two
        "source_image":  PIL.Image (RGB) -- images[0]
        "target_image":  PIL.Image (RGB) -- images[1], the edited image to reconstruct

    Args:
        path: the JSONL file (records with "embed_source" and "embed_target").
        num_tokens: if given, every target embedding must have this many tokens N.
        embed_dim: if given, every embedding must have this width D.
        **kwargs: `MessageDataset` options (image_root, skip_bad, check_images, max_image_pixels).
    """

    embed_keys = ("embed_source", "embed_target")
    min_images = 2

    def build_sample(self, record: dict[str, Any], task: str, line: int) -> dict[str, Any]:
        source_embeds = self._embeds(record, "embed_source", None)
        target_embeds = self._embeds(record, "embed_target", self.num_tokens)
        sample = super().build_sample(record, task, line)
        sample["source_embeds"] = source_embeds
        sample["target_embeds"] = target_embeds
        sample["source_grid"] = token_grid(record, "embed_source_grid", source_embeds.shape[0])
        sample["target_grid"] = token_grid(record, "embed_target_grid", target_embeds.shape[0])
        sample["source_image"], sample["target_image"] = sample["images"][0], sample["images"][1]
        return sample
