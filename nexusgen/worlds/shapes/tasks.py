"""ShapesWorld task items: understanding questions, generation prompts and edits, each with exact truth.

Every builder takes a `numpy.random.Generator` and returns a small dataclass that serialises to JSON
(`to_dict` / `from_dict`), so the evaluation can save its items and rescore them later.

- Understanding (`UND_TYPES`): count, color, shape, relation (yes/no), binding (yes/no: "is there a red
  square?" with foils whose colour and shape both occur, but on different objects), caption.
- Generation (`GEN_CATEGORIES`, GenEval's tags): single_object, two_object, counting, colors, position,
  color_attr. `spec` is GenEval's metadata ({"include": [...], "exclude": [...]}) with shapes as
  classes; `scene` is one scene that satisfies the prompt (the oracle draws it). Prompt styles:
  "short" (GenEval-like: only what the category needs) and "detailed" (every object's size, colour,
  shape and place, which pins the scene down for a model that regresses the conditional mean). With
  `layout="canonical"` a short prompt's scene leaves nothing to chance either: what the prompt does not
  say (places, sizes, unnamed colours) takes the world's defaults (`canonical_scene`).
- Editing (`EDIT_TYPES`): recolour, remove, add, move, resize, with source and target scenes and the
  indices of the objects that changed (their boxes are the edited region).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from . import language as L
from .scene import (
    COLORS,
    GRID,
    HELD_OUT_COMBOS,
    MAX_OBJECTS,
    RELATIONS,
    SHAPES,
    SIZE_ORDER,
    Scene,
    allowed_combos,
    cell_centre,
    jitter_limit,
    place_in_cell,
    relation_holds,
    sample_cells,
    sample_object,
    sample_scene,
)

UND_TYPES = ("count", "color", "shape", "relation", "binding", "caption")
# Training adds "where" ("Where is the red circle?" -> "in the top left"): a relation question needs that
# step twice, and an answer of nine places teaches it with a denser signal than one yes/no. Evaluation
# keeps UND_TYPES, so scores stay comparable across models.
# And "alike_relation": a relation question about two objects that share a colour or a shape (36% of them a
# colour). Over five 500-item draws shapes-mini v18 got 45% of the relations between two objects of one colour
# wrong (13 of 29 English ones; one random pair in nine), 11% of those between two of one shape and 8% of the
# others: it finds an object by its colour first. 1,800 steps of these alone, then two full rounds (recipe
# stages ar_alike_*), left none of them wrong on the same draws (v19).
TRAIN_UND_TYPES = (*UND_TYPES, "where", "alike_relation")
GEN_CATEGORIES = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
# Training adds "scene": any 1-4 object scene, always with a detailed prompt (it has no short form).
TRAIN_GEN_CATEGORIES = (*GEN_CATEGORIES, "scene")
EDIT_TYPES = ("recolour", "remove", "add", "move", "resize")
PROMPT_STYLES = ("short", "detailed")
LAYOUTS = ("random", "canonical")
# Categories whose short prompt names a colour, so it can name a held-out (colour, shape) pair.
COLORED_CATEGORIES = ("colors", "color_attr")


# Answer forms an older `UnderstandItem.to_dict` wrote (reasoned answers that did not help; removed).
_REMOVED_ANSWER_FORMS = ("reasoning", "conclusion", "listing")


@dataclass
class UnderstandItem:
    qtype: str
    lang: str
    scene: Scene
    question: str
    answer: str
    compositional: bool = False
    comparison: str = ""
    """Relations: the answer with its reasoning, the two numbers to compare, ordered so that the answer is
    yes exactly when the first is smaller, then yes/no (`relation_comparison`); empty for types answered
    directly. Training may use it (`SampleConfig.reasoned_answers`); scoring reads the yes/no it ends with."""

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "scene": self.scene.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> UnderstandItem:
        # Items saved before the other answer forms were removed also hold them: not needed to rescore.
        kept = {k: v for k, v in d.items() if k not in _REMOVED_ANSWER_FORMS}
        return cls(**{**kept, "scene": Scene.from_dict(d["scene"])})


@dataclass
class GenerateItem:
    category: str
    lang: str
    style: str
    prompt: str
    scene: Scene
    spec: dict
    compositional: bool = False

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "scene": self.scene.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> GenerateItem:
        return cls(**{**d, "scene": Scene.from_dict(d["scene"])})


@dataclass
class EditItem:
    etype: str
    lang: str
    instruction: str
    source: Scene
    target: Scene
    changed_source: list[int]
    changed_target: list[int]
    compositional: bool = False

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "source": self.source.to_dict(), "target": self.target.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> EditItem:
        return cls(**{**d, "source": Scene.from_dict(d["source"]), "target": Scene.from_dict(d["target"])})


def _choice(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _fill(rng, templates: list[str], **words) -> str:
    return _choice(rng, templates).format(**words)


def _scene(rng, compositional: bool, exclude, **kwargs) -> Scene:
    """In-distribution scenes avoid `exclude`; compositional ones contain a held-out pair."""
    if compositional:
        return sample_scene(rng, require_combo=HELD_OUT_COMBOS, **kwargs)
    return sample_scene(rng, exclude=exclude, **kwargs)


# ----------------------------------------------------------------------------------------------------
# Understanding

def _count_question(rng, scene: Scene, lang: str, exclude) -> tuple[str, str] | tuple[str, str, dict]:
    mode = _choice(rng, ["total", "color", "shape"])
    if mode == "total":
        q = _fill(rng, {"en": ["How many shapes are there?", "How many objects are in the image?",
                               "Count the shapes in the picture.", "How many shapes can you see?",
                               "What is the number of objects in this image?"],
                        "zh": ["图中有几个图形？", "图片里一共有多少个图形？",
                               "数一数图中有几个物体。"]}[lang])
        return q, str(len(scene))
    if mode == "color":
        # Mostly a colour that is present; sometimes an absent one (answer 0).
        present = sorted({o.color for o in scene.objects})
        color = _choice(rng, present if rng.random() < 0.8 else list(COLORS))
        counted = [o for o in scene.objects if o.color == color]
        c = L.color_word(color, lang, rng)
        q = _fill(rng, {"en": ["How many {c} shapes are there?", "How many {c} objects can you see?",
                               "Count the {c} shapes."],
                        "zh": ["图中有几个{c}的图形？", "图片里有多少个{c}图形？"]}[lang], c=c)
        return q, str(len(counted))
    present = sorted({o.shape for o in scene.objects})
    shape = _choice(rng, present if rng.random() < 0.8 else list(SHAPES))
    counted = [o for o in scene.objects if o.shape == shape]
    s = L.shape_word(shape, lang, rng, plural=True)
    q = _fill(rng, {"en": ["How many {s} are there?", "How many {s} are in the image?", "Count the {s}."],
                    "zh": ["图中有几个{s}？", "图片里有多少个{s}？"]}[lang], s=s)
    return q, str(len(counted))


def _color_question(rng, scene: Scene, lang: str, exclude) -> tuple[str, str]:
    obj = _choice(rng, scene.objects)
    unique_shape = sum(o.shape == obj.shape for o in scene.objects) == 1
    s = L.shape_word(obj.shape, lang, rng)
    if lang == "en":
        ref = s if unique_shape else f"{s} {L.place_phrase(obj.cell, lang, rng)}"
        q = _fill(rng, ["What color is the {r}?", "What colour is the {r}?", "Which color is the {r}?",
                        "What is the color of the {r}?"], r=ref)
    else:
        ref = s if unique_shape else f"{L.place_phrase(obj.cell, lang, rng)}的{s}"
        q = _fill(rng, ["{r}是什么颜色？", "{r}是什么颜色的？"], r=ref)
    return q, L.color_word(obj.color, lang)


def _shape_question(rng, scene: Scene, lang: str, exclude) -> tuple[str, str]:
    obj = _choice(rng, scene.objects)
    unique_color = sum(o.color == obj.color for o in scene.objects) == 1
    if unique_color and rng.random() < 0.4:
        c = L.color_word(obj.color, lang, rng)
        q = _fill(rng, {"en": ["What shape is the {c} object?", "What is the shape of the {c} object?"],
                        "zh": ["{c}的图形是什么形状？", "{c}物体是什么形状？"]}[lang], c=c)
    else:
        p = L.place_phrase(obj.cell, lang, rng)
        q = _fill(rng, {"en": ["What shape is {p}?", "Which shape is {p}?", "What kind of shape is {p}?"],
                        "zh": ["{p}是什么形状？", "{p}的图形是什么形状？"]}[lang], p=p)
    return q, L.shape_word(obj.shape, lang)


def _relation_question(rng, scene: Scene, lang: str, exclude) -> tuple[str, str, dict]:
    i, j = rng.choice(len(scene), size=2, replace=False)
    return _relation_about(rng, scene, scene.objects[int(i)], scene.objects[int(j)], lang)


def alike_pairs(scene: Scene) -> list[tuple[int, int]]:
    """Ordered index pairs of distinct objects that share a colour or a shape."""
    objs = scene.objects
    return [(i, j) for i, a in enumerate(objs) for j, b in enumerate(objs)
            if i != j and (a.color == b.color or a.shape == b.shape)]


def _alike_relation_question(rng, scene: Scene, lang: str, exclude) -> tuple[str, str, dict]:
    """A relation question about two objects alike in colour or shape (the scene must have a pair)."""
    i, j = _choice(rng, alike_pairs(scene))
    return _relation_about(rng, scene, scene.objects[i], scene.objects[j], lang)


def _relation_about(rng, scene: Scene, a, b, lang: str) -> tuple[str, str, dict]:
    truth = bool(rng.random() < 0.5)
    options = [r for r in RELATIONS if relation_holds(a, b, r) == truth]
    if not options:  # cannot happen for distinct cells, but keep the answer honest if it ever does
        truth = not truth
        options = [r for r in RELATIONS if relation_holds(a, b, r) == truth]
    rel = _choice(rng, options)
    words = dict(A=L.reference(a, lang, rng), B=L.reference(b, lang, rng),
                 r=L.pick(L.RELATION_WORDS[lang][rel], rng))
    q = _fill(rng, {"en": ["Is {A} {r} {B}?", "Is {A} located {r} {B}?", "Does {A} appear {r} {B}?"],
                    "zh": ["{A}在{B}的{r}吗？", "{A}是否位于{B}的{r}？"]}[lang], **words)
    if lang == "en":
        q = q[0].upper() + q[1:]
    return q, L.YES_NO[lang][truth], {"comparison": relation_comparison(a, b, rel, lang)}


def relation_comparison(a, b, relation: str, lang: str) -> str:
    """The relation as a comparison of two numbers on its axis, smaller first wins: "Is A right of B?" ->
    "The blue square is in column 1 and the red circle is in column 3, so yes." (B first: A is right of B
    exactly when B's column is smaller). Columns count from the left, rows from the top, from 1.

    Why this form: stated as two place phrases ("A is in the top left and B is on the right, so no."), the
    yes/no is an XOR of the relation's direction with the order of two multi-word places, and no single
    input says anything about it alone. Learning only that last token from text (the places given, batch 16),
    the 4-layer LLM of shapes-mini was at 0.635 after 800 steps with place phrases, 0.93 after 700 with the
    numbers in the question's order (still an XOR), and 1.0 after 200 with them ordered like this: the
    yes/no then depends on the two numbers only, each of which tells on its own, and the relation word only
    picks the axis and the order, each a copy (docs/training-log.md, eleventh session).
    """
    axis = _axis(relation)
    first, second = (a, b) if relation in ("left", "above") else (b, a)
    answer = L.YES_NO[lang][first.cell[axis] < second.cell[axis]]  # = relation_holds(a, b, relation)
    if lang == "en":
        said = _on_axis(first, axis, lang)
        return f"{said[0].upper()}{said[1:]} and {_on_axis(second, axis, lang)}, so {answer}."
    return f"{_on_axis(first, axis, lang)}，{_on_axis(second, axis, lang)}，所以{answer}。"


def _axis(relation: str) -> int:
    """The cell index a relation compares: 1 (column) for left/right, 0 (row) for above/below."""
    return 1 if relation in ("left", "right") else 0


def _on_axis(obj, axis: int, lang: str) -> str:
    """"the red circle is in column 3" / "红色圆形在第3列": the canonical reference and the object's row or
    column, counted from 1."""
    number = obj.cell[axis] + 1
    if lang == "en":
        return f"{L.reference(obj, lang)} is in {'column' if axis else 'row'} {number}"
    return f"{L.reference(obj, lang)}在第{number}{'列' if axis else '行'}"


def _where_question(rng, scene: Scene, lang: str, exclude) -> tuple[str, str]:
    """Content to place, the inverse of "what shape is in the top left?": the answer is the object's
    canonical place phrase."""
    obj = _choice(rng, scene.objects)
    q = _fill(rng, {"en": ["Where is {A}?", "Where is {A} in the image?", "In which part of the picture is {A}?"],
                    "zh": ["{A}在哪里？", "{A}在图中的什么位置？"]}[lang], A=L.reference(obj, lang, rng))
    return q, L.place_phrase(obj.cell, lang)


def _binding_question(rng, scene: Scene, lang: str, exclude) -> tuple[str, str]:
    truth = bool(rng.random() < 0.5)
    if truth:
        color, shape = _choice(rng, scene.objects).combo
    else:
        taken = {o.combo for o in scene.objects}
        colors, shapes = {o.color for o in scene.objects}, {o.shape for o in scene.objects}
        pool = [p for p in allowed_combos(exclude) if p not in taken]
        # Binding foils: the colour and the shape both occur, only not on the same object.
        foils = [p for p in pool if p[0] in colors and p[1] in shapes]
        color, shape = _choice(rng, foils or pool)
    c, s = L.color_word(color, lang, rng), L.shape_word(shape, lang, rng)
    if lang == "en":
        q = _fill(rng, ["Is there {x}?", "Does the image contain {x}?", "Can you see {x} in the picture?",
                        "Is there {x} in the image?"], x=L.with_article(f"{c} {s}"))
    else:
        q = _fill(rng, ["图中有{c}的{s}吗？", "图片里是否有{c}{s}？"], c=c, s=s)
    return q, L.YES_NO[lang][truth]


def _caption_question(rng, scene: Scene, lang: str, exclude) -> tuple[str, str]:
    q = _fill(rng, {"en": ["Describe the image.", "Describe the shapes in this picture.",
                           "What is in this image? Describe every shape.",
                           "Give a detailed description of the image.",
                           "List every shape with its size, color and position."],
                    "zh": ["描述这张图片。", "请详细描述图中的图形。", "图中有什么？请描述每个图形。"]}[lang])
    return q, L.caption(scene, lang)


_QUESTIONS = {"count": _count_question, "color": _color_question, "shape": _shape_question,
              "relation": _relation_question, "binding": _binding_question, "caption": _caption_question,
              "where": _where_question, "alike_relation": _alike_relation_question}


def make_understanding(rng: np.random.Generator, qtype: str, lang: str = "en", *, compositional: bool = False,
                       exclude: frozenset = HELD_OUT_COMBOS) -> UnderstandItem:
    """A scene and one question about it with its exact (canonical) answer."""
    if qtype not in _QUESTIONS:
        raise ValueError(f"unknown question type {qtype!r}; expected one of {TRAIN_UND_TYPES}")
    L.check_lang(lang)
    scene = _scene(rng, compositional, exclude, min_objects=2 if qtype in ("relation", "alike_relation") else 1)
    while qtype == "alike_relation" and not alike_pairs(scene):  # six scenes in ten have a pair
        scene = _scene(rng, compositional, exclude, min_objects=2)
    question, answer, *steps = _QUESTIONS[qtype](rng, scene, lang, exclude)  # steps: the reasoned answers
    return UnderstandItem(qtype, lang, scene, question, answer, compositional, **(steps[0] if steps else {}))


# ----------------------------------------------------------------------------------------------------
# Generation

def _generation_scene(rng, category: str, compositional: bool, exclude) -> tuple[Scene, dict]:
    """A scene for `category` and the extra facts its prompt needs (relation, count)."""
    extra: dict = {}
    if category == "scene":
        return _scene(rng, compositional, exclude), extra
    if category in ("single_object", "colors"):
        return _scene(rng, compositional, exclude, num_objects=1), extra
    if category == "counting":
        n = int(rng.integers(2, MAX_OBJECTS + 1))
        shape = _choice(rng, SHAPES)
        objs, taken = [], set()
        for k, cell in enumerate(sample_cells(rng, n)):
            forced = compositional and k == 0
            color = next(c for c, s in HELD_OUT_COMBOS if s == shape) if forced else None
            obj = sample_object(rng, cell, shape=shape, color=color, taken=taken,
                                exclude=frozenset() if forced else exclude)
            taken.add(obj.combo)
            objs.append(obj)
        return Scene(tuple(objs)), {"count": n}
    if category == "position":
        rel = _choice(rng, RELATIONS)
        # Same row for left/right, same column for above/below: GenEval's rule (which also looks at
        # the other axis) then agrees with the grid relation.
        line = int(rng.integers(GRID))
        a_pos, b_pos = sorted(rng.choice(GRID, size=2, replace=False))
        if rel in ("right", "below"):
            a_pos, b_pos = b_pos, a_pos
        cells = [(line, a_pos), (line, b_pos)] if rel in ("left", "right") else [(a_pos, line), (b_pos, line)]
        extra["relation"] = rel
    else:  # two_object, color_attr
        cells = sample_cells(rng, 2)
    first = _scene(rng, compositional, exclude, num_objects=1).objects[0]
    a = dataclasses.replace(first, row=cells[0][0], col=cells[0][1],
                            **dict(zip("xy", place_in_cell(rng, cells[0], first.size))))
    pairs = [(c, s) for c, s in allowed_combos(exclude) if s != a.shape
             and (category != "color_attr" or c != a.color)]
    b_color, b_shape = _choice(rng, pairs)
    b = sample_object(rng, cells[1], shape=b_shape, color=b_color)
    return Scene((a, b)), extra


def _spec(category: str, scene: Scene, extra: dict) -> dict:
    """GenEval metadata for the scene: include / exclude requirements with shapes as classes."""
    objs = scene.objects
    if category == "single_object":
        return {"include": [{"class": objs[0].shape, "count": 1}], "exclude": []}
    if category == "colors":
        return {"include": [{"class": objs[0].shape, "count": 1, "color": objs[0].color}], "exclude": []}
    if category == "counting":
        n = extra["count"]
        return {"include": [{"class": objs[0].shape, "count": n}],
                "exclude": [{"class": objs[0].shape, "count": n + 1}]}
    if category == "two_object":
        return {"include": [{"class": o.shape, "count": 1} for o in objs], "exclude": []}
    if category in ("color_attr", "scene"):
        return {"include": [{"class": o.shape, "count": 1, "color": o.color} for o in objs], "exclude": []}
    a, b = objs
    return {"include": [{"class": b.shape, "count": 1},
                        {"class": a.shape, "count": 1,
                         "position": [L.GENEVAL_RELATIONS[extra["relation"]], 0]}],
            "exclude": []}


def _short_prompt(rng, category: str, scene: Scene, extra: dict, lang: str) -> str:
    objs = scene.objects
    s = [L.shape_word(o.shape, lang, rng) for o in objs]
    c = [L.color_word(o.color, lang, rng) for o in objs]
    if lang == "zh":
        table = {
            "single_object": (["一个{s0}", "一张有一个{s0}的图片", "画一个{s0}"], {}),
            "two_object": (["一个{s0}和一个{s1}", "一张有一个{s0}和一个{s1}的图片"], {}),
            "counting": (["{n}", "一张有{n}的图片"],
                         {"n": L.count_of(extra.get("count", 0), objs[0].shape, lang, rng)}),
            "colors": (["一个{c0}的{s0}", "一个{c0}{s0}"], {}),
            "position": (["一个{s0}在一个{s1}的{r}", "{s1}{r}有一个{s0}"],
                         {"r": L.pick(L.RELATION_WORDS["zh"].get(extra.get("relation", "left")), rng)}),
            "color_attr": (["一个{c0}的{s0}和一个{c1}的{s1}", "{c0}{s0}和{c1}{s1}"], {}),
        }
    else:
        table = {
            "single_object": (["{a0}", "an image of {a0}", "a picture of {a0}", "a single {s0}"], {}),
            "two_object": (["{a0} and {a1}", "an image of {a0} and {a1}",
                            "a picture with {a0} and {a1}"], {}),
            "counting": (["{n}", "an image of {n}", "exactly {n}"],
                         {"n": L.count_of(extra.get("count", 0), objs[0].shape, lang, rng)}),
            "colors": (["{ac0}", "an image of {ac0}", "a picture of {ac0}"], {}),
            "position": (["{a0} {r} {a1}", "an image of {a0} {r} {a1}"],
                         {"r": L.GENEVAL_RELATIONS.get(extra.get("relation", "left"))}),
            "color_attr": (["{ac0} and {ac1}", "an image of {ac0} and {ac1}",
                            "a picture with {ac0} and {ac1}"], {}),
        }
    templates, words = table[category]
    for k in range(len(objs)):
        words.update({f"s{k}": s[k], f"c{k}": c[k], f"a{k}": L.with_article(s[k]),
                      f"ac{k}": L.with_article(f"{c[k]} {s[k]}")})
    return _choice(rng, templates).format(**words)


# The defaults of a short prompt's scene under layout "canonical". Nexus-Gen regresses the image's
# embeddings (MSE), so a prompt whose scenes vary is taught the mean of their embeddings, which decodes
# to a washed-out blur; with defaults, every short training prompt names exactly one image.
CANONICAL_SIZE = "medium"
CANONICAL_CELLS = {1: ((1, 1),), 2: ((1, 0), (1, 2)), 3: ((1, 0), (1, 1), (1, 2)),
                   4: ((0, 0), (0, 2), (2, 0), (2, 2))}
# Cells of (a, b) for "a <relation> b".
RELATION_CELLS = {"left": ((1, 0), (1, 2)), "right": ((1, 2), (1, 0)),
                  "above": ((0, 1), (2, 1)), "below": ((2, 1), (0, 1))}


def default_colors(shape: str) -> list[str]:
    """The colours an unnamed `shape` takes in a canonical scene, in order (the k-th object of that shape
    takes the k-th): the palette rotated by the shape's index, so that shapes start on different colours
    (the held-out pairs are skipped, so diamond and cross share blue)."""
    names = list(COLORS)
    start = SHAPES.index(shape)
    return [c for c in names[start:] + names[:start] if (c, shape) not in HELD_OUT_COMBOS]


def canonical_scene(category: str, scene: Scene, extra: dict) -> Scene:
    """`scene` with what a short `category` prompt leaves open set to the defaults: cells by object count
    (or by the relation), medium size, centred in the cell, and unless the category names colours, the
    shapes' default colours. The prompt's facts (shapes, named colours, count, relation) are kept."""
    if category not in GEN_CATEGORIES:
        raise ValueError(f"category {category!r} has no short prompt; expected one of {GEN_CATEGORIES}")
    cells = RELATION_CELLS[extra["relation"]] if category == "position" else CANONICAL_CELLS[len(scene)]
    seen: dict[str, int] = {}
    objects = []
    for obj, (row, col) in zip(scene.objects, cells):
        color = obj.color
        if category not in COLORED_CATEGORIES:
            k = seen[obj.shape] = seen.get(obj.shape, -1) + 1
            color = default_colors(obj.shape)[k]
        x, y = cell_centre((row, col))
        objects.append(dataclasses.replace(obj, color=color, size=CANONICAL_SIZE, row=row, col=col, x=x, y=y))
    return Scene(tuple(objects))


def make_generation(rng: np.random.Generator, category: str, lang: str = "en", style: str = "short", *,
                    compositional: bool = False, exclude: frozenset = HELD_OUT_COMBOS,
                    layout: str = "random") -> GenerateItem:
    """A GenEval-style generation prompt with its spec and one scene that satisfies it; with
    `layout="canonical"`, a short prompt's scene is `canonical_scene` (detailed prompts pin theirs down)."""
    if category not in TRAIN_GEN_CATEGORIES:
        raise ValueError(f"unknown generation category {category!r}; expected one of {TRAIN_GEN_CATEGORIES}")
    if style not in PROMPT_STYLES:
        raise ValueError(f"unknown prompt style {style!r}; expected one of {PROMPT_STYLES}")
    if category == "scene" and style != "detailed":
        raise ValueError("category 'scene' has only a detailed prompt")
    if compositional and style == "short" and category not in COLORED_CATEGORIES:
        raise ValueError(f"a short {category!r} prompt names no colour, so it cannot be compositional")
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    L.check_lang(lang)
    scene, extra = _generation_scene(rng, category, compositional, exclude)
    if style == "short":
        if layout == "canonical":
            scene = canonical_scene(category, scene, extra)
        prompt = _short_prompt(rng, category, scene, extra, lang)
    else:
        prompt = L.caption(scene, lang, rng)
    return GenerateItem(category, lang, style, prompt, scene, _spec(category, scene, extra), compositional)


# ----------------------------------------------------------------------------------------------------
# Editing

def _recolor(rng, scene: Scene, lang: str, exclude) -> tuple[str, Scene, int]:
    taken = {o.combo for o in scene.objects}
    i = int(rng.integers(len(scene)))
    obj = scene.objects[i]
    colors = [c for c in COLORS if c != obj.color and (c, obj.shape) not in taken | set(exclude)]
    new = _choice(rng, colors)
    words = dict(r=L.reference(obj, lang, rng), c=L.color_word(new, lang, rng))
    q = _fill(rng, {"en": ["Make {r} {c}.", "Change the color of {r} to {c}.", "Turn {r} {c}.",
                           "Recolor {r} {c}.", "Paint {r} {c}."],
                    "zh": ["把{r}变成{c}。", "将{r}的颜色改为{c}。", "把{r}涂成{c}。"]}[lang], **words)
    return q, scene.replace(i, color=new), i


def _remove(rng, scene: Scene, lang: str, exclude) -> tuple[str, Scene, None]:
    i = int(rng.integers(len(scene)))
    r = L.reference(scene.objects[i], lang, rng)
    q = _fill(rng, {"en": ["Remove {r}.", "Delete {r}.", "Take away {r}.", "Get rid of {r}.",
                           "Erase {r} from the image."],
                    "zh": ["删除{r}。", "去掉{r}。", "把{r}移除。"]}[lang], r=r)
    return q, scene.without(i), i


def _add(rng, scene: Scene, lang: str, exclude) -> tuple[str, Scene, None]:
    cell = _choice(rng, scene.free_cells())
    obj = sample_object(rng, cell, exclude=exclude, taken={o.combo for o in scene.objects})
    p = L.place_phrase(cell, lang, rng)
    if lang == "en":
        q = _fill(rng, ["Add {o} {p}.", "Put {o} {p}.", "Place {o} {p}.", "Draw {o} {p}."],
                  o=L.with_article(L.noun_phrase(obj, lang, rng)), p=p)
    else:
        q = _fill(rng, ["在{p}添加一个{o}。", "在{p}加一个{o}。", "在{p}画一个{o}。"],
                  o=L.noun_phrase(obj, lang, rng), p=p)
    return q, scene.with_object(obj), None


def _move(rng, scene: Scene, lang: str, exclude) -> tuple[str, Scene, int]:
    i = int(rng.integers(len(scene)))
    obj = scene.objects[i]
    cell = _choice(rng, scene.free_cells())
    x, y = place_in_cell(rng, cell, obj.size)
    r = L.reference(obj, lang, rng)
    if lang == "en":
        q = _fill(rng, ["Move {r} {t}.", "Shift {r} {t}.", "Put {r} {p}."],
                  r=r, t=L.MOVE_PLACE_EN[cell], p=L.place_phrase(cell, lang, rng))
    else:
        q = _fill(rng, ["把{r}移到{p}。", "将{r}移动到{p}。"], r=r, p=L.place_phrase(cell, lang, rng))
    return q, scene.replace(i, row=cell[0], col=cell[1], x=x, y=y), i


def _resize(rng, scene: Scene, lang: str, exclude) -> tuple[str, Scene, int]:
    i = int(rng.integers(len(scene)))
    obj = scene.objects[i]
    k = SIZE_ORDER.index(obj.size)
    r = L.reference(obj, lang, rng)
    if rng.random() < 0.5:  # one step up or down, said as "bigger" / "smaller"
        step = _choice(rng, [d for d in (-1, 1) if 0 <= k + d < len(SIZE_ORDER)])
        new = SIZE_ORDER[k + step]
        key = (lang, step > 0)
        q = _fill(rng, {("en", True): ["Make {r} bigger.", "Enlarge {r}.", "Make {r} larger."],
                        ("en", False): ["Make {r} smaller.", "Shrink {r}."],
                        ("zh", True): ["把{r}变大。", "放大{r}。"],
                        ("zh", False): ["把{r}变小。", "缩小{r}。"]}[key], r=r)
    else:
        new = _choice(rng, [s for s in SIZE_ORDER if s != obj.size])
        if lang == "en":
            q = _fill(rng, ["Make {r} {s}.", "Resize {r} to {s}.", "Change the size of {r} to {s}."],
                      r=r, s=L.size_word(new, lang, rng))
        else:
            z = {"small": "小号", "medium": "中号", "large": "大号"}[new]
            q = _fill(rng, ["把{r}的大小改为{z}。", "把{r}改成{z}的。"], r=r, z=z)
    # Keep the centre, pulled back inside the cell if the larger box would cross its border.
    limit = jitter_limit(new)
    cx, cy = cell_centre(obj.cell)
    x = float(np.clip(obj.x, cx - limit, cx + limit))
    y = float(np.clip(obj.y, cy - limit, cy + limit))
    return q, scene.replace(i, size=new, x=x, y=y), i


_EDITS = {"recolour": (_recolor, 1, MAX_OBJECTS), "remove": (_remove, 2, MAX_OBJECTS),
          "add": (_add, 1, MAX_OBJECTS - 1), "move": (_move, 1, MAX_OBJECTS - 1),
          "resize": (_resize, 1, MAX_OBJECTS)}


def make_edit(rng: np.random.Generator, etype: str, lang: str = "en", *, compositional: bool = False,
              exclude: frozenset = HELD_OUT_COMBOS) -> EditItem:
    """A source scene, an instruction and the exact target scene."""
    if etype not in _EDITS:
        raise ValueError(f"unknown edit type {etype!r}; expected one of {EDIT_TYPES}")
    L.check_lang(lang)
    fn, lo, hi = _EDITS[etype]
    source = _scene(rng, compositional, exclude, min_objects=lo, max_objects=hi)
    instruction, target, index = fn(rng, source, lang, exclude)
    if etype == "remove":
        changed_source, changed_target = [index], []
    elif etype == "add":
        changed_source, changed_target = [], [len(target) - 1]
    else:
        changed_source, changed_target = [index], [index]
    return EditItem(etype, lang, instruction, source, target, changed_source, changed_target, compositional)
