"""What the understanding benchmarks share: a question, and the answer log that makes a run resumable."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from nexusgen.files import append_synced

from ..benchmark_files import image_from_bytes, open_image


@dataclass(frozen=True)
class Question:
    """One model call of a benchmark.

    Args:
        id: unique within the benchmark (the answer log's key).
        prompt: the full text the model sees.
        images: the question's images in order, each a file path or encoded bytes (decoded per batch).
        meta: what the scorer needs (ground truth, category, options, ...).
    """

    id: str
    prompt: str
    images: tuple = ()
    meta: dict = field(default_factory=dict, compare=False)

    def load_images(self) -> list[Image.Image]:
        return [image_from_bytes(im, f"question {self.id}") if isinstance(im, bytes)
                else open_image(im, f"question {self.id}") for im in self.images]


class AnswerLog:
    """`answers.jsonl`: one {"id", "answer"} line per answered question, appended batch by batch.

    A batch's lines are written with one write and fsynced, so a killed run leaves at most a partial last
    line; reading drops it (and anything after it), so those questions are simply asked again.
    """

    def __init__(self, path):
        self.path = Path(path)

    def read(self) -> dict[str, str]:
        answers: dict[str, str] = {}
        if not self.path.is_file():
            return answers
        with open(self.path, "rb") as f:
            data = f.read()
        good = 0
        for line in data.splitlines(keepends=True):
            try:
                row = json.loads(line)
            except ValueError:
                break
            if not line.endswith(b"\n") or not isinstance(row, dict) or not isinstance(row.get("answer"), str):
                break
            answers[str(row.get("id"))] = row["answer"]
            good += len(line)
        if good < len(data):  # cut the torn tail so the next append starts on a clean line
            with open(self.path, "r+b") as f:
                f.truncate(good)
        return answers

    def append(self, rows: list[tuple[str, str]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = "".join(json.dumps({"id": qid, "answer": answer}, ensure_ascii=False) + "\n" for qid, answer in rows)
        append_synced(self.path, text)
