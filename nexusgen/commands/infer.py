"""`nexusgen understand | generate | edit | embed | chat`: the inference commands over `nexusgen.api`.

Inputs are checked before the model is loaded and outputs are written atomically (`commands.common`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image

from nexusgen.commands.common import (
    IMAGE_FORMATS,
    check_prompt,
    model_from_args,
    output_path,
    save_image,
)
from nexusgen.models.token_sampling import check_sampling_options
from nexusgen.processing.images import load_image

QUIT, ATTACH = "/quit", "/image"


def _image_options(args: argparse.Namespace) -> dict:
    return dict(seed=args.seed, height=args.height, width=args.width, num_steps=args.steps,
                guidance_scale=args.guidance)


# ----------------------------------------------------------------------------------------------------
# Handlers
# ----------------------------------------------------------------------------------------------------
def understand(args: argparse.Namespace) -> int:
    """`nexusgen understand [--image IMG ...] --prompt TEXT`: prints the answer (no image: a text-only
    question; an empty prompt with an image: the image's description)."""
    images = [load_image(p) for p in args.image]
    prompt = args.prompt if images and not args.prompt.strip() else check_prompt(args.prompt)
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if not args.temperature >= 0:
        raise ValueError(f"--temperature must be >= 0 (0: greedy), got {args.temperature}")
    check_sampling_options(args.temperature > 0, args.temperature, args.top_k, args.top_p)  # before the model loads
    model = model_from_args(args)
    print(model.understand(images or None, prompt, max_new_tokens=args.max_new_tokens,
                           temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed))
    return 0


def generate(args: argparse.Namespace) -> int:
    """`nexusgen generate --prompt TEXT --out PNG`: writes the image, prints its path."""
    prompt = check_prompt(args.prompt)
    output_path(args.out, IMAGE_FORMATS)
    image = model_from_args(args).generate(prompt, **_image_options(args))
    print(save_image(image, args.out))
    return 0


def edit(args: argparse.Namespace) -> int:
    """`nexusgen edit --image IMG --prompt TEXT --out PNG [--decoder editing|generation]`."""
    source = load_image(args.image)
    prompt = check_prompt(args.prompt)
    output_path(args.out, IMAGE_FORMATS)
    image = model_from_args(args).edit(source, prompt, decoder=args.decoder, **_image_options(args))
    print(save_image(image, args.out))
    return 0


def embed(args: argparse.Namespace) -> int:
    """`nexusgen embed --prompt TEXT --out FILE.safetensors [--image IMG]`: tensor "image_embeds",
    float32 (1, N, D), from the canonical generation template (editing template with --image)."""
    from nexusgen.files import save_tensors

    source = load_image(args.image) if args.image else None
    prompt = check_prompt(args.prompt)
    out = output_path(args.out, (".safetensors",))
    embeds = model_from_args(args).predict_image_embeds(prompt, source)  # (1, N, D) float32
    save_tensors({"image_embeds": embeds.float().contiguous()}, out)  # temporary name + os.replace
    print(out)
    return 0


def chat(args: argparse.Namespace) -> int:
    """`nexusgen chat`: one user message per stdin line; `/image PATH` attaches an image to the next
    message, `/quit` (or end of input) stops. Answer images are saved to --out-dir."""
    model = model_from_args(args)
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
            self.pending.append(load_image(path))
            return None
        user = {"role": "user", "content": [*self.pending, text]}
        reply = self.model.chat([*self.messages, user], seed=self.seed + self.turn)
        self.messages += [user, reply.message]
        self.pending = []
        saved = [save_image(im, self.out_dir / f"turn{self.turn:03d}_{k}.png")
                 for k, im in enumerate(reply.images)]
        self.turn += 1
        return reply.text + "".join(f"\n[image saved to {p}]" for p in saved)
