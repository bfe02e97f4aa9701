"""Every image mode and bit depth Pillow reads becomes the RGB image it shows (`processing.images.to_rgb`):
a test file per mode, written here, is read through `load_image` (the reader of every command, the API and
the server) and its pixels compared with the intended ones."""

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from nexusgen.processing.images import load_image, to_rgb

RNG = np.random.default_rng(0)


def _rgb(array_hw) -> np.ndarray:
    """(H, W) grey -> (H, W, 3)."""
    return np.repeat(np.asarray(array_hw)[..., None], 3, axis=-1)


def _loaded(path) -> np.ndarray:
    image = load_image(path)
    assert image.mode == "RGB"
    return np.asarray(image).astype(int)


def _close(got, want, tolerance=0):
    assert got.shape == np.asarray(want).shape
    assert np.abs(got - np.asarray(want, dtype=int)).max() <= tolerance


def test_16_bit_grey_png_is_scaled_not_clipped(tmp_path):
    # the bug: convert("RGB") clipped every value above 255, so 99.5% of a 16-bit image came out white
    values = np.linspace(0, 65535, 16 * 16).astype(np.uint16).reshape(16, 16)
    Image.fromarray(values).save(tmp_path / "grey16.png")
    assert Image.open(tmp_path / "grey16.png").mode == "I;16"
    got = _loaded(tmp_path / "grey16.png")
    _close(got, _rgb(np.rint(values / 257)))
    assert (got == 255).mean() < 0.01


def test_16_bit_big_endian_tiff(tmp_path):
    values = RNG.integers(0, 65536, (8, 12)).astype(">u2")
    Image.fromarray(values).save(tmp_path / "grey16b.tif")
    assert Image.open(tmp_path / "grey16b.tif").mode == "I;16B"
    _close(_loaded(tmp_path / "grey16b.tif"), _rgb(np.rint(values.astype(float) / 257)))


def test_16_bit_pgm_read_as_mode_i(tmp_path):
    values = RNG.integers(0, 65536, (6, 5)).astype(">u2")
    (tmp_path / "grey.pgm").write_bytes(b"P5\n5 6\n65535\n" + values.tobytes())
    assert Image.open(tmp_path / "grey.pgm").mode == "I"
    _close(_loaded(tmp_path / "grey.pgm"), _rgb(np.rint(values.astype(float) / 257)))


def test_32_bit_integer_tiff_scaled_from_its_declared_bits(tmp_path):
    values = RNG.integers(0, 2**31 - 1, (8, 8)).astype(np.int32)
    values[0, 0] = 1000  # a dark pixel: with the file's 32 bits declared, the scale is not guessed from data
    Image.fromarray(values).save(tmp_path / "int32.tif")
    assert Image.open(tmp_path / "int32.tif").mode == "I"
    _close(_loaded(tmp_path / "int32.tif"), _rgb(np.rint(values.astype(float) * 255 / (2**31 - 1))))


@pytest.mark.parametrize("top", [1.0, 255.0])
def test_float_tiff_scaled_from_unit_or_byte_range(tmp_path, top):
    values = (RNG.random((7, 9)) * top).astype(np.float32)
    Image.fromarray(values).save(tmp_path / "float.tif")
    assert Image.open(tmp_path / "float.tif").mode == "F"
    _close(_loaded(tmp_path / "float.tif"), _rgb(np.rint(values.astype(float) * 255 / top)))


def test_palette_with_a_transparent_entry_shows_white_there(tmp_path):
    image = Image.new("P", (4, 2))
    image.putpalette([200, 10, 20, 0, 0, 255] + [0] * 762)
    image.putdata([0, 1, 0, 1, 1, 0, 1, 0])
    image.save(tmp_path / "palette.png", transparency=1)  # tRNS: index 1 fully transparent
    opened = Image.open(tmp_path / "palette.png")
    assert opened.mode == "P" and "transparency" in opened.info
    red, white = (200, 10, 20), (255, 255, 255)
    _close(_loaded(tmp_path / "palette.png"), [[red, white, red, white], [white, red, white, red]])


@pytest.mark.parametrize("mode", ["LA", "RGBA"])
def test_alpha_is_composited_on_white(tmp_path, mode):
    colour = RNG.integers(0, 256, (5, 6, 1 if mode == "LA" else 3))
    alpha = RNG.integers(0, 256, (5, 6, 1))
    Image.fromarray(np.concatenate([colour, alpha], -1).astype(np.uint8).squeeze(), mode).save(tmp_path / "a.png")
    assert Image.open(tmp_path / "a.png").mode == mode
    want = np.rint(colour * alpha / 255 + 255 * (1 - alpha / 255))
    _close(_loaded(tmp_path / "a.png"), np.broadcast_to(want, (5, 6, 3)), tolerance=1)


def test_grey_with_a_transparent_value(tmp_path):
    values = np.array([[0, 77, 77, 200]], dtype=np.uint8)
    Image.fromarray(values).save(tmp_path / "l_trns.png", transparency=77)
    _close(_loaded(tmp_path / "l_trns.png"), _rgb([[0, 255, 255, 200]]))


def test_cmyk(tmp_path):
    cmyk = np.array([[[0, 255, 255, 0], [255, 0, 255, 0], [0, 0, 0, 255], [0, 0, 0, 0]]], dtype=np.uint8)
    Image.fromarray(cmyk, "CMYK").save(tmp_path / "cmyk.tif")
    assert Image.open(tmp_path / "cmyk.tif").mode == "CMYK"
    _close(_loaded(tmp_path / "cmyk.tif"), [[(255, 0, 0), (0, 255, 0), (0, 0, 0), (255, 255, 255)]])


def test_one_bit(tmp_path):
    Image.fromarray(np.array([[True, False], [False, True]])).save(tmp_path / "bits.png")
    assert Image.open(tmp_path / "bits.png").mode == "1"
    _close(_loaded(tmp_path / "bits.png"), _rgb([[255, 0], [0, 255]]))


@pytest.mark.parametrize("orientation, turn", [(3, lambda a: np.rot90(a, 2)), (6, lambda a: np.rot90(a, -1)),
                                              (8, lambda a: np.rot90(a, 1)), (2, lambda a: a[:, ::-1])])
def test_exif_orientation_is_applied(tmp_path, orientation, turn):
    pixels = RNG.integers(0, 256, (4, 7, 3)).astype(np.uint8)  # not square: a turn changes the shape
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(tmp_path / "photo.png", exif=exif)
    _close(_loaded(tmp_path / "photo.png"), turn(pixels))
    with Image.open(tmp_path / "photo.png") as opened:  # the API applies it to an open PIL image too
        opened.load()
        _close(np.asarray(to_rgb(opened)).astype(int), turn(pixels))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def test_16_bit_rgb_png_keeps_its_levels(tmp_path):
    values = RNG.integers(0, 65536, (3, 4, 3)).astype(np.uint16)  # Pillow cannot write it: built by hand
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in values)
    png = (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 3, 16, 2, 0, 0, 0))
           + _chunk(b"IDAT", zlib.compress(rows)) + _chunk(b"IEND", b""))
    (tmp_path / "rgb48.png").write_bytes(png)
    _close(_loaded(tmp_path / "rgb48.png"), values / 257, tolerance=1)  # Pillow keeps the high byte
