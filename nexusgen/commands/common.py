"""What every command shares: inputs checked before the model loads, outputs written atomically, warnings
as one line.

Inputs are checked before the model is loaded (an unreadable image or an empty prompt fails in
milliseconds), and every bad input is a `ValueError`, which `nexusgen.cli.main` prints as one line with
exit code 2. Outputs are written to a temporary name in the destination folder and renamed into place, so
an interrupted command never leaves a half-written file. Warnings (e.g. "official folder: convert the
decoders") are printed as one line each on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

from PIL import Image

from nexusgen.files import atomic_save_image
from nexusgen.pipelines.inputs import check_prompts

IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP"}


@contextlib.contextmanager
def one_line_warnings() -> Iterator[None]:
    """Show warnings as `nexusgen: warning: ...` lines (no source line, no file position)."""
    previous = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"nexusgen: warning: {message}", file=sys.stderr)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = previous


def load_model(model: str, device: str | None = None, dtype: str | None = None, offload: str = "auto",
               fp8: bool = False):
    """`NexusGen.from_pretrained(model, device, dtype, offload, fp8)`, warnings as one line each."""
    from nexusgen.api import NexusGen

    with one_line_warnings():
        return NexusGen.from_pretrained(model, device=device, dtype=dtype, offload=offload, fp8=fp8)


def model_from_args(args: argparse.Namespace):
    """The model named by the common model options (--model, --device, --dtype, --offload, --fp8)."""
    return load_model(args.model, args.device, args.dtype, args.offload, args.fp8)


def check_prompt(prompt: str) -> str:
    """The prompt, or ValueError for an empty one."""
    return check_prompts([prompt])[0]


def output_path(path: str, suffixes: dict | tuple) -> Path:
    """The output path with its folder created; ValueError for an unsupported extension or a folder."""
    out = Path(path)
    if out.suffix.lower() not in suffixes:
        raise ValueError(f"{path}: the output must end in one of {', '.join(suffixes)}")
    if out.is_dir():
        raise ValueError(f"{path} is a directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def save_image(image: Image.Image, path: str | os.PathLike) -> Path:
    """Write an image (format from the extension) to a temporary name, then rename it into place."""
    out = output_path(str(path), IMAGE_FORMATS)
    return atomic_save_image(image, out, IMAGE_FORMATS[out.suffix.lower()])
