"""CLI handlers of the inference commands (declared in `nexusgen.cli`): understand, generate, edit, chat,
embed, demo.

Inputs are checked before the model is loaded (an unreadable image or an empty prompt fails in
milliseconds), and every bad input is a `ValueError`, which `cli.main` prints as one line with exit code 2.
Outputs are written to a temporary name in the destination folder and renamed into place, so an
interrupted command never leaves a half-written file. Warnings (e.g. "official folder: convert the
decoders") are printed as one line each on stderr.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

from PIL import Image

from nexusgen.loading.files import atomic_save_image
from nexusgen.models.text_generation import check_sampling_options
from nexusgen.pipelines.inputs import check_prompts
from nexusgen.processing.images import load_image

IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP"}
QUIT, ATTACH = "/quit", "/image"


# ----------------------------------------------------------------------------------------------------
# Shared plumbing
# ----------------------------------------------------------------------------------------------------
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


def load_model(args):
    """`NexusGen.from_pretrained(args.model, args.device, args.dtype, offload, fp8)`, warnings as one line each."""
    from nexusgen.api import NexusGen

    with one_line_warnings():
        return NexusGen.from_pretrained(args.model, device=args.device, dtype=args.dtype,
                                        offload=getattr(args, "offload", "auto"), fp8=getattr(args, "fp8", False))


def read_image(path: str) -> Image.Image:
    """An input image file as RGB; ValueError for a missing, unreadable or too large file."""
    if not Path(path).is_file():
        raise ValueError(f"{path}: no such image file")
    return load_image(path)


def check_prompt(prompt: str) -> str:
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


def save_image_atomic(image: Image.Image, path: str | os.PathLike) -> Path:
    """Write an image (format from the extension) to a temporary name, then rename it into place."""
    out = output_path(str(path), IMAGE_FORMATS)
    return atomic_save_image(image, out, IMAGE_FORMATS[out.suffix.lower()])


def image_options(args) -> dict:
    return dict(seed=args.seed, height=args.height, width=args.width, num_steps=args.steps,
                guidance_scale=args.cfg)


# ----------------------------------------------------------------------------------------------------
# Handlers
# ----------------------------------------------------------------------------------------------------
def understand(args) -> int:
    """`nexusgen understand [--image IMG ...] --prompt TEXT`: prints the answer (no image: a text-only
    question; an empty prompt with an image: the image's description)."""
    images = [read_image(p) for p in args.image]
    prompt = args.prompt if images and not args.prompt.strip() else check_prompt(args.prompt)
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if not args.temperature >= 0:
        raise ValueError(f"--temperature must be >= 0 (0: greedy), got {args.temperature}")
    check_sampling_options(args.temperature > 0, args.temperature, args.top_k, args.top_p)  # before the model loads
    model = load_model(args)
    print(model.understand(images or None, prompt, max_new_tokens=args.max_new_tokens,
                           temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed))
    return 0


def generate(args) -> int:
    """`nexusgen generate --prompt TEXT --out PNG`: writes the image, prints its path."""
    prompt = check_prompt(args.prompt)
    output_path(args.out, IMAGE_FORMATS)
    image = load_model(args).generate(prompt, **image_options(args))
    print(save_image_atomic(image, args.out))
    return 0


def edit(args) -> int:
    """`nexusgen edit --image IMG --prompt TEXT --out PNG [--decoder editing|generation]`."""
    source = read_image(args.image)
    prompt = check_prompt(args.prompt)
    output_path(args.out, IMAGE_FORMATS)
    image = load_model(args).edit(source, prompt, decoder=args.decoder, **image_options(args))
    print(save_image_atomic(image, args.out))
    return 0


def embed(args) -> int:
    """`nexusgen embed --prompt TEXT --out FILE.safetensors [--image IMG]`: tensor "image_embeds",
    float32 (1, N, D), from the canonical generation template (editing template with --image)."""
    from nexusgen.loading.decoders import save_tensors

    source = read_image(args.image) if args.image else None
    prompt = check_prompt(args.prompt)
    out = output_path(args.out, (".safetensors",))
    embeds = load_model(args).predict_image_embeds(prompt, source)  # (1, N, D) float32
    save_tensors({"image_embeds": embeds.float().contiguous()}, out)  # temporary name + os.replace
    print(out)
    return 0


def chat(args) -> int:
    """`nexusgen chat`: one user message per stdin line; `/image PATH` attaches an image to the next
    message, `/quit` (or end of input) stops. Answer images are saved to --out-dir."""
    model = load_model(args)
    session = ChatSession(model, Path(args.out_dir), seed=args.seed)
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            print("> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line or line.strip() == QUIT:
            return 0
        try:
            answer = session.handle(line.rstrip("\n"))
        except ValueError as err:  # a bad line must not end the conversation
            print(f"nexusgen chat: error: {err}", file=sys.stderr)
            continue
        if answer is not None:
            print(answer, flush=True)


class ChatSession:
    """The state of a `nexusgen chat` session: the conversation and the images waiting to be attached."""

    def __init__(self, model, out_dir: Path, seed: int = 0):
        self.model, self.out_dir, self.seed = model, out_dir, seed
        self.messages: list[dict] = []
        self.pending: list[Image.Image] = []
        self.turn = 0

    def handle(self, line: str) -> str | None:
        """Process one input line; returns the text to print (None for commands and blank lines)."""
        text = line.strip()
        if not text:
            return None
        if text.split(maxsplit=1)[0] == ATTACH:
            path = text[len(ATTACH):].strip()
            if not path:
                raise ValueError(f"usage: {ATTACH} PATH")
            self.pending.append(read_image(path))
            return None
        user = {"role": "user", "content": [*self.pending, text]}
        reply = self.model.chat([*self.messages, user], seed=self.seed + self.turn)
        self.messages += [user, reply.message]
        self.pending = []
        saved = [save_image_atomic(im, self.out_dir / f"turn{self.turn:03d}_{k}.png")
                 for k, im in enumerate(reply.images)]
        self.turn += 1
        return reply.text + "".join(f"\n[image saved to {p}]" for p in saved)


def demo(args) -> int:
    """`nexusgen demo [--out DIR]`: see `nexusgen.pipelines.demo`."""
    from nexusgen.pipelines.demo import run_demo

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a directory")
    for line in run_demo(load_model(args), out, seed=args.seed):
        print(line)
    return 0
