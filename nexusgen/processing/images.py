"""Image preprocessing: the one rule every part of nexusgen uses.

**The rule.** An image enters the model at a size whose sides are multiples of the token size
`token_px = patch_size * merge_size` (28 px for Qwen2.5-VL, e.g. 16 px for a miniature model):

* a slot with a *fixed* size (AR generation targets at the output grid, e.g. 252x252; decoder
  targets; fixed-size references) gets the image **centre-cropped to the slot's aspect ratio, then
  resized** -- never stretched (upstream stretched AR targets but centre-cropped decoder targets,
  docs/upstream.md §9.9);
* a slot with a *dynamic* size (understanding and editing inputs) gets the image resized to the
  nearest token multiple that keeps its aspect ratio and stays within `[min_pixels, max_pixels]`
  (Qwen2.5-VL's `smart_resize`; `max_pixels` = 262,640 for Nexus-Gen, about 512x512).

Both resize with PIL bicubic (the Qwen2.5-VL image processor's filter), after converting to RGB
(`to_rgb`). The Qwen image processor is then called with `do_resize=False`, so these functions are the
only place where an image's size changes.

**Every mode to RGB** (`to_rgb`, the one rule for files, API images and training data alike):

* the EXIF orientation is applied first (a phone photo stands upright, as a viewer shows it);
* transparency (RGBA, LA, PA, RGBa, La, P or L/RGB with a transparent colour) is composited onto white;
* 16-bit grey (I;16, I;16L, I;16B, I;16N) is scaled from [0, 65535] to [0, 255], rounded, not clipped;
* 32-bit integers (I) are scaled from [0, 2**bits - 1]: the bits a TIFF declares, else 16 when every
  value fits in 16 bits (Pillow decodes 16-bit PGM/PPM to I), else 31; negative values become 0;
* 32-bit floats (F) are scaled from [0, 1] when every value lies in it (float TIFFs), else from [0, 255]
  (Pillow's own scale for F); values outside clip, NaN becomes 0;
* every other mode (1, L, P, CMYK, YCbCr, LAB, HSV) goes through Pillow's conversion (LAB via its sRGB
  profile); colour profiles are not applied.
"""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

RESAMPLE = Image.Resampling.BICUBIC
# Refuse to decode more than this many pixels (decompression bombs); 64 MP covers any real photo.
MAX_DECODED_PIXELS = 64_000_000


ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
GREY_16_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_EXIF_ORIENTATION = 0x0112
_TIFF_BITS_PER_SAMPLE = 258


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB copy of `image` by the rules of the module docstring: EXIF orientation applied, transparency
    composited onto white, 16-bit, 32-bit integer and float images scaled (never clipped)."""
    if not isinstance(image, Image.Image):
        raise ValueError(f"expected a PIL image, got {type(image).__name__}")
    image = _upright(image)
    if image.mode == "La":  # premultiplied grey + alpha: Pillow converts it only to LA
        image = image.convert("LA")
    if image.mode == "RGB" and "transparency" not in image.info:
        return image
    if image.mode in GREY_16_MODES or image.mode in ("I", "F"):
        return _scaled_grey(image).convert("RGB")
    if image.mode in ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode == "LAB":
        from PIL import ImageCms

        srgb, lab = ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB")
        return ImageCms.applyTransform(image, ImageCms.buildTransform(lab, srgb, "LAB", "RGB"))
    return image.convert("RGB")


def _upright(image: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation says (unchanged without one)."""
    try:
        orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    except (OSError, ValueError, SyntaxError):  # a broken EXIF block: the pixels are still good
        return image
    return ImageOps.exif_transpose(image) if orientation not in (1, None) else image


def _scaled_grey(image: Image.Image) -> Image.Image:
    """A 16-bit, 32-bit integer or float grey image as 8-bit L, scaled from its value range."""
    values = np.asarray(image).astype(np.float64)
    if image.mode in GREY_16_MODES:
        top = 65535.0
    elif image.mode == "I":
        bits = _declared_bits(image)
        if bits is None:
            bits = 16 if values.size == 0 or values.max() <= 65535 else 31
        top = float(2 ** min(bits, 31) - 1)
    else:  # F
        values = np.nan_to_num(values, nan=0.0, posinf=255.0, neginf=0.0)
        top = 1.0 if values.size == 0 or (values.min() >= 0 and values.max() <= 1) else 255.0
    scaled = np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8)
    return Image.fromarray(scaled, mode="L")


def _declared_bits(image: Image.Image) -> int | None:
    """Bits per sample a TIFF declares (None for other files)."""
    tags = getattr(image, "tag_v2", None)
    bits = tags.get(_TIFF_BITS_PER_SAMPLE) if tags is not None else None
    if isinstance(bits, tuple):
        bits = bits[0] if bits else None
    return int(bits) if bits else None


