"""The bundled miniature Nexus-Gen, trained from scratch on ShapesWorld (64-px images) on a 2-core CPU.

`TABLE` is the recipe: one row per stage, in training order, each a complete description of its runs (the
settings every row shares are `_train_config`'s constants). A row with several seeds is that many rounds of
the same stage, each a run of its own from the previous one's export: `ar_edit` with 18 seeds runs
`ar_edit`, `ar_edit2`, ..., `ar_edit18`. `nexusgen train shapes-mini --out RUN` trains every run in order,
each in `RUN/<name>/` from the previous run's export (`--set ar.max_steps=100` changes one run,
`--set lr=1e-4` all; `--resume` skips finished runs, `--start-at NAME --set NAME.stage.parent=FOLDER`
starts later). `nexusgen train shapes-mini-<name>` trains one run.

The rows are what produced the bundled model (`nexusgen/assets/models/shapes-mini/`): each run's stored
config (training/shapes-mini/provenance/) equals its row's, tests/train/test_shapes_mini_recipe.py checks
it, and the model-level settings the last run exports (the `shapes-mini` preset) equal the bundled
`nexusgen.json`. The training log in training/shapes-mini/ has every run's scores and the experiments that
did not become stages.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from dataclasses import dataclass, field

from nexusgen.train.config import (
    CheckpointConfig,
    DataConfig,
    OptimConfig,
    ScheduleConfig,
    StageConfig,
    StageModelConfig,
    TrainConfig,
)
from nexusgen.worlds.shapes import UND_TYPES

PRESET = "shapes-mini"
IMAGE_PX = 64
BATCH = 32
# ShapesWorld options of every stage: half of the generation prompts pin the scene down (sizes and places)
# and the short half draw canonical scenes (what the prompt leaves open takes the world's defaults), so
# every prompt's regression target is one image's embedding, not a blur of many: with random short scenes,
# the first full run generated washed-out blobs (generation 0.01).
WORLD = {"prompt_style": "mixed", "detailed_fraction": 0.5, "zh_fraction": 0.3, "short_layout": "canonical"}
# The vae and vlm runs predate `short_layout`: they drew random short scenes (the vlm sees no generation
# prompts and the vae draws scenes of its own, so neither depends on it).
WORLD_BEFORE_CANONICAL = {"prompt_style": "mixed", "detailed_fraction": 0.5, "zh_fraction": 0.3}
# The language-model stages use beta2 = 0.95 (as nanoGPT and most LLM training): with 0.999 the LLM took far
# longer to start reading the image tokens in stage vlm (no gap after 1,500 steps vs ~600).
LM_BETAS = (0.9, 0.95)
ADAM_BETAS = (0.9, 0.999)

# Task mixes (`data.tasks`, cycled by sample index).
UNDERSTAND = ("understand",)
AR_MIX = ("understand", "understand", "generate", "edit")
EDIT_MIX = ("understand", "understand", "generate", "edit", "edit", "edit")  # half the samples edits
GENERATE = ("generate",)
EDIT = ("edit",)
# Understanding question mixes (ShapesWorld `und_types`; None: the world's six types, uniformly).
ORDERED_MIX = (*UND_TYPES, "relation", "where")  # relations twice as often, "where is X?" added
CAPTIONS_MIX = (*ORDERED_MIX, "caption", "caption")  # and captions three times as often

# The stage settings of each kind of row (`StageConfig`: the trained part, losses, EMA, dropout).
VAE = StageConfig(name="vae", preset=PRESET, loss_weights={"l1": 1.0, "mse": 1.0, "kl": 1e-6})
VLM = StageConfig(name="vlm", preset=PRESET)
# Stage vlm on the LLM alone with CE averaged per answer: the ViT stays as stage vlm left it (its
# embeddings are what the decoders learn from), and the pixel and semantic heads are off.
VLM_ANSWERS = StageConfig(name="vlm", preset=PRESET, ce_reduction="sample",
                          trainable=["model.vlm.model.language_model", "model.vlm.lm_head"],
                          loss_weights={"pixels": 0.0, "semantic": 0.0})
# Phase 1: CE per answer (with the token mean and a third of the samples understanding, it took understanding
# from 0.71 to 0.64); the image loss weighed up as in V2 (3:3 there, 1:2 here).
AR = StageConfig(name="ar", preset=PRESET, loss_weights={"token": 1.0, "image": 2.0}, ce_reduction="sample")
# Phase 2 as it was first trained: upstream's all-zero context ids, a constant-decay EMA (the warm-up came
# later); 10% of the conditions dropped, so guidance needs a null branch only, no T5. It reads only the ViT,
# which no stage after vlm trains (the stored run started from vlm's export).
GENERATION_ZERO_IDS = StageConfig(name="generation_decoder", preset=PRESET, cond_dropout_prob=0.1, ema_decay=0.999,
                                  ema_warmup=False, model=StageModelConfig(generation_context_ids="zero"))
# Its continuation with grid context ids, bundled as the trained weights, not an EMA of them.
GENERATION_GRID_IDS = StageConfig(name="generation_decoder", preset=PRESET, cond_dropout_prob=0.1,
                                  model=StageModelConfig(generation_context_ids="grid"))
# Phase 3 on the true edited image's embeddings, not upstream's AR predictions; the EMA spans the end of a
# 1,000-step run, not the warm start from the generation decoder's DiT.
EDITING = StageConfig(name="editing_decoder", preset=PRESET, cond_dropout_prob=0.1, ema_decay=0.995,
                      true_target_prob=1.0)


@dataclass(frozen=True)
class Row:
    """One stage of the recipe: its runs and everything that sets them apart."""

    name: str
    """The stage's name (its runs: `name`, `name2`, ... from `first_round`)."""
    after: str | None
    """The run whose export it starts from (None: the presets)."""
    stage: StageConfig
    """What is trained and how (part, losses, EMA, dropout, model settings)."""
    steps: int
    lr: float
    warmup: int
    """Linear warm-up steps, then cosine decay to 5% of `lr`."""
    seeds: tuple[int, ...]
    """One run per seed."""
    tasks: tuple[str, ...]
    """Task mix (`data.tasks`)."""
    questions: tuple[str, ...] | None
    """Understanding question types (`und_types`); None: the world's six, uniformly."""
    purpose: str
    """What it is for, and what it did."""
    betas: tuple[float, float] = LM_BETAS
    ordered_relations: bool = False
    """Relations answered as an ordered comparison first ("B is in column 1 and A is in column 3, so yes.")."""
    eval_every: int = 250
    world: dict = field(default_factory=lambda: dict(WORLD))
    reference_px: int = 0
    """editing_decoder: side of the source image's square as the AR model encodes it (the preset's 128)."""
    first_round: int = 1

    @property
    def run_names(self) -> list[str]:
        """`name` for round 1, `name2` for round 2, ..."""
        rounds = range(self.first_round, self.first_round + len(self.seeds))
        return [self.name if n == 1 else f"{self.name}{n}" for n in rounds]


