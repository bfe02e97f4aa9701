"""`nexusgen eval shapes`: the ShapesWorld benchmark (understanding, generation, editing).

Two phases, so scoring can be rerun on saved artifacts without the model (`--score-only`):

1. generate: build the items from the evaluation's own random streams (disjoint from every training
   stream; the last `compositional_fraction` of each task shows held-out (colour, shape) pairs), write
   `eval_set.json`, then run the model in batches and save its artifacts:
       DIR/understanding/inputs/*.png, DIR/understanding/answers.jsonl
       DIR/generation/*.png
       DIR/editing/source/*.png, DIR/editing/output/*.png
2. score: read `eval_set.json` and the artifacts, parse images with the detector, and write
   DIR/samples.jsonl (one record per item), DIR/results.json (schema of docs/architecture.md §3, plus extra keys
   such as per-section "compositional") and DIR/failures.png (contact sheet of the worst failures).

A run writes into a staging folder next to DIR and replaces DIR with it when everything is scored, so a
failed run (a full disk, a model error) leaves DIR as it was, and a new run never leaves an earlier run's
images next to its results. DIR must therefore be new, empty, or a folder that holds only what a run writes
(`OWNED`: an earlier run's output): anything else in it is refused before the model runs.

Scores are ShapesWorld scores: synthetic and GenEval-*style*, not comparable with published GenEval or
ImgEdit numbers.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from nexusgen.files import (
    atomic_folder,
    atomic_save_image,
    check_output_folder,
    git_sha,
    json_safe,
    write_json,
    write_jsonl,
)
from nexusgen.processing.contact_sheet import contact_sheet
from nexusgen.tasks import EDIT, GENERATE, TASKS, UNDERSTAND
from nexusgen.worlds.shapes import EditItem, GenerateItem, UnderstandItem

from .harness import DEFAULT_BATCH_SIZE
from .tasks import editing, generation, understanding

EVAL_SET = "eval_set.json"
FORMAT_VERSION = 1
TASK_MODULES = {UNDERSTAND: (understanding, UnderstandItem), GENERATE: (generation, GenerateItem),
                EDIT: (editing, EditItem)}
"""Each task's module (build, run, score) and item type. A task's files and results.json section keep the
benchmark's names (`module.SECTION`: understanding, generation, editing)."""
SECTION_TASKS = {module.SECTION: task for task, (module, _) in TASK_MODULES.items()}
NOTE = "ShapesWorld scores (synthetic, GenEval-style); not comparable with published GenEval/ImgEdit numbers."
OWNED = frozenset({EVAL_SET, "samples.jsonl", "results.json", "failures.png",
                   *(module.SECTION for module, _ in TASK_MODULES.values())})
"""What a run writes into DIR; a DIR holding anything else is not replaced."""


@dataclass
class ShapesEvalConfig:
    """What `nexusgen eval shapes` evaluates."""

    num: int = 100
    """Items per task."""
    seed: int = 1000
    """Seed of the evaluation streams (and of the model's sampling)."""
    decoder: str = "editing"
    """Decoder used for edits: "editing" or "generation"."""
    prompt_style: str = "short"
    """Generation prompts: "short" (GenEval-like) or "detailed" (every object pinned down)."""
    zh_fraction: float = 0.25
    """Fraction of items in Chinese."""
    compositional_fraction: float = 0.2
    """Fraction of items per task that show a held-out (colour, shape) pair, reported separately."""
    batch_size: int = DEFAULT_BATCH_SIZE
    max_new_tokens: int = 128
    tasks: tuple[str, ...] = TASKS
    """Subset of understand, generate, edit (the section names understanding, generation, editing are
    accepted too)."""
    worst: int = 9
    """Failures per task on the contact sheet."""

    def __post_init__(self):
        if self.num < 1:
            raise ValueError(f"--num must be >= 1, got {self.num}")
        if self.seed < 0:
            raise ValueError(f"--seed must be >= 0, got {self.seed}")
        if self.decoder not in ("editing", "generation"):
            raise ValueError(f"decoder must be 'editing' or 'generation', got {self.decoder!r}")
        if self.prompt_style not in ("short", "detailed"):
            raise ValueError(f"prompt_style must be 'short' or 'detailed', got {self.prompt_style!r}")
        self.tasks = tuple(SECTION_TASKS.get(task, task) for task in self.tasks)
        unknown = [t for t in self.tasks if t not in TASK_MODULES]
        if unknown or not self.tasks:
            raise ValueError(f"tasks must be a non-empty subset of {TASKS}, got {self.tasks}")
        for name in ("zh_fraction", "compositional_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")


def build_items(config: ShapesEvalConfig) -> dict[str, list]:
    """The evaluation items of every task in `config.tasks` (deterministic in config), by task."""
    common = dict(compositional_fraction=config.compositional_fraction, zh_fraction=config.zh_fraction)
    items = {}
    for task in config.tasks:
        module, _ = TASK_MODULES[task]
        extra = {"prompt_style": config.prompt_style} if task == GENERATE else {}
        items[task] = module.build(config.num, config.seed, **common, **extra)
    return items