class ImageFileError(ValueError):
    """An image nexusgen cannot use.

    Attributes:
        reason: "image_missing", "image_unreadable" (not an image), "image_corrupt" (an image that does not
            decode) or "too_many_pixels".
    """

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def open_image(path: str | os.PathLike, max_pixels: int = MAX_DECODED_PIXELS, *,
               decode: bool = True) -> Image.Image | None:
    """Open an image file: check its size from the header, then (if `decode`) decode it to RGB.

    The one image reader of nexusgen (inputs of the commands, the API and the server, training records,
    benchmark artifacts): a truncated or corrupt file fails here, not later, and the pixel limit is checked
    before any decoding (decompression bombs).

    Returns:
        The RGB image, or None when `decode` is False.

    Raises:
        ImageFileError: missing, unreadable or corrupt file, or more than `max_pixels` pixels.
    """
    return _open_checked(path, str(path), max_pixels, None, decode)


def load_image(path: str | os.PathLike, max_pixels: int = MAX_DECODED_PIXELS) -> Image.Image:
    """Open an image file as RGB, refusing unreadable files and images over `max_pixels` (`open_image`).

    Raises:
        ImageFileError (a ValueError): missing, unreadable or corrupt file, or too many pixels.
    """
    return open_image(path, max_pixels)


def decode_image(data: bytes, name: str = "image", max_pixels: int = MAX_DECODED_PIXELS,
                 formats: tuple[str, ...] | None = None) -> Image.Image:
    """Decode image bytes (e.g. an upload) as RGB with the same guard as `load_image`.

    Args:
        data: the encoded image.
        name: what error messages call it.
        max_pixels: refuse larger images, from the header, before decoding a pixel.
        formats: PIL format names to try (e.g. ("PNG", "JPEG", "WEBP")); None: every format PIL knows.

    Raises:
        ImageFileError (a ValueError): not an image of an allowed format, corrupt or truncated, or too many
            pixels.
    """
    return _open_checked(io.BytesIO(data), name, max_pixels, formats, True)


def _open_checked(source, name: str, max_pixels: int, formats, decode: bool) -> Image.Image | None:
    try:
        with warnings.catch_warnings():  # PIL's own bomb warning (> 89 MP): our limit below is lower
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(source, formats=formats)
        with image:
            width, height = image.size
            if width * height > max_pixels:
                raise ImageFileError("too_many_pixels",
                                     f"{name}: {width}x{height} pixels is more than the limit of {max_pixels}")
            if not decode:
                return None
            image.load()  # decoding happens here
            return to_rgb(image)  # the project's one RGB rule: transparency composited onto white
    except ImageFileError:
        raise
    except FileNotFoundError:
        raise ImageFileError("image_missing", f"{name}: no such image file") from None
    except Image.DecompressionBombError as err:  # PIL's own guard (> 179 MP) fires while reading the header
        raise ImageFileError("too_many_pixels", f"{name}: more pixels than the limit of {max_pixels} ({err})") from None
    except (UnidentifiedImageError, IsADirectoryError, PermissionError) as err:
        raise ImageFileError("image_unreadable", f"{name}: not a readable image ({err})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise ImageFileError("image_corrupt", f"{name}: not a readable image, it does not decode ({err})") from None


def bounded_size(height: int, width: int, token_px: int, max_pixels: int, min_pixels: int) -> tuple[int, int]:
    """Qwen2.5-VL's `smart_resize`: sides multiple of `token_px`, aspect kept, area in [min, max] pixels.

    Returns:
        (height, width) in pixels.

    Raises:
        ValueError: aspect ratio above 200 (Qwen2.5-VL's limit).
    """
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    return smart_resize(height, width, factor=token_px, min_pixels=min_pixels, max_pixels=max_pixels)


def resize_bounded(image: Image.Image, token_px: int, max_pixels: int, min_pixels: int) -> Image.Image:
    """Dynamic-size slot (understanding / editing inputs): see the module docstring."""
    image = to_rgb(image)
    height, width = bounded_size(image.height, image.width, token_px, max_pixels, min_pixels)
    return image if (width, height) == image.size else image.resize((width, height), RESAMPLE)


def resize_fixed(image: Image.Image, size_hw: tuple[int, int]) -> Image.Image:
    """Fixed-size slot (targets): centre-crop to the aspect ratio of `size_hw`, then resize to it.

    Args:
        image: any PIL image.
        size_hw: (height, width) in pixels.
    """
    image = to_rgb(image)
    height, width = size_hw
    src_w, src_h = image.size
    if src_w * height > src_h * width:  # too wide: crop the width
        crop_w = max(1, round(src_h * width / height))
        left = (src_w - crop_w) // 2
        image = image.crop((left, 0, left + crop_w, src_h))
    elif src_w * height < src_h * width:  # too tall: crop the height
        crop_h = max(1, round(src_w * height / width))
        top = (src_h - crop_h) // 2
        image = image.crop((0, top, src_w, top + crop_h))
    return image if image.size == (width, height) else image.resize((width, height), RESAMPLE)