# The seeds of stage ar_edit's 18 rounds, in order (not consecutive: 11 and 15 went to decoder runs between them).
AR_EDIT_SEEDS = (7, 8, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27)

# fmt: off
TABLE: list[Row] = [
    Row("vae", None, VAE, 2000, 1e-3, 200, (0,), UNDERSTAND, None, betas=ADAM_BETAS, world=WORLD_BEFORE_CANONICAL,
        purpose="AutoencoderKL /4 (16x16x16 latents) on rendered scenes, L1 + MSE + a small KL (39.4 dB)"),
    Row("vlm", "vae", VLM, 8000, 1e-3, 100, (0,), UNDERSTAND, None, world=WORLD_BEFORE_CANONICAL,
        purpose="the from-scratch Qwen2.5-VL learns to see: understanding + captions, CE + per-token pixel "
                "reconstruction, ViT trainable (understanding 0.71)"),
    Row("vlm_answers", "vlm", VLM_ANSWERS, 3000, 5e-4, 100, (2,), UNDERSTAND, None,
        purpose="the LLM alone, CE per answer: it had answered 'no' to 90% of yes/no questions (0.71 -> 0.79)"),
    Row("ar", "vlm_answers", AR, 4000, 5e-4, 200, (0,), AR_MIX, None,
        purpose="Nexus-Gen phase 1: ViT frozen; text + image-embedding regression on all three tasks"),
    Row("ar_more", "ar", AR, 2000, 3e-4, 100, (5,), AR_MIX, None,
        purpose="phase 1 continued, the LR warmed up again"),
    Row("ar_edit", "ar_more", AR, 1500, 3e-4, 100, AR_EDIT_SEEDS, EDIT_MIX, None,
        purpose="half the samples edits, 18 reseeded rounds: the AR model carried too little of each edit "
                "(edit embedding gain 0.56 -> 0.91, understanding 0.73 -> 0.845, generation held at 0.975-1.00)"),
    Row("ar_where_only", "ar_edit18", AR, 1800, 3e-4, 100, (31,), UNDERSTAND, ("where",), eval_every=600,
        purpose="'where is the red circle?' alone: the LLM learns to find an object by its description late, "
                "between steps 1,200 and 1,800 (where 0.825; every shorter run named a random object)"),
    Row("ar_where_relations", "ar_where_only", AR, 600, 3e-4, 100, (32,), UNDERSTAND, ("where", "relation"),
        ordered_relations=True, eval_every=300,
        purpose="where + ordered relation questions (where 0.86, relations 0.525)"),
    Row("ar_relations_only", "ar_where_relations", AR, 1800, 3e-4, 100, (33,), UNDERSTAND, ("relation",),
        ordered_relations=True, eval_every=600,
        purpose="ordered relations alone: the relation's own two lookups form as the 'where' one did (0.80)"),
    Row("ar_relations_round", "ar_relations_only", AR, 1500, 3e-4, 100, (34,), EDIT_MIX, ORDERED_MIX,
        ordered_relations=True,
        purpose="the full mix again, relations ordered and twice as often: they keep most of their gain "
                "(0.69) but captions fall to 0.485"),
    Row("ar_captions_round", "ar_relations_round", AR, 1500, 3e-4, 100, (35,), EDIT_MIX, CAPTIONS_MIX,
        ordered_relations=True,
        purpose="the full mix with captions three times as often: captions 0.76, understanding 0.875 (v14)"),
    Row("ar_counts_only", "ar_captions_round", AR, 1800, 3e-4, 100, (36,), UNDERSTAND, ("count",), eval_every=600,
        purpose="count questions alone: finding every object of a description (shape counts 0.77 -> 0.96)"),
    Row("ar_counts_round", "ar_counts_only", AR, 1500, 3e-4, 100, (37,), EDIT_MIX, CAPTIONS_MIX,
        ordered_relations=True,
        purpose="a full round brings the other questions back: understanding 0.91 (v15)"),
    Row("ar_captions_only", "ar_counts_round", AR, 1800, 3e-4, 100, (38,), UNDERSTAND, ("caption",),
        eval_every=600,
        purpose="caption questions alone: captions 0.79 -> 0.985, no object in a wrong place"),
    Row("ar_counts_round", "ar_captions_only", AR, 1500, 3e-4, 100, (39, 40), EDIT_MIX, CAPTIONS_MIX,
        ordered_relations=True, first_round=2,
        purpose="two full rounds: understanding 0.93, captions 0.91, relations 0.73 (v16)"),
    Row("ar_relations_only", "ar_counts_round3", AR, 1800, 3e-4, 100, (41,), UNDERSTAND, ("relation",),
        ordered_relations=True, eval_every=600, first_round=2,
        purpose="ordered relations alone again: relations 0.73 -> 0.91"),
    Row("ar_counts_round", "ar_relations_only2", AR, 1500, 3e-4, 100, (42,), EDIT_MIX, CAPTIONS_MIX,
        ordered_relations=True, first_round=4,
        purpose="one full round: relations stay at 0.91, understanding 0.9725 (v17)"),
    Row("ar_anneal", "ar_counts_round4", AR, 1500, 1e-4, 100, (44,), EDIT_MIX, CAPTIONS_MIX, ordered_relations=True,
        purpose="a full round at a third of the LR settles the mix: 0.94-0.96 on draws that chose nothing (v18)"),
    Row("ar_alike_only", "ar_anneal", AR, 1800, 3e-4, 100, (48,), UNDERSTAND, ("alike_relation",),
        ordered_relations=True, eval_every=600,
        purpose="relations between two objects of one colour or shape alone (v18 got 3 of 30 wrong; none after)"),
    Row("ar_alike_round", "ar_alike_only", AR, 1500, 3e-4, 100, (49,), EDIT_MIX, CAPTIONS_MIX, ordered_relations=True,
        purpose="a full round after it"),
    Row("ar_alike_anneal", "ar_alike_round", AR, 1500, 1e-4, 100, (50,), EDIT_MIX, CAPTIONS_MIX,
        ordered_relations=True,
        purpose="and a full round at a third of the LR: understanding 0.965-0.9825 on five draws (v19, bundled)"),
    Row("generation_decoder", "ar_alike_anneal", GENERATION_ZERO_IDS, 4000, 5e-4, 200, (0,), GENERATE, None,
        betas=ADAM_BETAS,
        purpose="Nexus-Gen phase 2: adapter + DiT from ground-truth ViT embeddings, upstream's zero context ids "
                "(held-out flow loss 0.0126)"),
    Row("generation_decoder_more", "generation_decoder", GENERATION_GRID_IDS, 2000, 3e-4, 100, (11,), GENERATE, None,
        betas=ADAM_BETAS,
        purpose="continued with grid context ids, each token placed on the image grid: exact reconstructions "
                "0.25 -> 0.66, generation 0.947 -> 0.975 (bundled)"),
    Row("editing_decoder", "generation_decoder_more", EDITING, 1000, 5e-4, 200, (0,), EDIT, None, betas=ADAM_BETAS,
        reference_px=2 * IMAGE_PX,
        purpose="Nexus-Gen phase 3: merger + DiT (from the generation decoder's) on true targets' embeddings: "
                "0.27 of edits from predictions, against 0.08 when trained on them as upstream"),
    Row("editing_decoder_more", "editing_decoder", EDITING, 700, 3e-4, 50, (15, 24, 25), EDIT, None,
        betas=ADAM_BETAS, reference_px=2 * IMAGE_PX,
        purpose="three more rounds while its held-out flow loss fell (editing 0.465 -> 0.505 after the first, "
                "0.63 -> 0.6875 after the other two, each against one AR model; bundled)"),
]
# fmt: on


