"""How a model counts: accuracy on colour, shape and total count questions, and by how much it misses.

    python experiments/count_probe.py MODEL [--num 300]

Prints JSON: on `--num` count questions (70% English), the accuracy per kind of count (total, colour,
shape; read from the question) and how many wrong answers are one short or one over (docs/training-log.md,
twelfth and fourteenth sessions: colour and shape counts went wrong mostly by one).
"""

import argparse
import collections
import json

import numpy as np

from nexusgen import NexusGen
from nexusgen.eval.metrics import answer_matches, final_answer, normalise_answer
from nexusgen.worlds.shapes import language as L
from nexusgen.worlds.shapes import make_understanding, render_scene

BATCH = 16


def _kind(question: str, lang: str) -> str:
    q = question.lower()
    if any(w in q for words in L.COLOR_WORDS[lang].values() for w in words):
        return "color"
    if any(w in q for words in L.SHAPE_WORDS[lang].values() for w in words):
        return "shape"
    return "total"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a model folder or name")
    parser.add_argument("--num", type=int, default=300, help="count questions")
    args = parser.parse_args()
    model = NexusGen.from_pretrained(args.model)
    items = [make_understanding(np.random.default_rng([779, i]), "count", "en" if i % 10 < 7 else "zh")
             for i in range(args.num)]
    answers = []
    for start in range(0, len(items), BATCH):
        batch = items[start:start + BATCH]
        answers += model.understand([render_scene(it.scene, 64) for it in batch], [it.question for it in batch])
    right, misses = collections.defaultdict(list), collections.Counter()
    for item, answer in zip(items, answers):
        ok = answer_matches(answer, item.answer, "count")
        right[_kind(item.question, item.lang)].append(ok)
        said = normalise_answer(final_answer(answer))
        if not ok and said.isdigit():
            misses[{-1: "one_short", 1: "one_over"}.get(int(said) - int(item.answer), "other")] += 1
    out = {"items": len(items), "accuracy": float(np.mean([ok for oks in right.values() for ok in oks]))}
    out.update({f"{kind}": round(float(np.mean(oks)), 3) for kind, oks in sorted(right.items())})
    out.update(misses)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
