"""MMMU (Yue et al. 2023): college-level questions over 30 subjects, multiple-choice and open.

Published layout: the Hugging Face dataset `MMMU/MMMU`, one folder per subject with one parquet file per
split (`Accounting/validation-00000-of-00001.parquet`), columns `id` ("validation_Accounting_1"),
`question` (with `<image 1>` placeholders), `options` (a Python list literal), `answer`, `question_type`
("multiple-choice" / "open") and `image_1` .. `image_7`. The test split's answers are hidden (scored by
the organisers' server): score `validation` (900 questions) or `dev`.

Prompts are the official `construct_prompt` ones; scoring is the official `eval_utils.py`:
`parse_multi_choice_response` ("(A)" forms first, then a lone letter, then, for responses of more than 5
words, option texts; the last mention wins; nothing found: a random letter from a generator seeded 42,
drawn in question order as the official module-level seed does) and `parse_open_response` (key
sub-responses after "is", "so", "therefore", "=" ..., numbers extracted and rounded to 2 decimals) with
`eval_open`. The export writes `mmmu_output.json` ({id: letter or response}) for `main_eval_only.py`.
"""

from __future__ import annotations

import ast
import json
import random
import re
from pathlib import Path

import numpy as np

from nexusgen.files import atomic_write_text

from ..benchmark_files import find_parquet, read_parquet_rows, text_field
from .questions import Question

COLUMNS = ["id", "question", "options", "answer", "question_type"]
IMAGE_COLUMNS = tuple(f"image_{k}" for k in range(1, 8))
MC_PROMPT = "{}\n\n{}\n\nAnswer with the option's letter from the given choices directly."
OPEN_PROMPT = "{}\n\nAnswer the question using a single word or phrase."
FALLBACK_SEED = 42


def _literal_list(text: str, where: str, field: str) -> list[str]:
    try:
        value = ast.literal_eval(text) if isinstance(text, str) else text
    except (ValueError, SyntaxError):
        raise ValueError(f"{where}: \"{field}\" is not a list literal") from None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{where}: \"{field}\" must be a list of strings")
    return value


def load(data, split: str = "validation") -> list[Question]:
    """Every question of the split's parquet files under `data`."""
    paths = [p for p in find_parquet(data, "MMMU dataset folder") if p.name.startswith(f"{split}-")]
    if not paths:
        raise FileNotFoundError(f"no {split}-*.parquet files under {data}")
    questions = []
    for where, row in read_parquet_rows(paths, COLUMNS, optional=IMAGE_COLUMNS):
        qid, question = text_field(row, "id", where), text_field(row, "question", where)
        kind = text_field(row, "question_type", where)
        answer = text_field(row, "answer", where)
        cells = [row[c] for c in IMAGE_COLUMNS]
        images = tuple(bytes(c["bytes"]) for c in cells if isinstance(c, dict) and c.get("bytes"))
        if kind == "multiple-choice":
            options = _literal_list(row["options"], where, "options")
            letters = [chr(ord("A") + i) for i in range(len(options))]
            text = MC_PROMPT.format(question, "".join(f"({c}) {o}\n" for c, o in zip(letters, options)))
            meta = {"kind": kind, "answer": answer, "choices": dict(zip(letters, options))}
        elif kind == "open":
            gold = _literal_list(answer, where, "answer") if answer.strip().startswith("[") else answer
            text, meta = OPEN_PROMPT.format(question), {"kind": kind, "answer": gold}
        else:
            raise ValueError(f"{where}: question_type must be 'multiple-choice' or 'open', got {kind!r}")
        questions.append(Question(qid, text, images, meta))
    return questions


def parse_multi_choice_response(response: str, choices: dict[str, str], rng: random.Random) -> str:
    """The option letter of a response (official rules; `rng` draws when nothing is found)."""
    for char in [",", ".", "!", "?", ";", ":", "'"]:
        response = response.strip(char)
    response = " " + response + " "
    bracketed = [c for c in choices if f"({c})" in response]
    candidates = bracketed or [c for c in choices if f" {c} " in response]
    by_text = False
    if not candidates and len(response.split()) > 5:
        candidates = [c for c, text in choices.items() if text.lower() in response.lower()]
        by_text = True
    if not candidates:
        return rng.choice(list(choices))
    if len(candidates) == 1:
        return candidates[0]
    if by_text:
        starts = [response.lower().rfind(choices[c].lower()) for c in candidates]
    elif bracketed:
        starts = [response.rfind(f"({c})") for c in candidates]
    else:
        starts = [response.rfind(f" {c} ") for c in candidates]
    return candidates[int(np.argmax(starts))]


