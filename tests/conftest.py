"""Test-session settings and fixtures shared by every test."""

import contextlib
import json
import os
import resource
import signal
from pathlib import Path

import pytest

# Before torch is imported by any test module: OpenMP threads that busy-wait stall badly when the CPU is
# shared (CI machines, parallel jobs); the CLI sets the same default (nexusgen/cli.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@contextlib.contextmanager
def file_size_limit(max_bytes: int | None):
    """A full disk for the enclosed code: no file may grow past `max_bytes` (RLIMIT_FSIZE; the write fails
    with EFBIG, as a full disk's with ENOSPC). Works for root and for every writer (Pillow, safetensors' Rust,
    torch), unlike a read-only folder (root writes anyway) or a patched `open`. SIGXFSZ is ignored so the
    write returns the error instead of killing the process. None: no limit."""
    if max_bytes is None:
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


@pytest.fixture
def full_disk():
    """`file_size_limit` as a fixture: `with full_disk(64): ...`."""
    return file_size_limit


# ----------------------------------------------------------------------------------------------------
# Example data in the official Nexus-Gen layout
# ----------------------------------------------------------------------------------------------------
# Upstream ships a small example folder (docs/upstream.md section 6). These files follow its layout, record
# structure, field names and path convention exactly -- image and embedding paths are relative to the
# folder that holds `assets/`, not to the JSONL file -- with our own prompts and drawn images: one
# understanding sample (a JPEG), generation and editing in English and Chinese (1024 x 1024 PNGs), and
# embedding datasets whose `.pt` files are absent, as upstream's are.
DATASETS = "assets/example_datasets"
EXAMPLE_TEXT = ("Tide tables for the harbour are posted at the pier office. High water today is at "
                "seven forty in the morning and again shortly after eight in the evening; small boats "
                "should return before the second bell. The ferry to the island runs every two hours.")
GEN_EN = "A red lighthouse on a rocky cliff at sunset, with waves breaking below."
GEN_ZH = "夕阳下，岩石悬崖上有一座红色灯塔，下方海浪翻涌。"
EDIT_EN = "Replace the blue teapot with a glass vase of yellow tulips."
EDIT_ZH = "把蓝色茶壶换成插着黄色郁金香的玻璃花瓶。"
UNDERSTAND_ID, GEN_ID = "20931", "SketchGen_40417"
EDIT_ID = "PaintEditReplace_1750001234567890123_1750009876543210987_0"
ZH_GEN_USER = "根据以下描述生成一张图像："
ZH_GEN_ANSWER = "这是根据您的描述生成的图像：<image>"
ZH_EDIT_ANSWER = "以下为编辑后的图像：<image>"


def _sky(size: int, top: tuple, bottom: tuple):
    """A vertical colour gradient, `size` x `size` (PIL RGB)."""
    import numpy as np
    from PIL import Image

    t = np.linspace(0.0, 1.0, size)[:, None, None]
    rows = (1 - t) * np.array(top) + t * np.array(bottom)  # (size, 1, 3)
    return Image.fromarray(np.repeat(rows, size, axis=1).astype(np.uint8))


def _lighthouse(size: int = 1024):
    from PIL import ImageDraw

    image = _sky(size, (250, 150, 80), (120, 60, 140))
    draw = ImageDraw.Draw(image)
    draw.ellipse((620, 520, 820, 720), fill=(255, 210, 90))  # the sun
    draw.polygon([(0, 700), (520, 560), (700, 1024), (0, 1024)], fill=(90, 80, 70))  # the cliff
    draw.rectangle((700, 820, size, size), fill=(40, 80, 150))  # the sea
    for x in range(700, size, 48):
        draw.arc((x, 800, x + 48, 840), 180, 360, fill=(235, 240, 250), width=6)  # waves
    draw.polygon([(230, 600), (330, 600), (310, 300), (250, 300)], fill=(200, 30, 40))  # the tower
    draw.rectangle((245, 250, 315, 300), fill=(250, 240, 180))  # the lamp room
    draw.polygon([(235, 250), (325, 250), (280, 205)], fill=(60, 40, 40))
    return image


def _table(size: int = 1024, *, tulips: bool):
    from PIL import ImageDraw

    image = _sky(size, (235, 225, 205), (215, 200, 175))  # a kitchen wall
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 640, size, size), fill=(150, 100, 60))  # the table
    draw.rectangle((80, 120, 380, 420), outline=(90, 70, 50), width=14)  # a window
    if tulips:
        draw.rectangle((450, 470, 570, 660), fill=(200, 230, 235), outline=(150, 180, 190), width=6)
        for k, x in enumerate((470, 510, 550)):
            draw.line((x, 470, x - 20 + 20 * k, 330), fill=(40, 130, 50), width=8)
            draw.ellipse((x - 50 + 20 * k, 290, x + 10 + 20 * k, 350), fill=(245, 210, 40))
    else:
        draw.ellipse((420, 500, 620, 660), fill=(40, 80, 190))  # the teapot
        draw.polygon([(610, 560), (700, 520), (690, 545), (615, 600)], fill=(40, 80, 190))
        draw.ellipse((490, 470, 550, 510), fill=(30, 60, 150))
    return image


