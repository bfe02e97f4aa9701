"""`nexusgen eval dpg-export`: DPG-Bench grids, the files its `compute_dpg_bench.py` scores.

DPG-Bench (github.com/TencentQQGYLab/ELLA, `dpg_bench/`) ships its 1,065 prompts as `prompts/<item_id>.txt`
(one dense prompt per file) and its questions as `dpg_bench.csv`. Its scorer lists every file of
`--image-root-path`, takes the item id as the file name up to the first dot, and cuts each image into
`--pic-num` crops of `--resolution` pixels in this order:

    (0, 0)  top-left      (R, 0)  top-right      (0, R)  bottom-left      (R, R)  bottom-right

So the export writes `OUT/<item_id>.png`: the prompt's 4 samples tiled 2x2 in that order, each tile
R x R (R = `resolution`, default the model's image size); run the scorer with `--resolution R --pic-num 4`.
Sample k of every prompt uses noise seed `seed + k`. Nothing but the grids is written into OUT (the
scorer would try to read any other file as an image).

Scoring needs the mPLUG-large VQA model (ModelScope), which this project never downloads.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from nexusgen.batch.runner import Shard, run_items
from nexusgen.files import atomic_save_image

from .benchmark_files import require_dir
from .harness import DEFAULT_BATCH_SIZE, check_outputs

SAMPLES = 4
# Top-left corner of sample k in units of the tile size: the scorer's crop order.
TILE_ORIGINS = ((0, 0), (1, 0), (0, 1), (1, 1))


def read_prompts(folder) -> list[tuple[str, str]]:
    """(item_id, prompt) for every `*.txt` in the prompts folder, sorted by item id.

    Raises:
        ValueError: an empty prompt file, or an item id with a dot (the scorer cuts names at the first dot).
        FileNotFoundError: no folder or no .txt files.
    """
    folder = require_dir(folder, "DPG-Bench prompts folder")
    items = []
    for path in sorted(folder.glob("*.txt")):
        if "." in path.stem:
            raise ValueError(f"{path}: the item id {path.stem!r} has a dot; compute_dpg_bench.py would cut it")
        text = path.read_text(encoding="utf-8-sig").strip()
        if not text:
            raise ValueError(f"{path}: empty prompt")
        items.append((path.stem, text))
    if not items:
        raise FileNotFoundError(f"no prompt files (*.txt) in {folder}")
    return items


def tile(samples: list[Image.Image], resolution: int) -> Image.Image:
    """4 samples -> one (2R, 2R) grid in the scorer's crop order (each sample resized to R x R if needed)."""
    if len(samples) != SAMPLES:
        raise ValueError(f"a DPG-Bench grid needs {SAMPLES} samples, got {len(samples)}")
    grid = Image.new("RGB", (2 * resolution, 2 * resolution))
    for (col, row), sample in zip(TILE_ORIGINS, samples):
        sample = sample.convert("RGB")
        if sample.size != (resolution, resolution):
            sample = sample.resize((resolution, resolution), Image.Resampling.BICUBIC)
        grid.paste(sample, (col * resolution, row * resolution))
    return grid


def export(model, items: list[tuple[str, str]], out_dir, *, resolution: int | None = None, seed: int = 0,
           batch_size: int = DEFAULT_BATCH_SIZE, progress: bool | None = None, shard: Shard | None = None) -> dict:
    """Write one 2x2 grid per prompt into `out_dir` (resumable: an existing grid is skipped).

    Args:
        model: anything with `generate(prompts, seed=[...])` and `image_size`.
        items: (item_id, prompt) pairs (`read_prompts`).
        resolution: tile side R in pixels (default: the model's image size); samples are generated at R x R.

    Returns:
        {"items", "done", "skipped", "resolution", "out"}
    """
    resolution = int(resolution or model.image_size)
    if resolution < 1:
        raise ValueError(f"--resolution must be >= 1, got {resolution}")
    out_dir = Path(out_dir)

    def grid_path(item) -> Path:
        return out_dir / f"{item[0]}.png"

    def process(batch: list[tuple[str, str]]) -> None:
        samples = []
        for k in range(SAMPLES):
            images = model.generate([prompt for _, prompt in batch], seed=[seed + k] * len(batch),
                                    **_size(model, resolution))
            samples.append(check_outputs(images, len(batch), Image.Image, "generate"))
        for b, item in enumerate(batch):
            atomic_save_image(tile([samples[k][b] for k in range(SAMPLES)], resolution), grid_path(item))

    summary = run_items(items, is_done=lambda item: grid_path(item).is_file(), process=process,
                        batch_size=batch_size, desc="dpg-bench", progress=progress, shard=shard)
    return {**summary.as_dict(), "resolution": resolution, "out": str(out_dir)}


def _size(model, resolution: int) -> dict:
    """Ask for R x R samples unless that is the model's own size (reference models take no size)."""
    return {} if resolution == getattr(model, "image_size", None) else {"height": resolution, "width": resolution}
