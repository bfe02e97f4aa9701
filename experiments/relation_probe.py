"""Where a model's relation answers fail: the two lookups ("where is A?") or the comparison.

    python experiments/relation_probe.py MODEL [--num 200] [--consistency 160] [--chain 112]

Prints JSON: exact "where" accuracy (with the row and the column alone; how many wrong answers name the
place of another object of the scene rather than an empty cell; the accuracy for an object alone in its
scene and among several, next to what naming a random one of the scene's objects would get) and relation
accuracy on `--num` test-split items each (70% English), then, on `--consistency` English relation items,
how often the model finds both objects when asked where each is, how often its yes/no is right on exactly
those items, and how often it says yes at all (docs/training-log.md, the relation pilots).
Items whose question names an object with a synonym the canonical reference does not match are left out
of the second part.
With `--chain N`, for a model that answers "A is in column 1 and B is in column 3, so yes." (trained with
ordered relations, `reasoning_steps="ordered"`): on N English relation items, the share of answers in that
form, how many state both numbers right, and how many end in the yes/no that the numbers they state imply
(the comparison alone, right or wrong numbers).
"""

import argparse
import json
import re

import numpy as np

from nexusgen import NexusGen
from nexusgen.eval.metrics import answer_matches
from nexusgen.worlds.shapes import language as L
from nexusgen.worlds.shapes import make_understanding, render_scene

CELL_OF_PLACE = {w: cell for lang in L.PLACE_WORDS.values() for cell, words in lang.items() for w in words}
BATCH = 16


def ask(model, scenes, questions, max_new_tokens=128):
    answers = []
    for s in range(0, len(questions), BATCH):
        answers += model.understand([render_scene(sc, 64) for sc in scenes[s:s + BATCH]],
                                    questions[s:s + BATCH], max_new_tokens=max_new_tokens)
    return answers


def _cell(answer: str):
    return CELL_OF_PLACE.get(answer.strip().rstrip(".").lower())


def where_and_relation(model, num: int) -> dict:
    out = {}
    for qtype in ("where", "relation"):
        items = [make_understanding(np.random.default_rng([777, i]), qtype, "en" if i % 10 < 7 else "zh")
                 for i in range(num)]
        answers = ask(model, [it.scene for it in items], [it.question for it in items])
        out[qtype] = float(np.mean([answer_matches(a, it.answer, it.qtype) for a, it in zip(answers, items)]))
        if qtype == "where":  # which axis the wrong answers miss, and whose place they name
            got, want = [_cell(a) for a in answers], [CELL_OF_PLACE[it.answer] for it in items]
            for axis, name in ((0, "where_row"), (1, "where_col")):
                out[name] = float(np.mean([g is not None and g[axis] == w[axis] for g, w in zip(got, want)]))
            wrong = [(g, it) for g, w, it in zip(got, want, items) if g != w]
            out["where_wrong"] = len(wrong)
            out["where_wrong_at_another_object"] = sum(
                any(tuple(o.cell) == g for o in it.scene.objects) for g, it in wrong)
            # Alone in the scene, or one of several: does the description pick the object, or would any
            # object's place do as well (the share a random pick of one of the scene's objects gets)?
            several = [(g == w, 1 / len(it.scene)) for g, w, it in zip(got, want, items) if len(it.scene) > 1]
            out["where_alone"] = float(np.mean([g == w for g, w, it in zip(got, want, items) if len(it.scene) == 1]))
            out["where_among_several"] = float(np.mean([right for right, _ in several]))
            out["where_among_several_any_object"] = float(np.mean([chance for _, chance in several]))
    return out


def _named_pair(item):
    """(A, B) of a relation question, found by their canonical references in it; None if not both found."""
    question = item.question.lower()
    starts = [(question.find(L.reference(o, "en")), i) for i, o in enumerate(item.scene.objects)]
    found = sorted((start, i) for start, i in starts if start >= 0)
    return None if len(found) < 2 else (item.scene.objects[found[0][1]], item.scene.objects[found[-1][1]])


def lookup_consistency(model, num: int) -> dict:
    items = [make_understanding(np.random.default_rng([778, i]), "relation", "en") for i in range(num)]
    items = [(it, pair) for it in items if (pair := _named_pair(it)) is not None]
    scenes = [it.scene for it, _ in items]
    relation = ask(model, scenes, [it.question for it, _ in items])
    where = [ask(model, scenes, [f"Where is {L.reference(pair[k], 'en')}?" for _, pair in items], 8) for k in (0, 1)]
    both = np.array([_cell(wa) == tuple(a.cell) and _cell(wb) == tuple(b.cell)
                     for wa, wb, (_, (a, b)) in zip(*where, items)])
    right = np.array([answer_matches(r, it.answer, it.qtype) for r, (it, _) in zip(relation, items)])
    return {"items": len(items), "both_lookups_right": float(both.mean()),
            "relation_when_both_right": float(right[both].mean()) if both.any() else None,
            "relation_otherwise": float(right[~both].mean()) if (~both).any() else None,
            "says_yes": float(np.mean([_last_word(r) == "yes" for r in relation]))}


def _last_word(answer: str) -> str:
    """The yes/no of a direct answer ("Yes.") or of a chain ("..., so no.")."""
    words = answer.strip().rstrip(".").lower().split()
    return words[-1] if words else ""


ORDERED = re.compile(r"(.+?) is in (column|row) (\d) and (.+?) is in (column|row) (\d), so (yes|no)\.?$")


def chain_consistency(model, num: int) -> dict:
    items = [make_understanding(np.random.default_rng([778, i]), "relation", "en") for i in range(num)]
    answers = ask(model, [it.scene for it in items], [it.question for it in items])
    parsed = [step for it, answer in zip(items, answers) if (step := _ordered_step(it, answer.strip())) is not None]
    return {"chain_items": num, "chain_parsed": len(parsed) / num,
            "chain_both_places_right": sum(right for right, _ in parsed),
            "chain_consistent_with_stated_places": sum(consistent for _, consistent in parsed)}


def _ordered_step(item, answer: str) -> tuple[bool, bool] | None:
    """(both numbers right, yes/no consistent with them) of "A is in column 1 and B is in column 3, so yes."
    (`reasoning_steps="ordered"`: yes exactly when the first number is smaller); None for another form."""
    m = ORDERED.match(answer)
    if not m:
        return None
    said = {L.reference(o, "en"): o for o in item.scene.objects}
    a, b = said.get(m.group(1).lower()), said.get(m.group(4).lower())
    axis_a, axis_b = (1 if m.group(k) == "column" else 0 for k in (2, 5))
    n_a, n_b = int(m.group(3)), int(m.group(6))
    right = a is not None and b is not None and n_a == a.cell[axis_a] + 1 and n_b == b.cell[axis_b] + 1
    return right, (m.group(7) == "yes") == (n_a < n_b)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a model folder or name")
    parser.add_argument("--num", type=int, default=200, help="where and relation items each")
    parser.add_argument("--consistency", type=int, default=160, help="English relation items to probe")
    parser.add_argument("--chain", type=int, default=0, help="English relation items answered as a chain")
    args = parser.parse_args()
    model = NexusGen.from_pretrained(args.model, progress=False)
    chain = chain_consistency(model, args.chain) if args.chain else {}
    lookups = lookup_consistency(model, args.consistency) if args.consistency else {}
    print(json.dumps({**where_and_relation(model, args.num), **lookups, **chain}))


if __name__ == "__main__":
    main()
