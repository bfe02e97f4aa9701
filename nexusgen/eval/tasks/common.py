"""What the ShapesWorld task modules share: the evaluation's random streams and the item plan."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nexusgen.tasks import EDIT, GENERATE, UNDERSTAND
from nexusgen.worlds.shapes.dataset import STREAM_DOMAINS

TASK_IDS = {UNDERSTAND: 1, GENERATE: 2, EDIT: 3}
"""Each task's tag in the evaluation streams (changing one changes the benchmark's items)."""


def eval_rng(seed: int, task: str, index: int, stream: int = 0) -> np.random.Generator:
    """Item `index` of `task`: disjoint from every training stream (different domain tag).

    `stream` separates independent draws for one item (0: the item's content, 1: its language).
    """
    return np.random.default_rng([STREAM_DOMAINS["eval"], int(seed), TASK_IDS[task], int(index), int(stream)])


@dataclass(frozen=True)
class Slot:
    """What item i of a task must be: its type, language and split."""

    type: str
    lang: str
    compositional: bool


def plan(rng_for, num: int, types: tuple[str, ...], compositional_types: tuple[str, ...], *,
         compositional_fraction: float, zh_fraction: float) -> list[Slot]:
    """Types cycle in order (balanced); the last `compositional_fraction` of items are compositional.

    Args:
        rng_for: index -> generator, drawn once per item for its language.
        num: number of items.
        types / compositional_types: the types cycled through by each split.
    """
    if num < 0:
        raise ValueError(f"num must be >= 0, got {num}")
    num_comp = int(round(num * compositional_fraction))
    slots = []
    for i in range(num):
        comp = i >= num - num_comp
        pool = compositional_types if comp else types
        k = i - (num - num_comp) if comp else i
        lang = "zh" if rng_for(i).random() < zh_fraction else "en"
        slots.append(Slot(pool[k % len(pool)], lang, comp))
    return slots


def split_means(records: list[dict], key: str, group: str) -> dict[str, float]:
    """Mean of `key` per value of `group` over the records (NaN-free groups only)."""
    out: dict[str, list] = {}
    for r in records:
        if r.get(key) is not None:
            out.setdefault(r[group], []).append(float(r[key]))
    return {g: float(np.mean(v)) for g, v in sorted(out.items())}
