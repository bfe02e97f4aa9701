"""MMBench (Liu et al., ECCV 2024): multiple-choice questions scored by circular evaluation.

Published layout: one TSV per split (`MMBench_DEV_EN.tsv`, `MMBench_DEV_CN.tsv`, ...) with columns `index`,
`question`, `hint`, `A`..`D` (unused options empty), `answer`, `category`, `l2-category`, `image` (base64;
a short number instead refers to the row of that index, which holds the image). Rows with
`index >= 1,000,000` are circular copies of row `index % 1,000,000` (its options rotated); when a file
holds no copies, they are built here: shift k puts option (j + k) mod n at letter j.

Circular evaluation (VLMEvalKit `mcq_circular_eval`): a question counts as right only when every copy is
answered right. The answer letter is extracted as VLMEvalKit's `can_infer` does before any GPT matching:
punctuation `.()[],:;!*#{}` becomes spaces; if exactly one option letter stands alone among the words,
that letter (first in option order); else "Z" when no letter but a lone "Z" does; else, if exactly one
option's text occurs in the lower-cased response, that option. Responses this cannot read count as wrong
(the `exact_matching` policy, no judge model). The test split has no answers: score the dev split.
"""

from __future__ import annotations

import base64
import csv
import string
import sys
from pathlib import Path

from nexusgen.files import atomic_write_text

from ..benchmark_files import require_file
from .questions import Question

CIRCULAR_STRIDE = 1_000_000
LETTERS = tuple(string.ascii_uppercase[:9])
REJECTIONS = ("Sorry, I can't help with images of people yet.", "I can't process this file.",
              "I'm sorry, but without the image provided", "Cannot determine the answer")
PUNCTUATION = ".()[],:;!*#{}"


def _read_tsv(path: Path) -> list[dict]:
    csv.field_size_limit(sys.maxsize)  # base64 images are far longer than csv's default field limit
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    if not rows:
        raise ValueError(f"{path}: no rows")
    missing = [c for c in ("index", "question", "A", "B", "answer", "image") if c not in rows[0]]
    if missing:
        raise ValueError(f"{path}: missing column {missing[0]!r}")
    return rows


def _options(row: dict) -> dict[str, str]:
    return {k: row[k] for k in LETTERS if (row.get(k) or "").strip() and row[k].strip().lower() != "nan"}


def prompt(question: str, options: dict[str, str], hint: str = "") -> str:
    """VLMEvalKit's default multiple-choice prompt."""
    text = f"Hint: {hint}\n" if hint.strip() and hint.strip().lower() != "nan" else ""
    text += f"Question: {question}\nOptions:\n" + "".join(f"{k}. {v}\n" for k, v in options.items())
    return text + "Please select the correct answer from the options above. \n"


def circular_copies(index: int, options: dict[str, str], answer: str) -> list[tuple[int, dict[str, str], str]]:
    """(index + k * 1e6, rotated options, answer letter) for shifts k = 1 .. n-1 of an n-option question."""
    letters, texts = list(options), list(options.values())
    n = len(letters)
    copies = []
    for k in range(1, n):
        rotated = {letters[j]: texts[(j + k) % n] for j in range(n)}
        copies.append((index + k * CIRCULAR_STRIDE, rotated, letters[(letters.index(answer) - k) % n]))
    return copies


def load(data) -> list[Question]:
    """Every row (and built circular copy) of an MMBench TSV (`data`: the file, or a folder with one)."""
    path = Path(data)
    if path.is_dir():
        tsvs = sorted(path.glob("*.tsv"))
        if len(tsvs) != 1:
            raise FileNotFoundError(f"{path}: expected one MMBench .tsv file, found {len(tsvs)}")
        path = tsvs[0]
    path = require_file(path, "MMBench TSV")
    rows = _read_tsv(path)
    by_index = {}
    for number, row in enumerate(rows, start=2):
        try:
            by_index[int(row["index"])] = (number, row)
        except ValueError:
            raise ValueError(f"{path}:{number}: index {row['index']!r} is not an integer") from None
    has_copies = any(i >= CIRCULAR_STRIDE for i in by_index)
    questions = []
    for index, (number, row) in by_index.items():
        where = f"{path}:{number}"
        options = _options(row)
        if row["answer"] not in options:
            raise ValueError(f"{where}: answer {row['answer']!r} is not one of the options {list(options)}")
        image = _image(row, by_index, where)
        variants = [(index, options, row["answer"])]
        if not has_copies:
            variants += circular_copies(index, options, row["answer"])
        for variant, opts, answer in variants:
            meta = {"index": variant, "group": variant % CIRCULAR_STRIDE, "options": opts, "answer": answer,
                    "category": row.get("category", ""), "l2_category": row.get("l2-category", ""),
                    "question": row["question"]}
            questions.append(Question(str(variant), prompt(row["question"], opts, row.get("hint") or ""), (image,),
                                      meta))
    return questions


