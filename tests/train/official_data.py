"""Example data in the official Nexus-Gen layout, written by the tests themselves.

The upstream repository ships `assets/example_datasets/{llm,gen_decoder,edit_decoder}_dataset.jsonl` whose
image paths are relative to the *repository root* (`assets/example_datasets/images/gen_0.png`), with
records of this structure: `id`, `source`, `images`, `messages` (understanding, generation EN/ZH, editing
EN/ZH), and `embeds_gen/*.jsonl` / `embeds_edit/*.jsonl` that add `embed_path` / `embed_source` +
`embed_target`. These are our own small images and prompts in that layout.
"""

import json
from pathlib import Path

from PIL import Image, ImageDraw

DATASETS = "assets/example_datasets"
IMAGES = f"{DATASETS}/images"


def _picture(size, background, shapes) -> Image.Image:
    image = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(image)
    for box, colour in shapes:
        draw.rectangle(box, fill=colour)
    return image


def _records() -> dict[str, list[dict]]:
    understand = {"id": "700001", "source": "our_ocr_sample.json", "images": [f"{IMAGES}/und_0.jpg"],
                  "messages": [{"role": "user", "content": "<image>\nWhat is drawn in this picture?"},
                               {"role": "assistant", "content": "A red block beside a blue block on a grey "
                                                                "floor, with a thin yellow bar above them."}]}
    generate = [
        {"id": "Ours_1", "source": "Ours", "images": [f"{IMAGES}/gen_0.png"],
         "messages": [{"role": "user", "content": "Generate an image according to the following description: "
                                                  "A green square on a white table."},
                      {"role": "assistant", "content": "Here is an image based on the description: <image>"}]},
        {"id": "zh_Ours_1", "source": "Ours", "images": [f"{IMAGES}/gen_0.png"],
         "messages": [{"role": "user", "content": "根据以下描述生成一张图像：白色桌子上的一个绿色方块。"},
                      {"role": "assistant", "content": "这是根据您的描述生成的图像：<image>"}]},
    ]
    edit = [
        {"id": "OursEdit_1_0", "source": "OursEdit", "images": [f"{IMAGES}/edit_0_0.png", f"{IMAGES}/edit_0_1.png"],
         "messages": [{"role": "user", "content": "<image> Paint the square orange."},
                      {"role": "assistant", "content": "Here is the image: <image>"}]},
        {"id": "zh_OursEdit_1_0", "source": "OursEdit",
         "images": [f"{IMAGES}/edit_0_0.png", f"{IMAGES}/edit_0_1.png"],
         "messages": [{"role": "user", "content": "<image> 把方块涂成橙色。"},
                      {"role": "assistant", "content": "以下为编辑后的图像：<image>"}]},
    ]
    return {"llm_dataset.jsonl": [understand, *generate, *edit], "gen_decoder_dataset.jsonl": generate,
            "edit_decoder_dataset.jsonl": edit}


def write_official_examples(root: Path) -> dict[str, Path]:
    """Write the three dataset files and their images under `root` (the "repository root").

    Returns:
        {"llm", "gen_decoder", "edit_decoder"} -> the JSONL paths (their image paths are relative to root).
    """
    images = root / IMAGES
    images.mkdir(parents=True)
    _picture((96, 72), (128, 128, 128), [((10, 30, 40, 60), (220, 30, 30)), ((50, 30, 80, 60), (30, 30, 220)),
                                          ((10, 8, 86, 14), (230, 220, 40))]).save(images / "und_0.jpg")
    _picture((80, 80), (250, 250, 250), [((24, 24, 56, 56), (40, 170, 60))]).save(images / "gen_0.png")
    _picture((72, 96), (250, 250, 250), [((20, 30, 52, 62), (40, 170, 60))]).save(images / "edit_0_0.png")
    _picture((72, 96), (250, 250, 250), [((20, 30, 52, 62), (240, 140, 30))]).save(images / "edit_0_1.png")
    paths = {}
    for name, records in _records().items():
        path = root / DATASETS / name
        path.write_text("".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in records),
                        encoding="utf-8")
        paths[name.removesuffix("_dataset.jsonl")] = path
    return paths
