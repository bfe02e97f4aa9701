"""Chat templates and the canonical Nexus-Gen prompt text (docs/upstream.md §4.1 and §10), EN and ZH.

The text is rendered here, in Python, instead of through a tokenizer's Jinja chat template, so the exact
string the model sees is visible and tested. A conversation renders as (Qwen2.5-VL chat format)::

    <|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n
    <|im_start|>user\\n{user text}<|im_end|>\\n
    <|im_start|>assistant\\n{assistant text}<|im_end|>\\n

and every `<image>` placeholder becomes `<|vision_start|><|image_pad|><|vision_end|>` (the processor
later repeats `<|image_pad|>` once per image token). For image prediction the assistant turn is left open
and ends with the canonical answer prefix, *including its trailing space* for English, then
`<|vision_start|>`: dropping the system turn or the space moves every predicted embedding (docs/upstream.md §10).
"""

from __future__ import annotations

from dataclasses import dataclass

from nexusgen.processing.tokenizers import IM_END, IM_START, IMAGE_PAD, VISION_END, VISION_START
from nexusgen.tasks import IMAGE_TASKS

IMAGE_PLACEHOLDER = "<image>"
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
LANGUAGES = ("en", "zh")

# User-turn templates; `{prompt}` is the description or the instruction.
USER_TEMPLATES = {
    "generate_en": "Generate an image according to the following description: {prompt}",
    "generate_zh": "根据以下描述生成一张图像：{prompt}",
    "edit_en": "<image> {prompt}",
    "edit_zh": "<image> {prompt}",
}

# The canonical assistant answers of the training data, up to (not including) their `<image>`.
CANONICAL_ANSWER_PREFIXES = {
    "generate_en": "Here is an image based on the description: ",
    "generate_zh": "这是根据您的描述生成的图像：",
    "edit_en": "Here is the image: ",
    "edit_zh": "以下为编辑后的图像：",
}

IMAGE_SPAN = VISION_START + IMAGE_PAD + VISION_END
# Tokens the processor gives structure to (image spans): in message text they would desynchronise the
# image-token count from the images (an IndexError in tokenization), so they are refused there.
RESERVED_TOKENS = (VISION_START, IMAGE_PAD, VISION_END)


def model_templates(config) -> tuple[str, dict[str, str]]:
    """(system prompt, answer prefixes) of a model: its `ARConfig`'s own, or the canonical ones where None."""
    system = getattr(config, "system_prompt", None)
    prefixes = getattr(config, "answer_prefixes", None)
    return (DEFAULT_SYSTEM_PROMPT if system is None else system,
            dict(CANONICAL_ANSWER_PREFIXES if prefixes is None else prefixes))


def template_key(task: str, language: str) -> str:
    """`"generate"`/`"edit"` and `"en"`/`"zh"` -> the key of USER_TEMPLATES / CANONICAL_ANSWER_PREFIXES.

    Raises:
        ValueError: unknown task or language.
    """
    if task not in IMAGE_TASKS:
        raise ValueError(f"task must be one of {IMAGE_TASKS}, got {task!r}")
    if language not in LANGUAGES:
        raise ValueError(f"language must be one of {LANGUAGES}, got {language!r}")
    return f"{task}_{language}"


def user_text(prompt: str, task: str = "generate", language: str = "en") -> str:
    """The user turn of a generation or editing request, with `<image>` marking the source image.

    An editing instruction that already contains `<image>` is used as is (the official script raised a
    NameError there); otherwise `"<image> "` is prepended, as the official scripts do.

    Raises:
        ValueError: empty prompt, unknown task/language, or `<image>` in a generation prompt.
    """
    key = template_key(task, language)
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"empty prompt: {prompt!r}")
    if task == "edit" and IMAGE_PLACEHOLDER in prompt:
        if prompt.count(IMAGE_PLACEHOLDER) != 1:
            raise ValueError(f"an editing instruction holds one {IMAGE_PLACEHOLDER}, got {prompt!r}")
        return prompt
    if task == "generate" and IMAGE_PLACEHOLDER in prompt:
        raise ValueError(f"a generation prompt cannot contain {IMAGE_PLACEHOLDER}: {prompt!r}")
    return USER_TEMPLATES[key].format(prompt=prompt)


