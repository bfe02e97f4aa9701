"""POPE (Li et al. 2023): "Is there a <object> in the image?" on COCO val2014, three negative-sampling splits.

Published layout (RUCAIBox/POPE `output/coco/`): `coco_pope_random.json`, `coco_pope_popular.json`,
`coco_pope_adversarial.json` (also `aokvqa_pope_*`, `gqa_pope_*`), each JSON Lines of
`{"question_id": 1, "image": "COCO_val2014_000000310196.jpg", "text": "Is there a snowboard in the image?",
"label": "yes"}`; the images come from COCO val2014 (`--image-root`, default: next to the files).

Scoring is the official `evaluate.py`: keep the response up to its first "."; drop commas; split on
spaces; "no" if the words hold "No", "no" or "not", else "yes". Positive = "yes": accuracy, precision,
recall, F1 and the yes-ratio (share of "yes" predictions), per split (a split with no "yes" prediction
has precision 0 where the official script divides by zero). The export writes `pope/<split>_answers.jsonl`
({"question_id", "answer"} in the label file's order), the official script's answer file.
"""

from __future__ import annotations

import json
from pathlib import Path

from nexusgen.files import atomic_write_text

from ..benchmark_files import read_jsonl, require_dir, text_field
from .questions import Question

SPLIT_SUFFIX = "_pope_"


def load(data, image_root=None) -> list[Question]:
    """Every question of every `*_pope_*.json` file in `data` (split name = file stem)."""
    data = require_dir(data, "POPE folder")
    image_root = require_dir(image_root, "POPE image folder") if image_root else data
    files = sorted(p for p in data.glob("*.json") if SPLIT_SUFFIX in p.stem)
    if not files:
        raise FileNotFoundError(f"no POPE question files (e.g. coco_pope_random.json) in {data}")
    questions = []
    for path in files:
        for number, row in read_jsonl(path, "POPE question file"):
            where = f"{path}:{number}"
            label = text_field(row, "label", where)
            if label not in ("yes", "no"):
                raise ValueError(f"{where}: \"label\" must be 'yes' or 'no', got {label!r}")
            qid = text_field(row, "question_id", where)
            image = image_root / text_field(row, "image", where)
            if not image.is_file():
                raise FileNotFoundError(f"{where}: image not found: {image}")
            questions.append(Question(f"{path.stem}/{qid}", text_field(row, "text", where), (image,),
                                      {"split": path.stem, "question_id": row["question_id"], "label": label}))
    return questions


def parse_answer(answer: str) -> str:
    """The official parsing: "yes" or "no"."""
    if answer.find(".") != -1:
        answer = answer.split(".")[0]
    words = answer.replace(",", "").split(" ")
    return "no" if "No" in words or "not" in words or "no" in words else "yes"


def metrics(predictions: list[str], labels: list[str]) -> dict:
    """Accuracy, precision, recall, F1 ("yes" positive) and yes-ratio of parsed predictions."""
    pairs = list(zip(predictions, labels))
    tp = sum(p == "yes" and t == "yes" for p, t in pairs)
    fp = sum(p == "yes" and t == "no" for p, t in pairs)
    tn = sum(p == "no" and t == "no" for p, t in pairs)
    fn = sum(p == "no" and t == "yes" for p, t in pairs)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": (tp + tn) / len(pairs), "precision": precision, "recall": recall, "f1": f1,
            "yes_ratio": predictions.count("yes") / len(predictions), "tp": tp, "fp": fp, "tn": tn, "fn": fn,
            "questions": len(pairs)}


def score(questions: list[Question], answers: dict[str, str]) -> dict:
    """Per-split metrics and their means over the splits."""
    splits: dict[str, tuple[list, list]] = {}
    for q in questions:
        preds, labels = splits.setdefault(q.meta["split"], ([], []))
        preds.append(parse_answer(answers[q.id]))
        labels.append(q.meta["label"])
    by_split = {s: metrics(p, t) for s, (p, t) in sorted(splits.items())}
    means = {f"{k}_mean": sum(m[k] for m in by_split.values()) / len(by_split) for k in ("accuracy", "f1")}
    return {**means, "by_split": by_split}


def write_official(out_dir, questions: list[Question], answers: dict[str, str]) -> None:
    lines: dict[str, list[str]] = {}
    for q in questions:
        row = {"question_id": q.meta["question_id"], "question": q.prompt, "answer": answers[q.id]}
        lines.setdefault(q.meta["split"], []).append(json.dumps(row, ensure_ascii=False) + "\n")
    for split, rows in lines.items():
        atomic_write_text(Path(out_dir) / "pope" / f"{split}_answers.jsonl", "".join(rows))
