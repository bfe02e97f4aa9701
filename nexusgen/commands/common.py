"""What every command shares: options checked before anything heavy loads, outputs written atomically,
warnings as one line.

A handler checks every value it was given first (`nexusgen.validation`, the output path with
`nexusgen.files.check_output_file` / `check_output_folder`, the model name), and only then imports torch and
loads the model: a bad option, an unwritable `--out` or an unknown `--model` fails in milliseconds. Every bad
input is a `ValueError` (or an `OSError`), which `nexusgen.cli.main` prints as one line with exit code 2.
Outputs are written to a temporary name in the destination folder and renamed into place, so an interrupted
or failed command never leaves a half-written file. Warnings (e.g. "official folder: convert the decoders")
are printed as one line each on stderr.

This module imports no torch: the handlers import it at their top.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

from nexusgen.files import atomic_save_image, check_output_file
from nexusgen.loading.names import check_model_name
from nexusgen.validation import (
    check_device,
    check_dtype,
    check_guidance,
    check_output_size,
    check_seed,
    check_side,
    check_steps,
)

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


def rank_device(device: str | None, shard) -> str | None:
    """The device of one torchrun rank: `device` when given (--device wins) or with a single process; with
    several ranks and GPUs, cuda:LOCAL_RANK (RANK when unset) modulo the GPUs, so the ranks of a node spread
    over its cards instead of all loading on cuda:0. `shard` is a `nexusgen.batch.runner.Shard`."""
    if device is not None or shard.world <= 1:
        return device
    import torch  # only a multi-process run asks; the option checks stay torch-free

    if not torch.cuda.is_available():
        return device
    return f"cuda:{int(os.environ.get('LOCAL_RANK', shard.rank)) % torch.cuda.device_count()}"


def check_model_options(args: argparse.Namespace) -> None:
    """--model names a known model or an existing path; --device and --dtype are ones nexusgen runs on."""
    check_model_name(args.model)
    check_device(getattr(args, "device", None), "--device")
    check_dtype(getattr(args, "dtype", None), "--dtype")


def model_from_args(args: argparse.Namespace):
    """The model named by the common model options (--model, --device, --dtype, --offload, --fp8)."""
    check_model_options(args)
    return load_model(args.model, args.device, args.dtype, args.offload, args.fp8)


def image_options(args: argparse.Namespace, count: int = 1) -> dict:
    """The checked image options (--seed for `count` images, --steps, --guidance, --height, --width) as
    keyword arguments of `NexusGen.generate` / `edit` (None: the model's default)."""
    height = None if args.height is None else check_side(args.height, "--height")
    width = None if args.width is None else check_side(args.width, "--width")
    if height is not None and width is not None:
        check_output_size(height, width, ("--height", "--width"))
    return dict(seed=check_seed(args.seed, count, "--seed"), height=height, width=width,
                num_steps=None if args.steps is None else check_steps(args.steps, "--steps"),
                guidance_scale=None if args.guidance is None else check_guidance(args.guidance, "--guidance"))


def image_output(path: str | os.PathLike) -> Path:
    """An image output path, checked before any work: a known extension, writable (`check_output_file`)."""
    return check_output_file(path, IMAGE_FORMATS)


def save_image(image, path: str | os.PathLike) -> Path:
    """Write an image (format from the extension, one of IMAGE_FORMATS) to a temporary name, then rename it
    into place; a failed write is an OutputError naming `path` (`nexusgen.files.writing`).

    The handler checked `path` (`image_output`, or its folder) before the model ran: no second probe here."""
    path = Path(path)
    return atomic_save_image(image, path, IMAGE_FORMATS[path.suffix.lower()])