@dataclass
class RenderedChat:
    """A conversation rendered to text.

    Attributes:
        text: the full string, with one `<|image_pad|>` per image.
        trainable_spans: [start, end) character ranges whose tokens are CE/regression targets
            (assistant content and its `<|im_end|>`).
        image_roles: the role ("user"/"assistant") of each image, in order of appearance.
    """

    text: str
    trainable_spans: list[tuple[int, int]]
    image_roles: list[str]


def render_chat(messages: list[dict], *, system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
                add_generation_prompt: bool = False, assistant_prefix: str = "") -> RenderedChat:
    """Render messages `[{"role": "user"|"assistant"|"system", "content": str}, ...]` to text.

    Args:
        messages: the official message format; `<image>` marks an image (user: input, assistant: target).
        system_prompt: used when the messages have no system turn; None for no system turn.
        add_generation_prompt: open an assistant turn at the end (inference).
        assistant_prefix: text that starts the open assistant turn; may contain `<image>` placeholders
            (a trailing `<image>` is rendered as `<|vision_start|>` only, ready for image prediction).

    Returns:
        RenderedChat.

    Raises:
        ValueError: unknown role, non-string content, or content holding a reserved image token.
    """
    parts: list[str] = []
    spans: list[tuple[int, int]] = []
    roles: list[str] = []
    length = 0

    def add(text: str, trainable: bool = False) -> None:
        nonlocal length
        if trainable and text:
            spans.append((length, length + len(text)))
        parts.append(text)
        length += len(text)

    if system_prompt is not None and not any(m.get("role") == "system" for m in messages):
        messages = [{"role": "system", "content": system_prompt}, *messages]
    for i, message in enumerate(messages):
        role, content = message.get("role"), message.get("content")
        if role not in ("system", "user", "assistant"):
            raise ValueError(f"message {i}: unknown role {role!r}")
        if not isinstance(content, str):
            raise ValueError(f"message {i}: content must be a string, got {type(content).__name__}")
        reserved = [t for t in RESERVED_TOKENS if t in content]
        if reserved:
            raise ValueError(f"message {i}: the text holds the reserved token {reserved[0]}; mark images "
                             f"with {IMAGE_PLACEHOLDER}")
        roles += [role] * content.count(IMAGE_PLACEHOLDER)
        add(f"{IM_START}{role}\n")
        add(content.replace(IMAGE_PLACEHOLDER, IMAGE_SPAN), trainable=role == "assistant")
        add(IM_END, trainable=role == "assistant")
        add("\n")
    if add_generation_prompt:
        add(f"{IM_START}assistant\n")
        head, opens_image = assistant_prefix, assistant_prefix.endswith(IMAGE_PLACEHOLDER)
        if opens_image:
            head = assistant_prefix[: -len(IMAGE_PLACEHOLDER)]
        roles += ["assistant"] * head.count(IMAGE_PLACEHOLDER)
        add(head.replace(IMAGE_PLACEHOLDER, IMAGE_SPAN) + (VISION_START if opens_image else ""))
    return RenderedChat("".join(parts), spans, roles)


def image_request_messages(prompt: str, task: str = "generate", language: str = "en") -> list[dict]:
    """The single user turn of a canonical generation / editing request (no system turn)."""
    return [{"role": "user", "content": user_text(prompt, task, language)}]


def decode_with_image_markers(tokenizer, token_ids, vision_start_id: int, vision_end_id: int) -> str:
    """Decode generated ids, replacing each `<|vision_start|> ... <|vision_end|>` span by `<image>`.

    Special tokens (`<|im_end|>`, pads) are dropped; an unclosed span at the end also becomes `<image>`. A
    literal `<image>` that the model spells out in ordinary text tokens is dropped too: the marker must
    stand only for real images, or the reply could not be sent back as the next turn's history.
    """

    def text(tokens: list[int]) -> str:
        return tokenizer.decode(tokens, skip_special_tokens=True).replace(IMAGE_PLACEHOLDER, "")

    pieces, current, inside = [], [], False
    for token in (int(t) for t in token_ids):
        if token == vision_start_id:
            pieces.append(text(current))
            current, inside = [], True
        elif token == vision_end_id and inside:
            pieces.append(IMAGE_PLACEHOLDER)
            inside = False
        elif not inside:
            current.append(token)
    if inside:
        pieces.append(IMAGE_PLACEHOLDER)
    pieces.append(text(current))
    return "".join(pieces)
