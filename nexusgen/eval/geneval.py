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

import json
from pathlib import Path

from PIL import Image

from .harness import DEFAULT_BATCH_SIZE, batched, check_outputs, load_model, save_image, write_text


def read_prompts(path) -> list[dict]:
    """GenEval metadata lines, validated.

    Raises:
        ValueError: a line is not a JSON object with a non-empty string "prompt" and a string "tag",
            or the file holds no prompt.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompts file not found: {path}")
    rows = []
    with open(path, encoding="utf-8-sig") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}: not JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
            if not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
                raise ValueError(f"{path}:{number}: missing or empty \"prompt\"")
            if not isinstance(row.get("tag"), str):
                raise ValueError(f"{path}:{number}: missing \"tag\"")
            rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no prompts")
    return rows


def export(model, prompts: list[dict], out_dir, *, images_per_prompt: int = 4, seed: int = 0,
           batch_size: int = DEFAULT_BATCH_SIZE) -> dict:
    """Generate `images_per_prompt` images per prompt into GenEval's layout.

    Returns:
        {"prompts": int, "images": int, "skipped": int (prompts already complete), "out": str}
    """
    if images_per_prompt < 1:
        raise ValueError(f"--images-per-prompt must be >= 1, got {images_per_prompt}")
    out_dir = Path(out_dir)
    folders = [out_dir / f"{i:05d}" for i in range(len(prompts))]
    todo = [i for i, folder in enumerate(folders) if not (folder / "metadata.jsonl").is_file()]
    for k in range(images_per_prompt):
        for _, batch in batched(todo, batch_size):
            images = check_outputs(model.generate([prompts[i]["prompt"] for i in batch], seed=seed + k),
                                   len(batch), Image.Image, "generate")
            for i, image in zip(batch, images):
                save_image(image.convert("RGB"), folders[i] / "samples" / f"{k:04d}.png")
    for i in todo:  # last: marks the folder complete
        write_text(folders[i] / "metadata.jsonl", json.dumps(prompts[i], ensure_ascii=False) + "\n")
    return {"prompts": len(prompts), "images": len(todo) * images_per_prompt,
            "skipped": len(prompts) - len(todo), "out": str(out_dir)}


def export_command(args) -> dict:
    """Handler of `nexusgen eval geneval-export` (see nexusgen/cli.py)."""
    prompts = read_prompts(args.prompts)
    if args.images_per_prompt < 1:
        raise ValueError(f"--images-per-prompt must be >= 1, got {args.images_per_prompt}")
    return export(load_model(args.model), prompts, args.out, images_per_prompt=args.images_per_prompt,
                  seed=args.seed)
