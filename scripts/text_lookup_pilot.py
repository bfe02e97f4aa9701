"""Can the LLM learn to find an object by its description and read off its place, from text alone?

    python scripts/text_lookup_pilot.py AR_FOLDER [--steps 1500]

The user states every object's place in reading order and asks where one of them is ("The red circle is in
the top left, the blue square is on the right and the green cross is at the bottom. Where is the blue
square?"); the assistant answers with the place phrase ("on the right"). This is the "where" question with
the image replaced by text that names each place next to its object: the same content-to-place lookup, with
no vision in the way. Trains the LLM (AdamW, lr 5e-4 unless --lr, batch 16, per-token CE) and prints JSON lines: on 400
held-out items of 2-4 objects, how often every answer token is the argmax (teacher forced), and what naming
a random one of the listed objects' places would get.
"""

import argparse

import llm_text_pilot
import numpy as np
import torch
import torch.nn.functional as F

from nexusgen.worlds.shapes import language as L
from nexusgen.worlds.shapes import make_understanding


def make_item(rng) -> tuple[str, str, int]:
    """(user text, answer, number of objects) from a relation item's scene (2-4 objects)."""
    item = make_understanding(rng, "relation", "en")
    objects = item.scene.sorted().objects
    listing = L.join_list([f"{L.reference(o, 'en')} is {L.place_phrase(o.cell, 'en')}" for o in objects], "en")
    target = objects[int(rng.integers(len(objects)))]
    return f"{listing[0].upper()}{listing[1:]}. Where is {L.reference(target, 'en')}?", \
        L.place_phrase(target.cell, "en"), len(objects)


def _conversations(items) -> list[list[dict]]:
    return [[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a, _ in items]


@torch.no_grad()
def evaluate(model, processor, seed: int, num: int = 400) -> dict:
    rng = np.random.default_rng([seed, 1])
    items = [make_item(rng) for _ in range(num)]
    right = []
    for s in range(0, num, 50):
        hidden, labels = llm_text_pilot.teacher_forced(model, processor, _conversations(items[s:s + 50]))
        answer = labels != -100
        # Every answer token (the end of turn included) is the argmax.
        right += ((model.vlm.lm_head(hidden).argmax(-1) == labels) | ~answer).all(1).tolist()
    return {"accuracy": float(np.mean(right)), "a_random_object": round(float(np.mean([1 / n for *_, n in items])), 3)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", help="an autoregressive model folder")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=5e-4)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    model, processor = llm_text_pilot.load(args.model)

    def batch_loss(rng):
        hidden, labels = llm_text_pilot.teacher_forced(model, processor, _conversations([make_item(rng)
                                                                                        for _ in range(16)]))
        rows = labels != -100
        # The head over every position, then the answers' rows (not `answer_loss`'s rows first): the same
        # sums as the runs logged in training/shapes-mini/provenance/text_lookup_*.jsonl, to the last bit.
        return F.cross_entropy(model.vlm.lm_head(hidden).float()[rows], labels[rows])

    llm_text_pilot.train(model, batch_loss, lambda: evaluate(model, processor, args.seed), steps=args.steps,
                         eval_every=args.eval_every, lr=args.lr, seed=args.seed)


if __name__ == "__main__":
    main()
