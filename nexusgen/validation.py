"""Every value a user can give nexusgen, checked in one place: the command line, the Python API and the
server call these checks, so they agree on what is valid and say so in the same words.

The checks are plain Python (no torch, no Pillow): a command runs them before its heavy imports, so a bad
value costs milliseconds, not the seconds of loading a model. Each raises `ValueError` naming the value by
the caller's name for it (`--steps` on the command line, `num_steps` in Python, the field on the server),
and returns the value checked (or filled in).

The ranges, and why:

* steps: an integer in [1, `MAX_STEPS`]. The schedule holds one entry per step, and 1000 Euler steps are
  already 20x upstream's 50.
* guidance scale: a finite number in (0, `MAX_GUIDANCE`]. NaN or infinity make every pixel NaN (a black
  image).
* height, width: multiples of `SIZE_MULTIPLE` (16: the VAE's /8 times the DiT's 2x2 patches) in
  [16, `MAX_SIDE_PX`], at most `MAX_OUTPUT_PIXELS` together. Other sizes are refused, never rounded.
* seed: an integer in [0, `MAX_SEED`] (torch's generators take 64 bits), for every image of the batch:
  image b uses seed + b.
* device: `cpu`, `cuda` or `cuda:N`. dtype: `float32`, `bfloat16` or `float16`.
* new tokens: an integer in [1, `MAX_NEW_TOKENS`]; a budget past the model's context is cut to the context.
* temperature finite in [0, `MAX_TEMPERATURE`] (0: greedy), top-k an integer >= 0, top-p in (0, 1].
* text: a `str` of valid Unicode (the command line's invalid UTF-8 arrives as lone surrogates), not blank.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

MAX_STEPS = 1000
MAX_GUIDANCE = 30.0
SIZE_MULTIPLE = 16
MAX_SIDE_PX = 4096
MAX_OUTPUT_PIXELS = 2048 * 2048
"""Largest output image (height x width): FLUX works up to about 2 MP, and a far larger request only
exhausts memory (the attention over (H/16)(W/16) latent tokens grows quadratically)."""
MAX_SEED = 2**64 - 1
"""torch.Generator.manual_seed takes 64-bit seeds."""
SEED_SPAN = 2**64
MAX_NEW_TOKENS = 131_072
DEFAULT_MAX_NEW_TOKENS = 1024
"""The answer budget of the official scripts and app: the default of `understand`, its command and batch files."""
MAX_TEMPERATURE = 100.0
DEVICE_TYPES = ("cpu", "cuda")
DTYPE_NAMES = ("float32", "bfloat16", "float16")


# ----------------------------------------------------------------------------------------------------
# Numbers
# ----------------------------------------------------------------------------------------------------
def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_int(value: Any, name: str, low: int, high: int | None = None, what: str = "") -> int:
    """`value` if it is an integer in [low, high] (no upper end when `high` is None), else ValueError."""
    if _is_int(value) and value >= low and (high is None or value <= high):
        return value
    bounds = f"between {low} and {high}" if high is not None else f">= {low}"
    raise ValueError(f"{name} must be an integer {bounds}{what}, got {value!r}")


def check_steps(value: Any, name: str = "num_steps") -> int:
    """Denoising steps: an integer in [1, MAX_STEPS]."""
    return check_int(value, name, 1, MAX_STEPS, " (Euler steps of the decoder)")


def check_guidance(value: Any, name: str = "guidance_scale") -> float:
    """Classifier-free guidance scale: a finite number in (0, MAX_GUIDANCE]."""
    if not _is_number(value) or not math.isfinite(value) or not 0 < value <= MAX_GUIDANCE:
        raise ValueError(f"{name} must be a finite number above 0 and at most {MAX_GUIDANCE:g} "
                         f"(1: no guidance), got {value!r}")
    return float(value)


def check_side(value: Any, name: str) -> int:
    """An output height or width: a multiple of SIZE_MULTIPLE in [SIZE_MULTIPLE, MAX_SIDE_PX]."""
    if _is_int(value) and SIZE_MULTIPLE <= value <= MAX_SIDE_PX and value % SIZE_MULTIPLE == 0:
        return value
    hint = ""
    if _is_int(value) and SIZE_MULTIPLE < value < MAX_SIDE_PX:
        below = value // SIZE_MULTIPLE * SIZE_MULTIPLE
        hint = f" (e.g. {below} or {below + SIZE_MULTIPLE})"
    raise ValueError(f"{name} must be a multiple of {SIZE_MULTIPLE} between {SIZE_MULTIPLE} and {MAX_SIDE_PX} "
                     f"pixels{hint}, got {value!r}")


def check_output_size(height: Any, width: Any, names: tuple[str, str] = ("height", "width")) -> tuple[int, int]:
    """(height, width) of an output image: each `check_side`, at most MAX_OUTPUT_PIXELS together."""
    height, width = check_side(height, names[0]), check_side(width, names[1])
    if height * width > MAX_OUTPUT_PIXELS:
        raise ValueError(f"output size {height}x{width} is more than the limit of {MAX_OUTPUT_PIXELS} pixels")
    return height, width


def check_seed(seed: Any, count: int = 1, name: str = "seed") -> int | tuple[int, ...]:
    """A seed for `count` images (image b uses seed + b), or a sequence of per-image seeds.

    Every seed used must lie in [0, MAX_SEED], the range of torch's generators.
    """
    if isinstance(seed, (list, tuple)):
        return tuple(check_seed(s, 1, f"{name}[{b}]") for b, s in enumerate(seed))
    if not _is_int(seed) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"{name} must be an integer between 0 and 2**64 - 1, got {seed!r}")
    if seed + count - 1 > MAX_SEED:
        raise ValueError(f"{name} {seed}: the batch's {count} images use seeds {seed} to {seed} + {count - 1}, "
                         f"past the largest seed 2**64 - 1")
    return seed


def offset_seed(seed: int, offset: int) -> int:
    """`seed + offset` kept in the generators' range (wrapping past 2**64 - 1): the derived seeds of chat
    turns and answer images, whose count a caller does not fix in advance."""
    return (seed + offset) % SEED_SPAN


def check_max_new_tokens(value: Any, name: str = "max_new_tokens") -> int:
    """A token budget: an integer in [1, MAX_NEW_TOKENS] (the pipelines cut it to the model's context)."""
    return check_int(value, name, 1, MAX_NEW_TOKENS)


def check_sampling(temperature: Any, top_k: Any = 0, top_p: Any = 1.0,
                   names: tuple[str, str, str] = ("temperature", "top_k", "top_p")) -> None:
    """temperature finite in [0, MAX_TEMPERATURE] (0: greedy), top_k an integer >= 0 (0: off), top_p finite in
    (0, 1] (1: off)."""
    if not _is_number(temperature) or not math.isfinite(temperature) or not 0 <= temperature <= MAX_TEMPERATURE:
        raise ValueError(f"{names[0]} must be a finite number between 0 (greedy) and {MAX_TEMPERATURE:g}, "
                         f"got {temperature!r}")
    check_int(top_k, names[1], 0, None, " (0: off)")
    if not _is_number(top_p) or not math.isfinite(top_p) or not 0 < top_p <= 1:
        raise ValueError(f"{names[2]} must be a number in (0, 1] (1: off), got {top_p!r}")


# ----------------------------------------------------------------------------------------------------
# Device and dtype
# ----------------------------------------------------------------------------------------------------
def check_device(device: Any, name: str = "device") -> Any:
    """None, "cpu", "cuda" or "cuda:N" (or a torch.device of those types); whether CUDA is there is checked
    when the model loads (`nexusgen.config.resolve_device`)."""
    if device is None:
        return None
    kind = getattr(device, "type", None) if not isinstance(device, str) else device.split(":", 1)[0].strip()
    if isinstance(device, str):
        index = device.split(":", 1)[1] if ":" in device else "0"
        if kind in DEVICE_TYPES and index.isdigit():
            return device
    elif kind in DEVICE_TYPES:
        return device
    reasons = {"mps": "Apple GPUs (mps) are not supported", "meta": "the meta device holds no data and cannot "
               "run a model", "xla": "XLA devices are not supported", "xpu": "Intel GPUs (xpu) are not supported"}
    reason = reasons.get(kind, "unknown device")
    raise ValueError(f"{name} {device!r}: {reason}; use cpu, cuda or cuda:N")


def check_dtype(dtype: Any, name: str = "dtype") -> Any:
    """None, one of DTYPE_NAMES, or a torch dtype (checked against them by `nexusgen.config.resolve_dtype`)."""
    if dtype is None or (not isinstance(dtype, str) and str(dtype).removeprefix("torch.") in DTYPE_NAMES):
        return dtype
    if dtype not in DTYPE_NAMES:
        raise ValueError(f"{name} must be one of {', '.join(DTYPE_NAMES)}, got {dtype!r}")
    return dtype


# ----------------------------------------------------------------------------------------------------
# Text
# ----------------------------------------------------------------------------------------------------
def check_text(text: Any, name: str = "prompt") -> str:
    """A string of valid Unicode. Invalid UTF-8 on the command line reaches Python as lone surrogates
    (U+DC80-U+DCFF, one per bad byte); a string holding any surrogate cannot be encoded or tokenized."""
    if not isinstance(text, str):
        raise ValueError(f"{name} must be a string, got {type(text).__name__}")
    for index, char in enumerate(text):
        if "\ud800" <= char <= "\udfff":
            if "\udc80" <= char <= "\udcff":
                raise ValueError(f"{name} is not valid UTF-8 (byte 0x{ord(char) - 0xdc00:02x} at character "
                                 f"{index}); save the text as UTF-8")
            raise ValueError(f"{name} holds an unpaired surrogate (U+{ord(char):04X} at character {index}), "
                             "which is not text")
    return text


def check_prompt(text: Any, name: str = "prompt") -> str:
    """`check_text`, and not empty or blank."""
    if not check_text(text, name).strip():
        raise ValueError(f"{name} is empty: {text!r}")
    return text


def check_question(text: Any, has_images: bool, name: str = "prompt") -> str:
    """A question: `check_prompt`, except that with images a blank question is allowed (it asks for a
    description of the images)."""
    return check_text(text, name) if has_images else check_prompt(text, name)


def check_prompts(prompts: Sequence[Any], name: str = "prompt") -> list[str]:
    """Every prompt of a batch `check_prompt`ed; the error names the first bad one ("prompt 2 ...")."""
    return [check_prompt(p, f"{name} {index}") for index, p in enumerate(prompts)]