def _train_config(row: Row, seed: int) -> TrainConfig:
    """The complete config of one run of `row`: the row's settings and the ones every row shares."""
    world = dict(row.world)
    if row.questions is not None:
        world["und_types"] = list(row.questions)
    if row.ordered_relations:
        world.update(reasoned_answers=True, reasoning_steps="ordered")
    return TrainConfig(
        stage=copy.deepcopy(row.stage), max_steps=row.steps, batch_size=BATCH, lr=row.lr, seed=seed,
        save_every=250, log_every=10, eval_every=row.eval_every,
        optim=OptimConfig(grad_clip=1.0, weight_decay=0.01, betas=row.betas),
        schedule=ScheduleConfig(kind="cosine", warmup_steps=row.warmup, min_lr_ratio=0.05),
        checkpoint=CheckpointConfig(keep_last=2),
        data=DataConfig(source="generated", world="shapes", num_samples=200_000, image_size_px=IMAGE_PX,
                        tasks=list(row.tasks), world_options=world, reference_image_px=row.reference_px))


def runs(table: list[Row]) -> dict[str, Callable[[], TrainConfig]]:
    """Every run of the table in training order: run name -> its config."""
    stages = {}
    for row in table:
        for name, seed in zip(row.run_names, row.seeds, strict=True):
            stages[name] = functools.partial(_train_config, row, seed)
    return stages


STAGES = runs(TABLE)
"""The shapes-mini pipeline, in training order."""
