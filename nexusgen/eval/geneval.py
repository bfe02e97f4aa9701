"""`nexusgen eval geneval-export`: images in GenEval's folder layout, for the real GenEval scorer.

GenEval (github.com/djghosh13/geneval) scores a folder written by its `generation/diffusers_generate.py`:

    OUT/00000/metadata.jsonl      the prompt's line of evaluation_metadata.jsonl, unchanged
    OUT/00000/samples/0000.png    images-per-prompt samples
    OUT/00000/samples/0001.png ...

`evaluation/evaluate_images.py OUT --outfile results.jsonl` then needs its detector weights, which this
project never downloads: run it where they are available. Prompts file = GenEval's
`evaluation_metadata.jsonl` (one JSON object per line with at least "prompt" and "tag").

Sample k of every prompt is generated with seed `seed + k` (prompts batched together), so the samples
of one prompt differ and a rerun gives the same files. A prompt folder whose metadata.jsonl exists is
complete (it is written last) and is skipped when the export is resumed.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from nexusgen.batch.runner import Shard, run_items
from nexusgen.files import atomic_save_image, write_jsonl

from .benchmark_files import read_jsonl, text_field
from .harness import DEFAULT_BATCH_SIZE, check_outputs


def read_prompts(path) -> list[dict]:
    """GenEval metadata lines, validated.

    Raises:
        ValueError: a line is not a JSON object with a non-empty string "prompt" and a string "tag",
            or the file holds no prompt.
    """
    rows = []
    for number, row in read_jsonl(path, "GenEval prompts file"):
        text_field(row, "prompt", f"{path}:{number}")
        if not isinstance(row.get("tag"), str):
            raise ValueError(f"{path}:{number}: missing \"tag\"")
        rows.append(row)
    return rows


def export(model, prompts: list[dict], out_dir, *, images_per_prompt: int = 4, seed: int = 0,
           batch_size: int = DEFAULT_BATCH_SIZE, progress: bool | None = None, shard: Shard | None = None) -> dict:
    """Generate `images_per_prompt` images per prompt into GenEval's layout.

    Returns:
        {"items": prompts, "done": prompts written now, "skipped": prompts already complete,
         "images": images written now, "out": str}
    """
    if images_per_prompt < 1:
        raise ValueError(f"--images-per-prompt must be >= 1, got {images_per_prompt}")
    out_dir = Path(out_dir)

    def folder(i: int) -> Path:
        return out_dir / f"{i:05d}"

    def process(batch: list[int]) -> None:
        for k in range(images_per_prompt):
            images = check_outputs(model.generate([prompts[i]["prompt"] for i in batch], seed=[seed + k] * len(batch)),
                                   len(batch), Image.Image, "generate")
            for i, image in zip(batch, images):
                atomic_save_image(image.convert("RGB"), folder(i) / "samples" / f"{k:04d}.png")
        for i in batch:  # last: marks the folder complete
            write_jsonl([prompts[i]], folder(i) / "metadata.jsonl")

    summary = run_items(range(len(prompts)), is_done=lambda i: (folder(i) / "metadata.jsonl").is_file(),
                        process=process, batch_size=batch_size, desc="geneval", progress=progress, shard=shard)
    return {**summary.as_dict(), "images": summary.done * images_per_prompt, "out": str(out_dir)}
