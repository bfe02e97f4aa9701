"""ShapesWorld scene graphs and the seeded scene sampler.

A scene is 1-4 objects on a plain background. The canvas is split into a 3x3 grid of cells; each object
occupies its own cell, its centre jittered inside the cell so that it never crosses into a neighbour.
The grid makes every relation and place exact: "left of" means a smaller column, "above" a smaller
row, and "in the top left" names cell (0, 0). Coordinates are normalised to [0, 1], x to the right and
y downwards, so a scene renders identically at any pixel size.

Within one scene a (colour, shape) pair occurs at most once, so "the red circle" always names exactly
one object (questions, prompts and edit instructions rely on it).

Randomness: every function takes a `numpy.random.Generator`; nothing reads global state, so a sample
is a pure function of its seed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

# Palette (sRGB). Chosen so that every colour's direction away from the background differs by more than
# ~20 degrees from every other's: the detector unmixes anti-aliased edge pixels along these directions.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (250, 135, 20),
    "yellow": (240, 220, 30),
    "green": (40, 160, 60),
    "blue": (40, 90, 220),
    "purple": (130, 50, 180),
    "pink": (230, 90, 200),
    "brown": (125, 75, 35),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross")
# Half side of the object's bounding box, as a fraction of the image side. Ratios ~1.4 apart so the
# detector separates them even under blur; "large" still fits inside a 1/3-wide cell with a margin.
SIZES: dict[str, float] = {"small": 0.075, "medium": 0.105, "large": 0.14}
SIZE_ORDER: tuple[str, ...] = ("small", "medium", "large")
BACKGROUND: tuple[int, int, int] = (240, 240, 240)
GRID = 3
MAX_OBJECTS = 4
CELLS: tuple[tuple[int, int], ...] = tuple((r, c) for r in range(GRID) for c in range(GRID))
# Free space kept between an object's box and its cell border.
CELL_MARGIN = 0.02

# Compositional split (CoGenT / ShapeWorld style): these (colour, shape) pairs never occur in the
# training split and are reported separately at evaluation. One pair per shape, each colour once.
HELD_OUT_COMBOS: frozenset[tuple[str, str]] = frozenset({
    ("blue", "triangle"), ("red", "cross"), ("green", "diamond"), ("yellow", "square"), ("purple", "circle"),
})
RELATIONS: tuple[str, ...] = ("left", "right", "above", "below")


@dataclass(frozen=True)
class ShapeObject:
    """One object: attributes plus its grid cell and exact centre (normalised coordinates)."""

    shape: str
    color: str
    size: str
    row: int
    col: int
    x: float
    y: float

    def __post_init__(self):
        # Plain Python numbers (numpy scalars from the sampler would not serialise to JSON).
        for name, kind in (("row", int), ("col", int), ("x", float), ("y", float)):
            object.__setattr__(self, name, kind(getattr(self, name)))
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}; expected one of {SHAPES}")
        if self.color not in COLORS:
            raise ValueError(f"unknown colour {self.color!r}; expected one of {tuple(COLORS)}")
        if self.size not in SIZES:
            raise ValueError(f"unknown size {self.size!r}; expected one of {SIZE_ORDER}")
        if not (0 <= self.row < GRID and 0 <= self.col < GRID):
            raise ValueError(f"cell ({self.row}, {self.col}) outside the {GRID}x{GRID} grid")

    @property
    def cell(self) -> tuple[int, int]:
        return (self.row, self.col)

    @property
    def combo(self) -> tuple[str, str]:
        return (self.color, self.shape)

    @property
    def half(self) -> float:
        """Half side of the bounding box, normalised."""
        return SIZES[self.size]

    def bbox(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1), normalised."""
        return (self.x - self.half, self.y - self.half, self.x + self.half, self.y + self.half)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Scene:
    """An ordered tuple of objects on a plain background."""

    objects: tuple[ShapeObject, ...]
    background: tuple[int, int, int] = BACKGROUND

    def __post_init__(self):
        cells = [o.cell for o in self.objects]
        if len(set(cells)) != len(cells):
            raise ValueError(f"two objects share a cell: {cells}")
        combos = [o.combo for o in self.objects]
        if len(set(combos)) != len(combos):
            raise ValueError(f"a (colour, shape) pair occurs twice: {combos}")

    def __len__(self) -> int:
        return len(self.objects)

    def free_cells(self) -> list[tuple[int, int]]:
        taken = {o.cell for o in self.objects}
        return [c for c in CELLS if c not in taken]

    def find(self, color: str, shape: str) -> int | None:
        """Index of the object with this colour and shape, or None."""
        for i, o in enumerate(self.objects):
            if o.combo == (color, shape):
                return i
        return None

    def has_combo(self, combos: frozenset[tuple[str, str]]) -> bool:
        return any(o.combo in combos for o in self.objects)

    def replace(self, index: int, **changes) -> Scene:
        objs = list(self.objects)
        objs[index] = dataclasses.replace(objs[index], **changes)
        return Scene(tuple(objs), self.background)

    def without(self, index: int) -> Scene:
        return Scene(tuple(o for i, o in enumerate(self.objects) if i != index), self.background)

    def with_object(self, obj: ShapeObject) -> Scene:
        return Scene((*self.objects, obj), self.background)

    def sorted(self) -> Scene:
        """Objects in reading order (row, then column): the canonical order of captions."""
        return Scene(tuple(sorted(self.objects, key=lambda o: o.cell)), self.background)

    def to_dict(self) -> dict:
        return {"background": list(self.background), "objects": [o.to_dict() for o in self.objects]}

    @classmethod
    def from_dict(cls, data: dict) -> Scene:
        objects = tuple(ShapeObject(**o) for o in data["objects"])
        return cls(objects, tuple(data.get("background", BACKGROUND)))


