"""English and Chinese words and phrasings for ShapesWorld.

Two kinds of text come out of here:
- canonical text (`rng=None`): one fixed phrasing, used for *answers* (an answer must be a function of
  the image for a model to learn it) and for scoring;
- varied text (`rng` given): synonyms, word orders and templates drawn at random, used for questions,
  prompts and instructions so that a model cannot key on one template.

`SYNONYMS` maps every surface form (both languages) back to a canonical English token; the answer
normaliser of the evaluation uses it.
"""

from __future__ import annotations

import re

import numpy as np

from .scene import Scene, ShapeObject

LANGS = ("en", "zh")

COLOR_WORDS = {
    "en": {c: [c] for c in ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown")},
    "zh": {"red": ["红色"], "orange": ["橙色"], "yellow": ["黄色"], "green": ["绿色"], "blue": ["蓝色"],
           "purple": ["紫色"], "pink": ["粉色"], "brown": ["棕色"]},
}
SHAPE_WORDS = {
    "en": {"circle": ["circle"], "square": ["square"], "triangle": ["triangle"],
           "diamond": ["diamond", "rhombus"], "cross": ["cross", "plus sign"]},
    "zh": {"circle": ["圆形"], "square": ["正方形"], "triangle": ["三角形"], "diamond": ["菱形"],
           "cross": ["十字形"]},
}
SHAPE_PLURAL_EN = {"circle": "circles", "square": "squares", "triangle": "triangles", "diamond": "diamonds",
                   "rhombus": "rhombuses", "cross": "crosses", "plus sign": "plus signs"}
SIZE_WORDS = {
    "en": {"small": ["small", "little"], "medium": ["medium", "medium-sized"], "large": ["large", "big"]},
    "zh": {"small": ["小的", "小号的"], "medium": ["中等大小的", "中号的"], "large": ["大的", "大号的"]},
}
PLACE_WORDS = {
    "en": {
        (0, 0): ["in the top left", "in the upper left corner", "at the top left"],
        (0, 1): ["at the top", "at the top center", "in the upper middle"],
        (0, 2): ["in the top right", "in the upper right corner", "at the top right"],
        (1, 0): ["on the left", "at the middle left", "on the left side"],
        (1, 1): ["in the center", "in the middle", "at the center"],
        (1, 2): ["on the right", "at the middle right", "on the right side"],
        (2, 0): ["in the bottom left", "in the lower left corner", "at the bottom left"],
        (2, 1): ["at the bottom", "at the bottom center", "in the lower middle"],
        (2, 2): ["in the bottom right", "in the lower right corner", "at the bottom right"],
    },
    "zh": {
        (0, 0): ["左上角", "左上方"], (0, 1): ["上方中间", "正上方"], (0, 2): ["右上角", "右上方"],
        (1, 0): ["左侧中间", "左边中间"], (1, 1): ["中间", "正中央"], (1, 2): ["右侧中间", "右边中间"],
        (2, 0): ["左下角", "左下方"], (2, 1): ["下方中间", "正下方"], (2, 2): ["右下角", "右下方"],
    },
}
# Moving *to* a place reads differently from being *at* it.
MOVE_PLACE_EN = {
    (0, 0): "to the top left", (0, 1): "to the top", (0, 2): "to the top right",
    (1, 0): "to the left side", (1, 1): "to the center", (1, 2): "to the right side",
    (2, 0): "to the bottom left", (2, 1): "to the bottom", (2, 2): "to the bottom right",
}
RELATION_WORDS = {
    "en": {"left": ["to the left of", "left of", "on the left side of"],
           "right": ["to the right of", "right of", "on the right side of"],
           "above": ["above", "higher than"], "below": ["below", "lower than", "beneath"]},
    "zh": {"left": ["左边", "左侧"], "right": ["右边", "右侧"],
           "above": ["上方", "上面"], "below": ["下方", "下面"]},
}
# GenEval's own relation words (its position prompts and rules use exactly these).
GENEVAL_RELATIONS = {"left": "left of", "right": "right of", "above": "above", "below": "below"}
NUMBER_WORDS = {
    "en": ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"],
    "zh": ["零", "一", "两", "三", "四", "五", "六", "七", "八", "九"],
}
YES_NO = {"en": {True: "yes", False: "no"}, "zh": {True: "是", False: "否"}}


def _build_synonyms() -> dict[str, str]:
    table: dict[str, str] = {}
    for lang in LANGS:
        for group in (COLOR_WORDS[lang], SHAPE_WORDS[lang], SIZE_WORDS[lang]):
            for canonical, forms in group.items():
                for form in forms:
                    table[form] = canonical
    for form, canonical in ((v, k) for k, vs in SHAPE_WORDS["en"].items() for v in vs):
        table[SHAPE_PLURAL_EN[form]] = canonical
    for lang in LANGS:
        for i, word in enumerate(NUMBER_WORDS[lang]):
            table[word] = str(i)
    table.update({"二": "2", "是": "yes", "是的": "yes", "对": "yes", "有": "yes", "否": "no", "不是": "no",
                  "不": "no", "没有": "no", "yes": "yes", "no": "no", "true": "yes", "false": "no",
                  "红": "red", "橙": "orange", "黄": "yellow", "绿": "green", "蓝": "blue", "紫": "purple",
                  "粉": "pink", "粉红色": "pink", "棕": "brown", "褐色": "brown",
                  "圆": "circle", "圆圈": "circle",
                  "方形": "square", "三角": "triangle", "十字": "cross", "grey": "gray"})
    return table


SYNONYMS: dict[str, str] = _build_synonyms()


def check_lang(lang: str) -> None:
    if lang not in LANGS:
        raise ValueError(f"unknown language {lang!r}; expected one of {LANGS}")


def pick(options: list[str], rng: np.random.Generator | None) -> str:
    """The first (canonical) option without an rng, else a uniform draw."""
    return options[0] if rng is None else options[int(rng.integers(len(options)))]


def color_word(color: str, lang: str, rng=None) -> str:
    return pick(COLOR_WORDS[lang][color], rng)


def shape_word(shape: str, lang: str, rng=None, *, plural: bool = False) -> str:
    word = pick(SHAPE_WORDS[lang][shape], rng)
    return SHAPE_PLURAL_EN[word] if plural and lang == "en" else word


def size_word(size: str, lang: str, rng=None) -> str:
    return pick(SIZE_WORDS[lang][size], rng)


def place_phrase(cell: tuple[int, int], lang: str, rng=None) -> str:
    return pick(PLACE_WORDS[lang][tuple(cell)], rng)


def number_word(n: int, lang: str, rng=None) -> str:
    """Digits or words at random (rng), the word when canonical."""
    word = NUMBER_WORDS[lang][n]
    if rng is None or lang == "zh":
        return word
    return str(n) if rng.random() < 0.3 else word


def with_article(phrase: str) -> str:
    """'a red circle' / 'an orange circle'."""
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def noun_phrase(obj: ShapeObject, lang: str, rng=None, *, size: bool = True, color: bool = True) -> str:
    """'small red circle' / '小的红色圆形' (no article, no place)."""
    if lang == "en":
        words = ([size_word(obj.size, lang, rng)] if size else []) + (
            [color_word(obj.color, lang, rng)] if color else []) + [shape_word(obj.shape, lang, rng)]
        return " ".join(words)
    return (size_word(obj.size, lang, rng) if size else "") + (
        color_word(obj.color, lang, rng) if color else "") + shape_word(obj.shape, lang, rng)


def reference(obj: ShapeObject, lang: str, rng=None) -> str:
    """A phrase naming exactly one object of a scene: 'the red circle' / '红色的圆形'."""
    if lang == "en":
        return "the " + noun_phrase(obj, lang, rng, size=False)
    sep = "" if rng is None else pick(["", "的"], rng)
    return color_word(obj.color, lang, rng) + sep + shape_word(obj.shape, lang, rng)


def object_with_place(obj: ShapeObject, lang: str, rng=None, *, size: bool = True) -> str:
    """'a small red circle in the top left' / '左上角有一个小的红色圆形'."""
    if lang == "en":
        return with_article(noun_phrase(obj, lang, rng, size=size)) + " " + place_phrase(obj.cell, lang, rng)
    return place_phrase(obj.cell, lang, rng) + "有一个" + noun_phrase(obj, lang, rng, size=size)


def join_list(items: list[str], lang: str, rng=None) -> str:
    """'x, y and z' / 'x，y和z'."""
    if len(items) == 1:
        return items[0]
    if lang == "en":
        return ", ".join(items[:-1]) + " and " + items[-1]
    return "，".join(items)


def caption(scene: Scene, lang: str, rng: np.random.Generator | None = None, *, sizes: bool = True) -> str:
    """A description that pins the scene down: every object's size, colour, shape and place.

    Canonical (rng=None): objects in reading order, fixed words, a final period; this is the answer
    to caption questions. Varied (rng): shuffled order, synonyms and an optional lead-in; this is the
    "detailed" generation prompt.
    """
    objects = list(scene.sorted().objects)
    if rng is not None:
        objects = [objects[i] for i in rng.permutation(len(objects))]
    parts = [object_with_place(o, lang, rng, size=sizes) for o in objects]
    text = join_list(parts, lang, rng)
    if rng is None:
        return (text[0].upper() + text[1:] + ".") if lang == "en" else text + "。"
    if lang == "en":
        lead = pick(["", "", "an image of ", "a picture with ", "a plain background with "], rng)
        return lead + text
    lead = pick(["", "", "一张图片，", "纯色背景上，"], rng)
    return lead + text


def count_of(n: int, shape: str | None, lang: str, rng=None, *, color: str | None = None) -> str:
    """'three red circles' / '三个红色圆形' (shape None: 'shapes')."""
    if lang == "en":
        noun = shape_word(shape, lang, rng, plural=n != 1) if shape else ("shape" if n == 1 else "shapes")
        color_words = [color_word(color, lang, rng)] if color else []
        return " ".join([number_word(n, lang, rng), *color_words, noun])
    noun = shape_word(shape, lang, rng) if shape else "图形"
    return number_word(n, lang, rng) + "个" + (color_word(color, lang, rng) if color else "") + noun


def _longest(part: str, table: dict, lang: str):
    """The key of `table[lang]` whose longest surface form occurs in `part` (None if none does)."""
    found = [(len(word), key) for key, words in table[lang].items() for word in words
             if (re.search(rf"\b{re.escape(word)}\b", part) if lang == "en" else word in part)]
    return max(found)[1] if found else None


def read_caption(text: str, lang: str) -> list[dict] | None:
    """Each described object's size, colour, shape and cell, in the caption's order: the inverse of
    `caption` (any synonym, lead-ins skipped), for scoring captions attribute by attribute. None if a
    part names a shape without a place or a place without a shape, or nothing is described."""
    check_lang(lang)
    text = text.strip().rstrip(".。")
    parts = re.split(r", | and " if lang == "en" else r"，|和", text)
    objects = []
    for part in parts:
        fields = {"size": _longest(part, SIZE_WORDS, lang), "color": _longest(part, COLOR_WORDS, lang),
                  "shape": _longest(part, SHAPE_WORDS, lang), "cell": _longest(part, PLACE_WORDS, lang)}
        if fields["shape"] is None and fields["cell"] is None:
            continue  # a lead-in ("一张图片，")
        if fields["shape"] is None or fields["cell"] is None:
            return None
        objects.append(fields)
    return objects or None
