"""`nexusgen understand | generate | edit | embed | chat`: the inference commands over `nexusgen.api`.

Every option, input image and output path is checked before the model loads, and outputs are written
atomically (`commands.common`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image

from nexusgen.commands.common import (
    image_options,
    image_output,
    model_from_args,
    save_image,
)
from nexusgen.files import OutputError, check_output_file, check_output_folder
from nexusgen.processing.images import load_image
from nexusgen.processing.templates import IMAGE_PLACEHOLDER
from nexusgen.validation import (
    check_max_new_tokens,
    check_prompt,
    check_question,
    check_sampling,
    check_seed,
    check_text,
    offset_seed,
)

QUIT, ATTACH, HELP = "/quit", "/image", "/help"
CHAT_COMMANDS = f"{ATTACH} PATH (attach an image to your next message), {QUIT} (end), {HELP}"


def _batch(handler: str, args: argparse.Namespace) -> int:
    from nexusgen.commands import batch

    return getattr(batch, handler)(args)


# ----------------------------------------------------------------------------------------------------
# Handlers
# ----------------------------------------------------------------------------------------------------
def understand(args: argparse.Namespace) -> int:
    """`nexusgen understand [--image IMG ...] --prompt TEXT`: prints the answer (no image: a text-only
    question; an empty prompt with an image: the image's description). With --questions FILE: batch work
    (`commands.batch`)."""
    if args.questions is not None:
        return _batch("understand_batch", args)
    if args.prompt is None:
        raise ValueError("give --prompt TEXT (or --questions FILE)")
    if args.out is not None:
        raise ValueError("--out is the answers file of --questions FILE; a single answer is printed")
    check_text(args.prompt, "--prompt")
    images = [load_image(p) for p in args.image]
    prompt = check_question(args.prompt, bool(images), "--prompt")
    max_new_tokens = check_max_new_tokens(args.max_new_tokens, "--max-new-tokens")
    check_sampling(args.temperature, args.top_k, args.top_p, ("--temperature", "--top-k", "--top-p"))
    seed = check_seed(args.seed, 1, "--seed")
    model = model_from_args(args)
    print(model.understand(images or None, prompt, max_new_tokens=max_new_tokens, temperature=args.temperature,
                           top_k=args.top_k, top_p=args.top_p, seed=seed))
    return 0


def generate(args: argparse.Namespace) -> int:
    """`nexusgen generate --prompt TEXT --out PNG`: writes the image, prints its path. With --prompts FILE:
    batch work into the folder --out (`commands.batch`)."""
    if args.prompts is not None:
        return _batch("generate_batch", args)
    if args.prompt is None:
        raise ValueError("give --prompt TEXT (or --prompts FILE)")
    prompt = check_prompt(args.prompt, "--prompt")
    options = image_options(args)
    out = image_output(args.out)
    image = model_from_args(args).generate(prompt, **options)
    print(save_image(image, out))
    return 0


def edit(args: argparse.Namespace) -> int:
    """`nexusgen edit --image IMG --prompt TEXT --out PNG [--decoder editing|generation]`. With --edits FILE:
    batch work into the folder --out (`commands.batch`)."""
    if args.edits is not None:
        if args.image is not None or args.prompt is not None:
            raise ValueError("--edits FILE takes the images and prompts from the file: drop --image / --prompt")
        return _batch("edit_batch", args)
    if args.image is None or args.prompt is None:
        raise ValueError("give --image IMG and --prompt TEXT (or --edits FILE)")
    prompt = check_prompt(args.prompt, "--prompt")
    options = image_options(args)
    source = load_image(args.image)
    out = image_output(args.out)
    image = model_from_args(args).edit(source, prompt, decoder=args.decoder, **options)
    print(save_image(image, out))
    return 0


def embed(args: argparse.Namespace) -> int:
    """`nexusgen embed --prompt TEXT --out FILE.safetensors [--image IMG]`: tensor "image_embeds",
    float32 (1, N, D), from the canonical generation template (editing template with --image)."""
    from nexusgen.files import save_tensors

    prompt = check_prompt(args.prompt, "--prompt")
    source = load_image(args.image) if args.image else None
    out = check_output_file(args.out, (".safetensors",))
    embeds = model_from_args(args).predict_image_embeds(prompt, source)  # (1, N, D) float32
    save_tensors({"image_embeds": embeds.float().contiguous()}, out)  # temporary name + os.replace
    print(out)
    return 0


def chat(args: argparse.Namespace) -> int:
    """`nexusgen chat`: one user message per stdin line; `/image PATH` attaches an image to the next
    message, `/quit` (or end of input) stops. Answer images are saved to --out-dir.

    A bad line (an unknown command, an unreadable image, invalid UTF-8, an image that cannot be saved) is
    one error line on stderr, and the conversation goes on."""
    seed = check_seed(args.seed, 1, "--seed")
    out_dir = check_output_folder(args.out_dir)
    session = ChatSession(model_from_args(args), out_dir, seed=seed)
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            print("> ", end="", flush=True)
        raw = sys.stdin.buffer.readline()
        line = raw.decode("utf-8", errors="surrogateescape")  # invalid UTF-8: an error for this line only
        if not raw or line.strip() == QUIT:
            return 0
        try:
            answer = session.handle(line.rstrip("\r\n"))
        except (ValueError, OSError) as err:  # a bad line must not end the conversation
            print(f"nexusgen chat: error: {err}", file=sys.stderr)
            continue
        if answer is not None:
            print(answer, flush=True)


class ChatSession:
    """The state of a `nexusgen chat` session: the conversation and the images waiting to be attached.

    Turn t is seeded with `seed + t` (wrapping within the generators' 64-bit range)."""

    def __init__(self, model, out_dir: Path, seed: int = 0):
        self.model, self.out_dir, self.seed = model, out_dir, seed
        self.messages: list[dict] = []
        self.pending: list[Image.Image] = []
        self.turn = 0

    def handle(self, line: str) -> str | None:
        """Process one input line; returns the text to print (None for commands and blank lines).

        Raises:
            ValueError: an unknown command, a bad image, text that is not valid UTF-8 or holds `<image>`.
            OutputError: an answer image that cannot be saved (the answer text is in the message).
        """
        text = check_text(line, "the line").strip()
        if not text:
            return None
        command = text.split(maxsplit=1)[0]
        if command.startswith("/") and command[1:].isalpha():
            return self._command(command, text[len(command):].strip())
        if IMAGE_PLACEHOLDER in text:
            raise ValueError(f"{IMAGE_PLACEHOLDER} in a message is not an image: attach one with "
                             f"'{ATTACH} PATH' on a line of its own, then type your message")
        user = {"role": "user", "content": [*self.pending, text]}
        reply = self.model.chat([*self.messages, user], seed=offset_seed(self.seed, self.turn))
        self.messages += [user, reply.message]
        self.pending = []
        turn, self.turn = self.turn, self.turn + 1
        saved = []
        for k, image in enumerate(reply.images):
            try:
                saved.append(save_image(image, self.out_dir / f"turn{turn:03d}_{k}.png"))
            except OutputError as err:
                raise OutputError(err.path, f"{err.reason}; the answer was: {reply.text}", err.errno) from None
        return reply.text + "".join(f"\n[image saved to {p}]" for p in saved)

    def _command(self, command: str, argument: str) -> None:
        if command == ATTACH:
            if not argument:
                raise ValueError(f"usage: {ATTACH} PATH")
            self.pending.append(load_image(argument))
            return None
        if command == HELP:
            print(f"commands: {CHAT_COMMANDS}", flush=True)
            return None
        raise ValueError(f"unknown command {command}; the commands are {CHAT_COMMANDS}")
