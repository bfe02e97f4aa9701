"""`nexusgen eval imgedit-export`: edited images in the layout ImgEdit-Bench's GPT judge reads.

ImgEdit (github.com/PKU-YuanGroup/ImgEdit, `Benchmark/`) ships its single-turn suites as JSON objects
keyed by case id (`Basic/basic_edit.json`, 734 cases; `UGE/UGE_edit.json`):

    {"1082": {"id": "animal/000342021.jpg", "prompt": "Change the tortoise's shell ...", "edit_type": "adjust"}}

with the source images under an `origin_img_root` folder (`<root>/<id>`). Its judge
(`Basic/basic_bench.py --result_img_folder OUT --edit_json ... --origin_img_root ...`) reads
`OUT/<key>.png` for every key, so that is what the export writes (at the model's output size; the judge
takes any size). Every case uses noise seed `seed`. Judging needs GPT-4o (or the released ImgEdit judge,
a Qwen2.5-VL model), then `step1_get_avgscore.py` and `step2_typescore.py` average the three scores per
image and per edit type.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from nexusgen.batch.runner import Shard, run_items
from nexusgen.files import atomic_save_image

from .benchmark_files import open_image, read_json, require_dir, text_field
from .harness import DEFAULT_BATCH_SIZE, check_outputs


@dataclass(frozen=True)
class EditCase:
    """One editing case of a benchmark: its key, source image path, instruction and type."""

    key: str
    source: Path
    instruction: str
    edit_type: str


def read_cases(edit_json, origin_root) -> list[EditCase]:
    """The cases of an ImgEdit single-turn JSON, each source image checked to exist.

    Raises:
        ValueError: not a JSON object of objects, a missing field (named with its key), a key that is
            not a plain file name.
        FileNotFoundError: the JSON, the root folder, or a source image is missing.
    """
    data = read_json(edit_json, "ImgEdit edit JSON")
    origin_root = require_dir(origin_root, "ImgEdit original images folder")
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{edit_json}: expected a non-empty JSON object of cases keyed by id")
    cases = []
    for key, case in data.items():
        where = f"{edit_json}: case {key!r}"
        if not isinstance(case, dict):
            raise ValueError(f"{where}: expected an object, got {type(case).__name__}")
        if not key or Path(key).name != key or key.startswith("."):
            raise ValueError(f"{where}: a key must be a plain file name")
        source = origin_root / text_field(case, "id", where)
        if not source.is_file():
            raise FileNotFoundError(f"{where}: source image not found: {source}")
        cases.append(EditCase(key, source, text_field(case, "prompt", where), text_field(case, "edit_type", where)))
    return cases


def export(model, cases: list[EditCase], out_dir, *, seed: int = 0, decoder: str = "editing",
           batch_size: int = DEFAULT_BATCH_SIZE, progress: bool | None = None, shard: Shard | None = None) -> dict:
    """Edit every case's source image into `out_dir/<key>.png` (resumable: existing files are skipped).

    Returns:
        {"items", "done", "skipped", "out"}
    """
    out_dir = Path(out_dir)

    def result_path(case: EditCase) -> Path:
        return out_dir / f"{case.key}.png"

    def process(batch: list[EditCase]) -> None:
        sources = [open_image(c.source, f"case {c.key!r}") for c in batch]
        edited = check_outputs(model.edit(sources, [c.instruction for c in batch], decoder=decoder,
                                          seed=[seed] * len(batch)), len(batch), Image.Image, "edit")
        for case, image in zip(batch, edited):
            atomic_save_image(image.convert("RGB"), result_path(case))

    summary = run_items(cases, is_done=lambda c: result_path(c).is_file(), process=process,
                        batch_size=batch_size, desc="imgedit", progress=progress, shard=shard)
    return {**summary.as_dict(), "out": str(out_dir)}
