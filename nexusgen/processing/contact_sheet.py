"""A contact sheet: a grid of tiles, each with a few images and lines of text under them.

Used by `nexusgen eval` (the worst failures) and `nexusgen demo` (what the model did).
"""

from __future__ import annotations

from PIL import Image, ImageDraw, ImageFont

TILE_IMAGE = 96
LINE_HEIGHT = 12
TEXT_LINES = 4
CHARS_PER_LINE = 52
COLUMNS = 3
PAD = 6


def _ascii(text: str) -> str:
    """The default bitmap font draws ASCII only; other characters become '?'."""
    return "".join(ch if 32 <= ord(ch) < 127 else "?" for ch in str(text))


def _wrap(lines: list[str]) -> list[str]:
    out = []
    for line in lines:
        line = _ascii(line)
        out += [line[i:i + CHARS_PER_LINE] for i in range(0, max(len(line), 1), CHARS_PER_LINE)]
    return out[: TEXT_LINES * 2]


def contact_sheet(tiles: list[tuple[list[Image.Image], list[str]]], title: str = "") -> Image.Image:
    """Lay out tiles (up to 3 images side by side + text lines) on a white grid.

    Args:
        tiles: (images, text lines) per failed item.
        title: a line drawn at the top.

    Returns:
        An RGB image (a small "no failures" card if `tiles` is empty).
    """
    font = ImageFont.load_default()
    tile_w = 3 * TILE_IMAGE + 4 * PAD
    tile_h = TILE_IMAGE + 2 * TEXT_LINES * LINE_HEIGHT + 3 * PAD
    cols = max(1, min(COLUMNS, len(tiles)))
    rows = max(1, (len(tiles) + cols - 1) // cols)
    sheet = Image.new("RGB", (cols * tile_w, rows * tile_h + 2 * LINE_HEIGHT), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((PAD, 2), _ascii(title or ("no failures" if not tiles else "")), fill="black", font=font)
    for n, (images, lines) in enumerate(tiles):
        x0, y0 = (n % cols) * tile_w, (n // cols) * tile_h + 2 * LINE_HEIGHT
        draw.rectangle([x0 + 1, y0 + 1, x0 + tile_w - 2, y0 + tile_h - 2], outline=(200, 200, 200))
        for k, image in enumerate(images[:3]):
            thumb = image.convert("RGB").resize((TILE_IMAGE, TILE_IMAGE), Image.Resampling.NEAREST)
            sheet.paste(thumb, (x0 + PAD + k * (TILE_IMAGE + PAD), y0 + PAD))
        for k, line in enumerate(_wrap(lines)):
            draw.text((x0 + PAD, y0 + TILE_IMAGE + 2 * PAD + k * LINE_HEIGHT), line, fill="black", font=font)
    return sheet
