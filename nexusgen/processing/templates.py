"""Chat templates and the canonical Nexus-Gen prompt text (docs/upstream.md §4.1 and §10), EN and ZH.

The text is rendered here, in Python, instead of through a tokenizer's Jinja chat template, so the exact
string the model sees is visible and tested. A conversation renders as (Qwen2.5-VL chat format)::

    <|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n
    <|im_start|>user\\n{user text}<|im_end|>\\n
    <|im_start|>assistant\\n{assistant text}<|im_end|>\\n

and every image becomes `<|vision_start|><|image_pad|><|vision_end|>` (the processor later repeats
`<|image_pad|>` once per image token). For image prediction the assistant turn is left open and ends with
the canonical answer prefix, *including its trailing space* for English, then `<|vision_start|>`: dropping
the system turn or the space moves every predicted embedding (docs/upstream.md §10).

**Text is text.** The rendering is a list of `Segment`s: the template's own control tokens
(`<|im_start|>`, `<|im_end|>`, the image spans) and text. Only control segments become control tokens; every
text segment, whatever it holds, is tokenized with special-token parsing off, so a user who types
`<|im_end|>` or `<|image_pad|>` gets those characters, never a control token (the processor does this).

**Where `<image>` is an image.** A message's content is either

* a string, the official message format (training records, `user_text`): each `<image>` in it marks an
  image, as in the upstream data; or
* a list of parts: a `str` is literal text (an `<image>` in it is seven characters) and `IMAGE_SLOT` marks
  an image. The pipelines build these from what a user typed, so a prompt never places an image.

**Images followed by text** (a user turn with images, as chat builds it): the official data has two
layouts, `<image>\n{question}` for understanding and `<image> {instruction}` for editing, and the model tells
the two tasks apart by that separator. `join_image_text` chooses it from the text (`is_edit_instruction`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

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


class ImageSlot:
    """Where an image stands in a list of content parts (`IMAGE_SLOT`, the one instance)."""

    def __repr__(self) -> str:
        return "IMAGE_SLOT"


IMAGE_SLOT = ImageSlot()

# The first words of editing instructions (English, lower case) and the starts of Chinese ones: the verbs
# of the official editing data and of ShapesWorld's instructions, and their common synonyms.
EDIT_VERBS = frozenset(
    "add adjust apply blur brighten change color colour convert crop darken delete draw enlarge erase "
    "extend fill flip get insert make move paint place put recolor recolour remove replace resize restore "
    "rotate shift shrink swap take transform turn".split())
EDIT_STARTS_ZH = ("把", "将", "让", "使", "给", "在", "删除", "删掉", "去掉", "去除", "移除", "添加", "加", "增加",
                  "放大", "缩小", "移动", "替换", "换", "改", "变", "涂", "画")
_QUESTION_END = re.compile(r"[?？][\s\"'”’)）]*$")
_FIRST_WORD = re.compile(r"[A-Za-z]+")


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


def is_edit_instruction(text: str) -> bool:
    """Whether `text`, following an image, asks for an edit (not a question about the image): it does not
    end with a question mark and starts with an editing verb (`EDIT_VERBS`, "Please" skipped) or, in
    Chinese, with one of `EDIT_STARTS_ZH`. "Describe the image." and "Count the circles." are questions."""
    text = text.strip()
    if not text or _QUESTION_END.search(text):
        return False
    if text.removeprefix("请").startswith(EDIT_STARTS_ZH):
        return True
    words = [w.lower() for w in _FIRST_WORD.findall(text[:40])]
    if words[:1] == ["please"]:
        words = words[1:]
    return bool(words) and words[0] in EDIT_VERBS


def join_image_text(parts: list) -> list:
    """Content parts with the official separator after every image that text follows directly: a space
    before an editing instruction (`<image> {instruction}`), a newline otherwise (`<image>\n{question}`,
    and between two images). Text that already starts with whitespace keeps its own separator."""
    joined: list = []
    for index, part in enumerate(parts):
        joined.append(part)
        if part is not IMAGE_SLOT or index + 1 == len(parts):
            continue
        following = parts[index + 1]
        if following is IMAGE_SLOT:
            joined.append("\n")
        elif isinstance(following, str) and following and not following[0].isspace():
            joined.append(" " if is_edit_instruction(following) else "\n")
    return joined


@dataclass
class Segment:
    """A piece of a rendered conversation: a control token of the template (`control`), or text, which
    is tokenized with special-token parsing off."""

    text: str
    control: bool = False


@dataclass
class RenderedChat:
    """A conversation rendered to text.

    Attributes:
        text: the full string, with one `<|image_pad|>` per image (for reading; tokenize `segments`).
        trainable_spans: [start, end) character ranges of `text` whose tokens are CE/regression targets
            (assistant content and its `<|im_end|>`).
        image_roles: the role ("user"/"assistant") of each image, in order of appearance.
        segments: `text` cut into control tokens and text, in order.
    """

    text: str
    trainable_spans: list[tuple[int, int]]
    image_roles: list[str]
    segments: list[Segment] = field(default_factory=list)


def render_chat(messages: list[dict], *, system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
                add_generation_prompt: bool = False, assistant_prefix: str = "") -> RenderedChat:
    """Render messages `[{"role": "user"|"assistant"|"system", "content": ...}, ...]` to segments.

    Args:
        messages: content is a string in the official message format (`<image>` marks an image: user:
            input, assistant: target) or a list of parts (`str`: literal text, `IMAGE_SLOT`: an image).
        system_prompt: used when the messages have no system turn; None for no system turn.
        add_generation_prompt: open an assistant turn at the end (inference).
        assistant_prefix: text that starts the open assistant turn, in the official format (a trailing
            `<image>` is rendered as `<|vision_start|>` only, ready for image prediction).

    Returns:
        RenderedChat.

    Raises:
        ValueError: unknown role, or content that is neither a string nor a list of parts.
    """
    rendered = _Renderer()
    if system_prompt is not None and not any(m.get("role") == "system" for m in messages):
        messages = [{"role": "system", "content": system_prompt}, *messages]
    for i, message in enumerate(messages):
        role, content = message.get("role"), message.get("content")
        if role not in ("system", "user", "assistant"):
            raise ValueError(f"message {i}: unknown role {role!r}")
        rendered.control(IM_START)
        rendered.text(f"{role}\n")
        trainable = role == "assistant"
        for part in _content_parts(content, i):
            if part is IMAGE_SLOT:
                rendered.image(role, trainable)
            else:
                rendered.text(part, trainable)
        rendered.control(IM_END, trainable)
        rendered.text("\n")
    if add_generation_prompt:
        rendered.control(IM_START)
        rendered.text("assistant\n")
        head, opens_image = assistant_prefix, assistant_prefix.endswith(IMAGE_PLACEHOLDER)
        if opens_image:
            head = assistant_prefix[: -len(IMAGE_PLACEHOLDER)]
        for part in _content_parts(head, len(messages)):
            if part is IMAGE_SLOT:
                rendered.image("assistant")
            else:
                rendered.text(part)
        if opens_image:
            rendered.control(VISION_START)
    return rendered.result()


def _content_parts(content, index: int) -> list:
    """A message's content as parts: a string's `<image>` placeholders become IMAGE_SLOTs."""
    if isinstance(content, str):
        pieces = content.split(IMAGE_PLACEHOLDER)
        parts: list = []
        for k, piece in enumerate(pieces):
            if k:
                parts.append(IMAGE_SLOT)
            parts.append(piece)
        return parts
    if isinstance(content, list) and all(isinstance(p, str) or p is IMAGE_SLOT for p in content):
        return content
    raise ValueError(f"message {index}: content must be a string or a list of strings and IMAGE_SLOTs, got "
                     f"{type(content).__name__}")


class _Renderer:
    """Accumulates segments, the text they spell and the trainable character spans."""

    def __init__(self):
        self.segments: list[Segment] = []
        self.spans: list[tuple[int, int]] = []
        self.roles: list[str] = []
        self.length = 0

    def _add(self, segment: Segment, trainable: bool) -> None:
        if not segment.text:
            return
        if trainable:
            self.spans.append((self.length, self.length + len(segment.text)))
        self.length += len(segment.text)
        if not segment.control and self.segments and not self.segments[-1].control:
            # adjacent text is one segment: tokenized together, as one string is (BPE merges across the
            # seam, e.g. a template's trailing space and the prompt's first word)
            self.segments[-1] = Segment(self.segments[-1].text + segment.text)
            return
        self.segments.append(segment)

    def text(self, text: str, trainable: bool = False) -> None:
        self._add(Segment(text), trainable)

    def control(self, token: str, trainable: bool = False) -> None:
        self._add(Segment(token, control=True), trainable)

    def image(self, role: str, trainable: bool = False) -> None:
        self.roles.append(role)
        for token in (VISION_START, IMAGE_PAD, VISION_END):
            self.control(token, trainable)

    def result(self) -> RenderedChat:
        return RenderedChat("".join(s.text for s in self.segments), self.spans, self.roles, self.segments)


def request_parts(prompt: str, task: str = "generate", language: str = "en") -> list:
    """The user turn of a generation or editing request as content parts: the template of `user_text`
    around `prompt` as literal text (an `<image>` or special token typed in it stays text).

    Raises:
        ValueError: empty prompt, unknown task/language.
    """
    key = template_key(task, language)
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"empty prompt: {prompt!r}")
    before, after = USER_TEMPLATES[key].split("{prompt}")
    return [*_content_parts(before, 0), prompt, *_content_parts(after, 0)]


def image_request_messages(prompt: str, task: str = "generate", language: str = "en") -> list[dict]:
    """The single user turn of a canonical generation / editing request (no system turn); the prompt is
    literal text (`request_parts`)."""
    return [{"role": "user", "content": request_parts(prompt, task, language)}]


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