def generate_artifacts(model, out_dir, config: ShapesEvalConfig) -> dict[str, list]:
    """Phase 1: write the eval set, run the model on it, save its artifacts. Returns the items."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    items = build_items(config)
    image_size = int(model.image_size)
    if hasattr(model, "register"):  # reference models that must know the items (oracle, ground truth)
        model.register(**{k: v for k, v in items.items()})
    write_json({
        "format_version": FORMAT_VERSION, "config": dataclasses.asdict(config), "model": str(model.name),
        "git_sha": git_sha(),
        "image_size": image_size, **_sampling_record(model),
        "items": {TASK_MODULES[task][0].SECTION: [it.to_dict() for it in its] for task, its in items.items()}},
        out_dir / EVAL_SET)
    for task, task_items in items.items():
        TASK_MODULES[task][0].run(model, task_items, out_dir, image_size=image_size, batch_size=config.batch_size,
                                  max_new_tokens=config.max_new_tokens, seed=config.seed, decoder=config.decoder)
    return items


SAMPLING_FIELDS = ("num_steps", "edit_num_steps", "guidance_scale", "edit_guidance_scale")


def _sampling_record(model) -> dict:
    """The sampling settings a real model (or one a reference model wraps) uses; None for reference models."""
    config = getattr(model, "config", None) or getattr(getattr(model, "model", None), "config", None)
    sampling = getattr(config, "sampling", None)
    return {name: getattr(sampling, name, None) for name in SAMPLING_FIELDS}


def load_eval_set(out_dir) -> tuple[dict, dict[str, list]]:
    """(metadata, items by task) from DIR/eval_set.json (whose items are keyed by section)."""
    path = Path(out_dir) / EVAL_SET
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `nexusgen eval shapes` without --score-only first")
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported format_version {data.get('format_version')!r}")
    items = {}
    for section, rows in data["items"].items():
        task = SECTION_TASKS[section]
        items[task] = [TASK_MODULES[task][1].from_dict(d) for d in rows]
    return data, items


def score(out_dir) -> dict:
    """Phase 2: score saved artifacts; write results.json, samples.jsonl and failures.png."""
    out_dir = Path(out_dir)
    meta, items = load_eval_set(out_dir)
    config = meta["config"]
    results: dict = {}
    records: list[dict] = []
    tiles: list = []
    for task, task_items in items.items():
        module = TASK_MODULES[task][0]
        extra = {"decoder": config["decoder"]} if task == EDIT else {}
        task_records, section = module.score(task_items, out_dir, **extra)
        results[module.SECTION] = section
        records += task_records
        tiles += module.failure_tiles(task_items, task_records, out_dir, config["worst"])
    results.update({"model": meta["model"], "seed": config["seed"], "git_sha": git_sha(),
                    "generated_git_sha": meta.get("git_sha", "unknown"),
                    "image_size": meta["image_size"], **{name: meta.get(name) for name in SAMPLING_FIELDS},
                    "num": config["num"],
                    "note": NOTE})
    results = json_safe(results)
    write_jsonl(json_safe(records), out_dir / "samples.jsonl")
    atomic_save_image(contact_sheet(tiles, title=f"{meta['model']}: worst failures"), out_dir / "failures.png")
    write_json(results, out_dir / "results.json")
    return results


def check_out_dir(out_dir) -> Path:
    """DIR, checked before the model runs: writable, and new, empty or an earlier run's output (`OWNED`).

    Raises:
        ValueError: DIR holds a file or folder a run does not write.
        OutputError: DIR cannot be written.
    """
    out = check_output_folder(out_dir)
    if out.is_dir():
        foreign = sorted(entry.name for entry in out.iterdir() if entry.name not in OWNED)
        if foreign:
            raise ValueError(f"{out} holds {foreign[0]!r}, which eval shapes did not write: give a new or empty "
                             "folder (a run replaces its folder whole)")
    return out


def evaluate(model, out_dir, config: ShapesEvalConfig | None = None) -> dict:
    """Both phases: run `model` on the benchmark, then score, in a staging folder that replaces `out_dir`
    when done (a failure leaves `out_dir` as it was). Returns results.json's content."""
    config = config or ShapesEvalConfig()
    with atomic_folder(check_out_dir(out_dir)) as staging:
        generate_artifacts(model, staging, config)
        results = score(staging)
    return results


def override_sampling(model, *, num_steps: int | None = None, guidance_scale: float | None = None,
                      edit_guidance_scale: float | None = None) -> None:
    """Set the sampling side of the speed/quality trade-off on a real model; None keeps the model's own.

    `num_steps` sets every decoder's step count (generation and editing alike).

    Raises:
        ValueError: a setting for a reference model (oracle, blank), or a value the model's sampling
            config refuses (steps < 1, guidance without a negative branch).
    """
    requested = {"num_steps": num_steps, "edit_num_steps": num_steps, "guidance_scale": guidance_scale,
                 "edit_guidance_scale": edit_guidance_scale}
    requested = {name: value for name, value in requested.items() if value is not None}
    if not requested:
        return
    if not hasattr(model, "config"):
        raise ValueError(f"steps / guidance apply to a real model, not {model.name}")
    model.config.sampling = dataclasses.replace(model.config.sampling, **requested)
