"""Can the LLM learn a relation's last step, the comparison, from text alone? (No images: the places are
stated in the answer, only the yes/no after them is unknown.)

    python scripts/text_comparison_pilot.py AR_FOLDER --form places|numbers|ordered [--steps 800]

The user asks "Is A left of B?"; the assistant answers in one of three forms, and only the yes/no token
after "so" carries information:
  places   "A is in the top left and B is on the right, so yes."  (`tasks.relation_conclusion`)
  numbers  "A is in column 1 and B is in column 3, so yes."       (A first: yes = relation XOR order)
  ordered  "B is in column 1 and A is in column 3, so yes."       (`tasks.relation_comparison`: ordered
           by the relation so that yes = the first number is smaller)
Trains the LLM (AdamW, lr 5e-4, batch 16, per-token CE) and prints JSON lines: the held-out accuracy of
the yes-vs-no logit at that token (400 items) and how often it says yes.
"""

import argparse

import llm_text_pilot
import numpy as np
import torch

from nexusgen.worlds.shapes import language as L
from nexusgen.worlds.shapes.scene import CELLS, COLORS, RELATIONS, SHAPES, ShapeObject, relation_holds
from nexusgen.worlds.shapes.tasks import relation_comparison, relation_conclusion

FORMS = ("places", "numbers", "ordered")


def _object(rng, cell, taken=None) -> ShapeObject:
    while True:
        color, shape = str(rng.choice(list(COLORS))), str(rng.choice(SHAPES))
        if (color, shape) != taken:
            return ShapeObject(shape=shape, color=color, size="medium", row=cell[0], col=cell[1], x=0.5, y=0.5)


def make_item(rng, form: str) -> tuple[str, str, bool]:
    """(question, answer up to and including "so", truth)."""
    first, second = rng.choice(len(CELLS), 2, replace=False)
    a = _object(rng, CELLS[first])
    b = _object(rng, CELLS[second], taken=(a.color, a.shape))
    truth = bool(rng.random() < 0.5)
    options = [r for r in RELATIONS if relation_holds(a, b, r) == truth]
    if not options:
        truth = not truth
        options = [r for r in RELATIONS if relation_holds(a, b, r) == truth]
    relation = options[rng.integers(len(options))]
    question = f"Is {L.reference(a, 'en')} {L.RELATION_WORDS['en'][relation][0]} {L.reference(b, 'en')}?"
    if form == "places":
        answer = relation_conclusion(a, b, truth, "en")
    else:  # "numbers" is the ordered form with the objects always in the question's order
        ordered = relation if form == "ordered" else ("left" if relation in ("left", "right") else "above")
        answer = relation_comparison(a, b, ordered, "en")
    return question[0].upper() + question[1:], answer[: answer.rindex(" so") + 3], truth


class Pilot:
    def __init__(self, folder: str, form: str):
        self.model, self.processor = llm_text_pilot.load(folder)
        self.form = form
        # The tiny tokenizer splits " yes" into " y" + "es" and " no" into " " + "no": the first decides.
        tokenizer = self.processor.tokenizer
        self.yes, self.no = tokenizer.encode(" yes")[0], tokenizer.encode(" no")[0]

    def loss(self, items) -> torch.Tensor:
        return llm_text_pilot.answer_loss(self.model, self.processor, [
            [{"role": "user", "content": q}, {"role": "assistant", "content": f"{said} {'yes' if truth else 'no'}."}]
            for q, said, truth in items])

    @torch.no_grad()
    def evaluate(self, seed: int, num: int = 400) -> dict:
        rng = np.random.default_rng([seed, 1])
        right = says_yes = 0
        for _ in range(0, num, 50):
            items = [make_item(rng, self.form) for _ in range(50)]
            encoded = [self.processor.encode([{"role": "user", "content": q}], [], add_generation_prompt=True,
                                             assistant_prefix=said) for q, said, _ in items]
            hidden = llm_text_pilot.hidden_states(self.model, self.processor.pad(encoded, "left"))
            logits = self.model.vlm.lm_head(hidden[:, -1])
            yes = logits[:, self.yes] > logits[:, self.no]
            right += int((yes == torch.tensor([truth for *_, truth in items])).sum())
            says_yes += int(yes.sum())
        return {"accuracy": right / num, "says_yes": says_yes / num}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", help="an autoregressive model folder")
    parser.add_argument("--form", choices=FORMS, required=True)
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    pilot = Pilot(args.model, args.form)
    llm_text_pilot.train(pilot.model, lambda rng: pilot.loss([make_item(rng, args.form) for _ in range(16)]),
                         lambda: pilot.evaluate(args.seed), steps=args.steps, eval_every=args.eval_every, lr=5e-4,
                         seed=args.seed)


if __name__ == "__main__":
    main()