def _page(width: int = 770, height: int = 731):
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, height), (250, 248, 240))
    draw = ImageDraw.Draw(image)
    words, line, y = EXAMPLE_TEXT.split(), "", 40
    for word in words:  # a printed page: the text of the understanding answer, wrapped
        if len(line) + len(word) > 60:
            draw.text((40, y), line, fill=(20, 20, 20))
            line, y = "", y + 28
        line = f"{line} {word}".strip()
    draw.text((40, y), line, fill=(20, 20, 20))
    return image


def _robot(size: int = 1024):
    from PIL import ImageDraw

    image = _sky(size, (200, 225, 245), (245, 245, 250))
    draw = ImageDraw.Draw(image)
    draw.rectangle((362, 300, 662, 560), fill=(160, 165, 175))  # head
    draw.ellipse((420, 380, 480, 440), fill=(30, 200, 230))
    draw.ellipse((544, 380, 604, 440), fill=(30, 200, 230))
    draw.rectangle((312, 600, 712, 950), fill=(120, 125, 140))  # body
    draw.line((512, 300, 512, 200), fill=(90, 90, 100), width=12)
    draw.ellipse((492, 170, 532, 210), fill=(230, 60, 60))
    return image


def _messages(user: str, assistant: str) -> list[dict]:
    return [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]


def _official_records() -> dict[str, list[dict]]:
    """The records of each upstream example file (keys: the file names under `DATASETS`)."""
    images = f"{DATASETS}/images"
    und = {"id": UNDERSTAND_ID, "source": "printed_pages_10k.json", "images": [f"{images}/und_0.jpg"],
           "messages": _messages("<image>\nPlease read out the text printed on this page.", EXAMPLE_TEXT)}
    gen = [{"id": gid, "source": "SketchGen", "images": [f"{images}/gen_0.png"], "messages": messages}
           for gid, messages in (
               (GEN_ID, _messages(f"Generate an image according to the following description: {GEN_EN}",
                                  "Here is an image based on the description: <image>")),
               (f"zh_{GEN_ID}", _messages(ZH_GEN_USER + GEN_ZH, ZH_GEN_ANSWER)))]
    edit = [{"id": eid, "source": "PaintEditReplace", "images": [f"{images}/edit_0_0.png", f"{images}/edit_0_1.png"],
             "messages": messages}
            for eid, messages in ((EDIT_ID, _messages(f"<image> {EDIT_EN}", "Here is the image: <image>")),
                                  (f"zh_{EDIT_ID}", _messages(f"<image> {EDIT_ZH}", ZH_EDIT_ANSWER)))]
    gen_embeds = [{**r, "embed_path": f"{DATASETS}/embeds_gen/embeds/{r['id']}.pt"} for r in gen]
    edit_embeds = [{**r, "embed_source": f"{DATASETS}/embeds_edit/embeds/{r['id']}_0.pt",
                    "embed_target": f"{DATASETS}/embeds_edit/embeds/{r['id']}_1.pt"} for r in edit]
    return {"llm_dataset.jsonl": [und, *gen, *edit], "gen_decoder_dataset.jsonl": gen,
            "edit_decoder_dataset.jsonl": edit,
            "embeds_gen/gen_decoder_embeds_dataset.jsonl": gen_embeds,
            "embeds_edit/edit_decoder_embeds_dataset.jsonl": edit_embeds}


def write_official_examples(root: Path) -> Path:
    """Write the example folder under `root` and return `root` (the folder the record paths start from)."""
    datasets = root / DATASETS
    (datasets / "images").mkdir(parents=True)
    (root / "assets/examples").mkdir(parents=True)
    _page().save(datasets / "images/und_0.jpg", quality=90)
    _lighthouse().save(datasets / "images/gen_0.png")
    _table(tulips=False).save(datasets / "images/edit_0_0.png")
    _table(tulips=True).save(datasets / "images/edit_0_1.png")
    _robot().save(root / "assets/examples/robot.png")
    for name, records in _official_records().items():
        path = datasets / name
        path.parent.mkdir(parents=True, exist_ok=True)
        # Upstream writes the message files compactly and the embedding files with spaces, both UTF-8.
        separators = (", ", ": ") if name.startswith("embeds_") else (",", ":")
        path.write_text("".join(json.dumps(r, ensure_ascii=False, separators=separators) + "\n"
                                for r in records), encoding="utf-8")
    return root


@pytest.fixture(scope="session")
def official_examples(tmp_path_factory) -> Path:
    """A folder laid out as upstream's example data (written once per session); see `write_official_examples`."""
    return write_official_examples(tmp_path_factory.mktemp("official-examples"))


@pytest.fixture(scope="module")
def tiny_model():
    """A random-weight tiny NexusGen, one per test module (tests may change its sampling settings)."""
    from nexusgen.api import NexusGen
    from nexusgen.loading.folder import build_random_model

    return NexusGen(build_random_model("tiny", seed=0), name="tiny", progress=False)