def _image(row: dict, by_index: dict, where: str) -> bytes:
    cell = row["image"].strip()
    if cell.isdigit() and int(cell) in by_index:  # a reference to the row that carries the image
        cell = by_index[int(cell)][1]["image"].strip()
    try:
        return base64.b64decode(cell, validate=True)
    except ValueError:
        raise ValueError(f"{where}: column 'image' is not base64") from None


def can_infer_option(answer: str, choices: dict[str, str]) -> str | None:
    if any(rejection in answer for rejection in REJECTIONS):
        return "Z"
    for c in PUNCTUATION:
        answer = answer.replace(c, " ")
    words = answer.split()
    found = [c for c in choices if c in words]
    if len(found) == 1:
        return found[0]
    if not found and ("Z" in words) + ("" in words) == 1:
        return "Z"
    return None


def can_infer_text(answer: str, choices: dict[str, str]) -> str | None:
    answer = answer.lower()
    found = [k for k, v in choices.items() if str(v).lower() in answer]
    return found[0] if len(found) == 1 else None


def extract_choice(answer: str, choices: dict[str, str]) -> str | None:
    """The option letter (or "Z") read from a response, or None when only a judge model could tell."""
    return can_infer_option(answer, choices) or can_infer_text(answer, choices)


def score(questions: list[Question], answers: dict[str, str]) -> dict:
    """Circular accuracy overall, per category and per l2-category (fractions in [0, 1]); also the plain
    accuracy of the original (shift 0) rows."""
    groups: dict[int, list[bool]] = {}
    main = {}
    for q in questions:
        right = extract_choice(answers[q.id], q.meta["options"]) == q.meta["answer"]
        groups.setdefault(q.meta["group"], []).append(right)
        if q.meta["index"] < CIRCULAR_STRIDE:
            main[q.meta["group"]] = (q, right)
    hits = {g: all(rights) for g, rights in groups.items()}

    def mean_by(key: str) -> dict[str, float]:
        out: dict[str, list[bool]] = {}
        for g, (q, _) in main.items():
            out.setdefault(q.meta[key], []).append(hits[g])
        return {k: sum(v) / len(v) for k, v in sorted(out.items())}

    return {"circular_accuracy": sum(hits[g] for g in main) / len(main),
            "vanilla_accuracy": sum(right for _, right in main.values()) / len(main),
            "by_category": mean_by("category"), "by_l2_category": mean_by("l2_category"),
            "questions": len(main), "rows": len(questions)}


def write_official(out_dir, questions: list[Question], answers: dict[str, str]) -> None:
    """`out_dir/mmbench_predictions.tsv`: every row with its `prediction` (VLMEvalKit's columns, no images)."""
    header = ["index", "question", *LETTERS[:4], "answer", "category", "l2-category", "prediction"]
    lines = ["\t".join(header)]
    for q in questions:
        opts = q.meta["options"]
        cells = [str(q.meta["index"]), q.meta["question"], *(opts.get(k, "") for k in LETTERS[:4]),
                 q.meta["answer"], q.meta["category"], q.meta["l2_category"], answers[q.id]]
        lines.append("\t".join(" ".join(c.replace("\t", " ").splitlines()) for c in cells))
    atomic_write_text(Path(out_dir) / "mmbench_predictions.tsv", "\n".join(lines) + "\n")
