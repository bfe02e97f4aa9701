"""`nexusgen eval gedit-export`: GEdit-Bench edits in the folder layout its VIEScore evaluation reads.

GEdit-Bench (Step1X-Edit) is the Hugging Face dataset `stepfun-ai/GEdit-Bench`: parquet shards whose rows
hold `key`, `task_type` (11 groups: background_change ... tone_transfer), `instruction`,
`instruction_language` ("en" / "cn"), `input_image`, `input_image_raw` and `Intersection_exist`. Its
evaluation reads `results/<model>/fullset/<task_type>/<instruction_language>/<key>.png`, so with
`--out results/<model>` the export writes exactly that.

Size: the benchmark's own example (`generate_image_example.py`) edits at the area of 512 x 512 with the
raw input's aspect ratio, sides multiples of 32 (`edit_size` below, the same arithmetic); the judge
resizes to that area again. Every case uses noise seed `seed`. Judging needs GPT-4.1 or a Qwen2.5-VL-72B
server (VIEScore: semantics = min of the SC scores, quality = min of the PQ scores, overall = sqrt(SC x PQ)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from nexusgen.batch.runner import Shard, run_items
from nexusgen.files import atomic_save_image

from .benchmark_files import find_parquet, parquet_image, read_parquet_rows, text_field
from .harness import DEFAULT_BATCH_SIZE, check_outputs

COLUMNS = ["key", "task_type", "instruction", "instruction_language", "input_image_raw"]
LANGUAGES = ("en", "cn")
DEFAULT_AREA = 512 * 512


@dataclass(frozen=True)
class GEditCase:
    key: str
    task_type: str
    language: str
    instruction: str
    where: str      # file:row, for messages
    image: bytes    # the raw input image, still encoded (decoded per batch, not all at once)

    @property
    def relative_path(self) -> Path:
        return Path("fullset") / self.task_type / self.language / f"{self.key}.png"


def edit_size(width: int, height: int, area: int = DEFAULT_AREA) -> tuple[int, int]:
    """(width, height) near `area` pixels with the aspect ratio of (width, height), multiples of 32.

    The arithmetic of GEdit-Bench's `calculate_dimensions`: round each side to a multiple of 32, then add or
    remove 32 pixels of width when the area falls below / above the target.
    """
    ratio = width / height
    new_width = round(math.sqrt(area * ratio) / 32) * 32
    new_height = round(math.sqrt(area * ratio) / ratio / 32) * 32
    if new_width * new_height < area:
        new_width += 32
    elif new_width * new_height > area:
        new_width -= 32
    return max(new_width, 32), max(new_height, 32)


def read_cases(folder) -> list[GEditCase]:
    """Every row of the dataset's parquet shards under `folder`, validated (fields named with file:row).

    Raises:
        ValueError: a missing column or field, an unknown language, a key that is not a plain file name, two
            rows writing the same file, or pyarrow missing.
    """
    cases, seen = [], {}
    for where, row in read_parquet_rows(find_parquet(folder, "GEdit-Bench dataset folder"), COLUMNS):
        key = text_field(row, "key", where)
        if Path(key).name != key or key.startswith("."):
            raise ValueError(f"{where}: key {key!r} is not a plain file name")
        language = text_field(row, "instruction_language", where)
        if language not in LANGUAGES:
            raise ValueError(f"{where}: instruction_language must be one of {LANGUAGES}, got {language!r}")
        cell = row["input_image_raw"]
        if not isinstance(cell, dict) or not isinstance(cell.get("bytes"), (bytes, bytearray)):
            raise ValueError(f"{where}: \"input_image_raw\" holds no image bytes")
        case = GEditCase(key, text_field(row, "task_type", where), language, text_field(row, "instruction", where),
                         where, bytes(cell["bytes"]))
        if case.relative_path in seen:
            raise ValueError(f"{where}: writes the same file as {seen[case.relative_path]} ({case.relative_path})")
        seen[case.relative_path] = where
        cases.append(case)
    return cases


def export(model, cases: list[GEditCase], out_dir, *, seed: int = 0, area: int = DEFAULT_AREA,
           decoder: str = "editing", batch_size: int = DEFAULT_BATCH_SIZE, progress: bool | None = None,
           shard: Shard | None = None) -> dict:
    """Edit every case into `out_dir/fullset/<task_type>/<lang>/<key>.png` (resumable).

    Cases of one batch that share an output size are edited in one call.

    Returns:
        {"items", "done", "skipped", "out", "by_language": {"en": n, "cn": n}}
    """
    out_dir = Path(out_dir)

    def process(batch: list[GEditCase]) -> None:
        sources = [parquet_image({"bytes": c.image}, c.where) for c in batch]
        groups: dict[tuple[int, int], list[int]] = {}
        for b, source in enumerate(sources):
            groups.setdefault(edit_size(*source.size, area=area), []).append(b)
        for (width, height), members in groups.items():
            edited = check_outputs(
                model.edit([sources[b] for b in members], [batch[b].instruction for b in members], decoder=decoder,
                           seed=[seed] * len(members), height=height, width=width),
                len(members), Image.Image, "edit")
            for b, image in zip(members, edited):
                atomic_save_image(image.convert("RGB"), out_dir / batch[b].relative_path)

    summary = run_items(cases, is_done=lambda c: (out_dir / c.relative_path).is_file(), process=process,
                        batch_size=batch_size, desc="gedit-bench", progress=progress, shard=shard)
    by_language = {lang: sum(c.language == lang for c in cases) for lang in LANGUAGES}
    return {**summary.as_dict(), "out": str(out_dir), "by_language": by_language}
