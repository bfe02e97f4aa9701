"""`nexusgen eval understand`: answer a benchmark's questions (resumable), then score them offline.

Phase 1 appends each batch's answers to `OUT/answers.jsonl` (a rerun asks only the unanswered questions);
phase 2 writes the benchmark's official answer files and `OUT/results.json` (scores, settings, model,
git commit). `score_only` skips phase 1 and needs every answer on disk.
"""

from __future__ import annotations

from pathlib import Path

from nexusgen.batch.runner import run_items
from nexusgen.files import git_sha, json_safe, write_json

from ..harness import DEFAULT_BATCH_SIZE, check_outputs, load_model
from . import mmbench, mme, mmmu, pope
from .questions import AnswerLog, Question

BENCHMARKS = {"mme": mme, "mmbench": mmbench, "mmmu": mmmu, "pope": pope}
DEFAULT_MAX_NEW_TOKENS = 16


def load_questions(benchmark: str, data, *, split: str = "validation", image_root=None) -> list[Question]:
    """The benchmark's questions from its published files (validated, before any model is loaded)."""
    if benchmark not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {benchmark!r}; choose from {', '.join(BENCHMARKS)}")
    if benchmark == "mmmu":
        return mmmu.load(data, split=split)
    if benchmark == "pope":
        return pope.load(data, image_root=image_root)
    return BENCHMARKS[benchmark].load(data)


def answer_questions(model, questions: list[Question], log: AnswerLog, *, batch_size: int = DEFAULT_BATCH_SIZE,
                     max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, progress: bool | None = None) -> dict:
    """Ask the model every question not yet in the log; batches of `batch_size` questions."""
    answered = set(log.read())

    def process(batch: list[Question]) -> None:
        images = [q.load_images() for q in batch]
        entries = [ims[0] if len(ims) == 1 else (ims or None) for ims in images]
        texts = check_outputs(model.understand(entries, [q.prompt for q in batch], max_new_tokens=max_new_tokens),
                              len(batch), str, "understand")
        log.append([(q.id, text) for q, text in zip(batch, texts)])

    return run_items(questions, is_done=lambda q: q.id in answered, process=process, batch_size=batch_size,
                     desc="understand", progress=progress).as_dict()


def run(benchmark: str, questions: list[Question], out_dir, *, model_name: str, score_only: bool = False,
        batch_size: int = DEFAULT_BATCH_SIZE, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        progress: bool | None = None) -> dict:
    """Answer (unless `score_only`) and score; returns and writes `OUT/results.json`.

    Raises:
        ValueError: `score_only` with questions still unanswered.
    """
    out_dir = Path(out_dir)
    log = AnswerLog(out_dir / "answers.jsonl")
    run_summary = None
    if not score_only:
        run_summary = answer_questions(load_model(model_name), questions, log, batch_size=batch_size,
                                       max_new_tokens=max_new_tokens, progress=progress)
    answers = log.read()
    missing = [q.id for q in questions if q.id not in answers]
    if missing:
        raise ValueError(f"{len(missing)} questions have no answer in {log.path} (first: {missing[0]}); "
                         "run without --score-only")
    module = BENCHMARKS[benchmark]
    module.write_official(out_dir, questions, answers)
    results = {"benchmark": benchmark, "scores": module.score(questions, answers), "questions": len(questions),
               "model": model_name, "max_new_tokens": max_new_tokens, "run": run_summary, "git_sha": git_sha()}
    write_json(json_safe(results), out_dir / "results.json")
    return results