def relation_holds(a: ShapeObject, b: ShapeObject, relation: str) -> bool:
    """Whether `a` is `relation` ("left", "right", "above", "below") of `b`, by grid cell."""
    if relation == "left":
        return a.col < b.col
    if relation == "right":
        return a.col > b.col
    if relation == "above":
        return a.row < b.row
    if relation == "below":
        return a.row > b.row
    raise ValueError(f"unknown relation {relation!r}; expected one of {RELATIONS}")


def jitter_limit(size: str) -> float:
    """Largest centre offset from the cell centre that keeps the object (plus margin) inside its cell."""
    return max(0.0, 0.5 / GRID - SIZES[size] - CELL_MARGIN)


def cell_centre(cell: tuple[int, int]) -> tuple[float, float]:
    """The centre (x, y) of grid cell (row, col), in normalised coordinates."""
    row, col = cell
    return (col + 0.5) / GRID, (row + 0.5) / GRID


def place_in_cell(rng: np.random.Generator, cell: tuple[int, int], size: str) -> tuple[float, float]:
    """A jittered centre (x, y) for an object of `size` in `cell`."""
    limit = jitter_limit(size)
    dx, dy = rng.uniform(-limit, limit, size=2) if limit > 0 else (0.0, 0.0)
    cx, cy = cell_centre(cell)
    return (float(cx + dx), float(cy + dy))


def allowed_combos(exclude: frozenset[tuple[str, str]] = frozenset()) -> list[tuple[str, str]]:
    """All (colour, shape) pairs not in `exclude`, in a fixed order."""
    return [(c, s) for c in COLORS for s in SHAPES if (c, s) not in exclude]


def sample_object(
    rng: np.random.Generator,
    cell: tuple[int, int],
    *,
    shape: str | None = None,
    color: str | None = None,
    size: str | None = None,
    exclude: frozenset[tuple[str, str]] = frozenset(),
    taken: set[tuple[str, str]] | frozenset = frozenset(),
) -> ShapeObject:
    """Sample one object in `cell`; fixed attributes are kept, the others drawn uniformly.

    Raises:
        ValueError: when no (colour, shape) pair satisfies the constraints.
    """
    options = [(c, s) for c, s in allowed_combos(exclude | frozenset(taken))
               if (shape is None or s == shape) and (color is None or c == color)]
    if not options:
        raise ValueError(f"no colour/shape pair left for shape={shape} color={color}")
    c, s = options[int(rng.integers(len(options)))]
    size = size if size is not None else SIZE_ORDER[int(rng.integers(len(SIZE_ORDER)))]
    x, y = place_in_cell(rng, cell, size)
    return ShapeObject(shape=s, color=c, size=size, row=cell[0], col=cell[1], x=x, y=y)


def sample_cells(rng: np.random.Generator, num: int,
                 exclude: list[tuple[int, int]] = ()) -> list[tuple[int, int]]:
    """`num` distinct free cells in random order."""
    free = [c for c in CELLS if c not in set(exclude)]
    if num > len(free):
        raise ValueError(f"asked for {num} cells, only {len(free)} free")
    return [free[i] for i in rng.permutation(len(free))[:num]]


def sample_scene(
    rng: np.random.Generator,
    *,
    num_objects: int | None = None,
    min_objects: int = 1,
    max_objects: int = MAX_OBJECTS,
    exclude: frozenset[tuple[str, str]] = frozenset(),
    require_combo: frozenset[tuple[str, str]] | None = None,
) -> Scene:
    """Sample a scene of distinct cells and distinct (colour, shape) pairs.

    Args:
        rng: the random generator (the only source of randomness).
        num_objects: exact object count; default uniform in [min_objects, max_objects].
        exclude: (colour, shape) pairs that must not occur (the held-out split for training).
        require_combo: if given, the first sampled object takes one of these pairs (compositional items).
    """
    if num_objects is None:
        num_objects = int(rng.integers(min_objects, max_objects + 1))
    if not 1 <= num_objects <= MAX_OBJECTS:
        raise ValueError(f"num_objects must be in [1, {MAX_OBJECTS}], got {num_objects}")
    cells = sample_cells(rng, num_objects)
    taken: set[tuple[str, str]] = set()
    objects = []
    for i, cell in enumerate(cells):
        if i == 0 and require_combo:
            pairs = sorted(require_combo - exclude)
            color, shape = pairs[int(rng.integers(len(pairs)))]
            obj = sample_object(rng, cell, shape=shape, color=color, taken=taken)
        else:
            obj = sample_object(rng, cell, exclude=exclude, taken=taken)
        taken.add(obj.combo)
        objects.append(obj)
    return Scene(tuple(objects))