def _is_number(text: str) -> bool:
    try:
        float(text.replace(",", ""))
        return True
    except ValueError:
        return False


def normalize(text: str) -> list:
    """A number rounded to 2 decimals, or the lower-cased string (padded when one character long)."""
    text = text.strip()
    if _is_number(text):
        return [round(float(text.replace(",", "")), 2)]
    text = text.lower()
    return [" " + text, text + " "] if len(text) == 1 else [text]


def extract_numbers(text: str) -> list[str]:
    with_commas = re.findall(r"-?\b\d{1,3}(?:,\d{3})+\b", text)
    scientific = re.findall(r"-?\d+(?:\.\d+)?[eE][+-]?\d+", text)
    simple = re.findall(r"-?(?:\d+\.\d+|\.\d+|\d+\b)(?![eE][+-]?\d+)(?![,\d])", text)
    return with_commas + scientific + simple


def _key_responses(response: str) -> list[str]:
    response = response.strip().strip(".").lower()
    parts = re.split(r"\.\s(?=[A-Z])|\n", response)
    indicators = ["could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result "]
    keys = []
    for index, part in enumerate(parts):
        if index == len(parts) - 1:
            indicators = indicators + ["="]
        shortest = None
        for indicator in indicators:
            if indicator in part:
                tail = part.split(indicator)[-1].strip()
                if not shortest or len(tail) < len(shortest):
                    shortest = tail
        if shortest and shortest.strip() not in [":", ",", ".", "!", "?", ";", ":", "'"]:
            keys.append(shortest)
    return keys or [response]


def parse_open_response(response: str) -> list:
    """Candidate answers of an open response: key sub-responses and the numbers in them, normalised."""
    keys = _key_responses(response)
    candidates = keys + [n for key in keys for n in extract_numbers(key)]
    return list({v: None for c in candidates for v in normalize(c)})


def eval_open(gold, candidates: list) -> bool:
    golds = [v for g in (gold if isinstance(gold, list) else [gold]) for v in normalize(g)]
    for pred in candidates:
        if isinstance(pred, str):
            if any(isinstance(g, str) and g in pred for g in golds):
                return True
        elif pred in golds:
            return True
    return False


def parse(questions: list[Question], answers: dict[str, str]) -> dict[str, object]:
    """id -> parsed prediction: a letter (multiple-choice) or candidate list (open), in question order."""
    rng = random.Random(FALLBACK_SEED)
    return {q.id: parse_multi_choice_response(answers[q.id], q.meta["choices"], rng) if q.meta["kind"] != "open"
            else parse_open_response(answers[q.id]) for q in questions}


def score(questions: list[Question], answers: dict[str, str]) -> dict:
    """Accuracy overall and per subject (the id's middle part), as fractions in [0, 1]."""
    parsed = parse(questions, answers)
    right, by_subject = {}, {}
    for q in questions:
        pred = parsed[q.id]
        right[q.id] = eval_open(q.meta["answer"], pred) if q.meta["kind"] == "open" else pred == q.meta["answer"]
        subject = "_".join(q.id.split("_")[1:-1]) or q.id
        by_subject.setdefault(subject, []).append(right[q.id])
    return {"accuracy": sum(right.values()) / len(right),
            "by_subject": {s: sum(v) / len(v) for s, v in sorted(by_subject.items())},
            "questions": len(questions)}


def write_official(out_dir, questions: list[Question], answers: dict[str, str]) -> None:
    """`out_dir/mmmu_output.json`: {id: letter} for multiple-choice, {id: response} for open questions."""
    parsed = parse(questions, answers)
    output = {q.id: parsed[q.id] if q.meta["kind"] != "open" else answers[q.id] for q in questions}
    atomic_write_text(Path(out_dir) / "mmmu_output.json", json.dumps(output, indent=2, ensure_ascii=False) + "\n")
