"""MME (Fu et al. 2023): yes/no questions, two per image, 10 perception and 4 cognition subtasks.

Published layout (`MME_Benchmark_release_version/`), one folder per subtask:

    artwork|celebrity|landmark|posters|scene/images/<name>.jpg + questions_answers_YN/<name>.txt
    every other subtask/<name>.jpg|png + <name>.txt side by side

Each .txt holds the image's two questions, one `question<TAB>Yes|No` a line. The official scorer
(`eval_tool/calculation.py`) reads one file per subtask, `<subtask>.txt`, of lines
`image<TAB>question<TAB>ground truth<TAB>response`, the two questions of an image on consecutive lines;
the export writes those (`OUT/mme/`) and `score` computes what it prints: the response, lower-cased, is
"yes"/"no" when it is exactly that, else "yes" if its first 4 characters contain "yes", else "no" if they
contain "no", else "other"; accuracy = right answers / questions x 100; accuracy+ = images with both
answers right / images x 100; subtask score = accuracy + accuracy+; perception and cognition = sums.
"""

from __future__ import annotations

from pathlib import Path

from nexusgen.files import atomic_write_text

from ..benchmark_files import require_dir
from .questions import Question

PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork",
              "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
IMAGE_SUFFIXES = (".jpg", ".png", ".jpeg")


def _pairs(task_dir: Path) -> list[tuple[Path, Path]]:
    """(question file, image) pairs of one subtask folder, sorted by name."""
    nested = task_dir / "questions_answers_YN"
    text_dir, image_dir = (nested, task_dir / "images") if nested.is_dir() else (task_dir, task_dir)
    pairs = []
    for text in sorted(text_dir.glob("*.txt")):
        image = next((image_dir / (text.stem + s) for s in IMAGE_SUFFIXES if (image_dir / (text.stem + s)).is_file()),
                     None)
        if image is None:
            raise FileNotFoundError(f"{text}: no image {text.stem}.jpg/.png in {image_dir}")
        pairs.append((text, image))
    return pairs


def load(data) -> list[Question]:
    """Both questions of every image of every subtask present under `data`.

    Raises:
        ValueError: a question file without exactly two `question<TAB>Yes|No` lines.
        FileNotFoundError: no subtask folder at all, or an image missing.
    """
    data = require_dir(data, "MME folder")
    questions = []
    for task in PERCEPTION + COGNITION:
        if not (data / task).is_dir():
            continue
        for text, image in _pairs(data / task):
            lines = [line for line in text.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
            if len(lines) != 2:
                raise ValueError(f"{text}: expected 2 question lines, got {len(lines)}")
            for number, line in enumerate(lines):
                question, _, truth = line.rpartition("\t")
                if not question or truth.strip().lower() not in ("yes", "no"):
                    raise ValueError(f"{text}:{number + 1}: expected 'question<TAB>Yes|No'")
                questions.append(Question(f"{task}/{text.stem}/{number}", question, (image,),
                                          {"task": task, "image": image.name, "question": question,
                                           "truth": truth.strip()}))
    if not questions:
        raise FileNotFoundError(f"no MME subtask folders (e.g. {data / 'existence'}) in {data}")
    return questions


def response_line(answer: str) -> str:
    """The response as it stands in the official result file: one line, no tabs."""
    return " ".join(answer.replace("\t", " ").splitlines())


def parse_answer(answer: str) -> str:
    """The official parsing: "yes", "no" or "other"."""
    answer = response_line(answer).lower()
    if answer in ("yes", "no"):
        return answer
    prefix = answer[:4]
    return "yes" if "yes" in prefix else "no" if "no" in prefix else "other"


def score(questions: list[Question], answers: dict[str, str]) -> dict:
    """Per-subtask accuracy, accuracy+ and score; perception / cognition totals (official arithmetic)."""
    by_task: dict[str, dict[str, list[bool]]] = {}
    for q in questions:
        right = parse_answer(answers[q.id]) == q.meta["truth"].lower()
        by_task.setdefault(q.meta["task"], {}).setdefault(q.meta["image"], []).append(right)
    subtasks = {}
    for task, images in by_task.items():
        flat = [r for rights in images.values() for r in rights]
        accuracy = 100.0 * sum(flat) / len(flat)
        accuracy_plus = 100.0 * sum(all(rights) for rights in images.values()) / len(images)
        subtasks[task] = {"accuracy": accuracy, "accuracy_plus": accuracy_plus, "score": accuracy + accuracy_plus,
                          "images": len(images)}
    return {"perception": sum(s["score"] for t, s in subtasks.items() if t in PERCEPTION),
            "cognition": sum(s["score"] for t, s in subtasks.items() if t in COGNITION),
            "subtasks": subtasks,
            "missing_subtasks": [t for t in PERCEPTION + COGNITION if t not in subtasks]}


def write_official(out_dir, questions: list[Question], answers: dict[str, str]) -> None:
    """`out_dir/mme/<subtask>.txt` in the layout `eval_tool/calculation.py --results_dir` reads."""
    lines: dict[str, list[str]] = {}
    for q in questions:
        row = (q.meta["image"], q.meta["question"], q.meta["truth"], response_line(answers[q.id]))
        lines.setdefault(q.meta["task"], []).append("\t".join(row) + "\n")
    for task, rows in lines.items():
        atomic_write_text(Path(out_dir) / "mme" / f"{task}.txt", "".join(rows))
