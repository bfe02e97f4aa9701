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
import json
import time

import numpy as np
import torch
import torch.nn.functional as F

from nexusgen.loading.autoregressive import load_autoregressive
from nexusgen.processing.processor import ImageOnlyProcessor
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


class Pilot:
    def __init__(self, folder: str):
        self.model, tokenizer, image_processor = load_autoregressive(folder, device="cpu")
        self.processor = ImageOnlyProcessor(tokenizer, image_processor, self.model.config)

    def logits_and_labels(self, items):
        encoded = [self.processor.encode([{"role": "user", "content": q}, {"role": "assistant", "content": a}], [])
                   for q, a, _ in items]
        batch = self.processor.pad(encoded, padding_side="right")
        ids, mask = batch["input_ids"], batch["attention_mask"]
        positions = self.model.compute_positions(ids, mask, None)
        hidden = self.model.language_model(self.model.embed_tokens(ids), mask, positions)[0]
        return self.model.vlm.lm_head(hidden[:, :-1]).float(), batch["labels"][:, 1:]

    def loss(self, items) -> torch.Tensor:
        logits, labels = self.logits_and_labels(items)
        rows = labels != -100
        return F.cross_entropy(logits[rows], labels[rows])

    @torch.no_grad()
    def evaluate(self, seed: int, num: int = 400) -> tuple[float, float]:
        rng = np.random.default_rng([seed, 1])
        items = [make_item(rng) for _ in range(num)]
        right = []
        for s in range(0, num, 50):
            logits, labels = self.logits_and_labels(items[s:s + 50])
            answer = labels != -100
            # Every answer token (the end of turn included) is the argmax.
            right += ((logits.argmax(-1) == labels) | ~answer).all(1).tolist()
        return float(np.mean(right)), float(np.mean([1 / n for *_, n in items]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", help="an autoregressive model folder")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=5e-4)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    pilot = Pilot(args.model)
    model = pilot.model.train()
    params = [p for name, p in model.named_parameters() if name.startswith("vlm.model.language_model")
              or "lm_head" in name or "embed_tokens" in name]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    rng, start = np.random.default_rng([args.seed, 0]), time.time()
    for step in range(args.steps + 1):
        if step:
            loss = pilot.loss([make_item(rng) for _ in range(16)])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if step % args.eval_every == 0:
            accuracy, any_object = pilot.evaluate(args.seed)
            print(json.dumps({"step": step, "accuracy": accuracy, "a_random_object": round(any_object, 3),
                              "seconds": round(time.time() - start)}), flush=True)


if __name__ == "__main__":
    main()
