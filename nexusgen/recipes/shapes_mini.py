"""The bundled miniature Nexus-Gen, trained from scratch on ShapesWorld (64-px images), on a 2-core CPU.

`nexusgen train shapes-mini --out RUN` runs the forty-five stages in order, each in `RUN/<stage>/` and each
starting from the previous stage's exported folder:

    vae          AutoencoderKL /4 (16x16x16 latents) on rendered scenes
    vlm          the from-scratch Qwen2.5-VL learns to see: understanding + captions, CE + per-token pixel
                 reconstruction (train/stages/vlm.py says why), ViT trainable
    vlm_answers  stage vlm again on the LLM alone, CE averaged per answer (one-word answers were at chance)
    ar           Nexus-Gen phase 1: ViT frozen; text + image-embedding regression on all three tasks
    ar_more      stage ar continued for 2,000 steps, the LR warmed up again
    ar_edit      1,500 more, half the samples edits (the AR model carried too little of each edit)
    ar_edit2..18 ar_edit seventeen times more, each from the last (AR_EDIT_ROUND_SEEDS)
    ar_where_only, ar_where_relations, ar_relations_only
                 understanding alone, a few question types at a time: 1,800 steps of one type is what
                 teaches the LLM to find an object by its description (the "where" and relation lookups)
    ar_relations_round, ar_captions_round
                 ar_edit twice more with ordered relations, the second with captions three times as often
    ar_counts_only, ar_counts_round
                 count questions alone (finding every object of a description), then ar_captions_round again
    ar_captions_only, ar_counts_round2, ar_counts_round3
                 caption questions alone, then ar_counts_round twice more
    ar_relations_only2, ar_counts_round4
                 ordered relation questions alone again, then ar_counts_round once more
    ar_anneal    ar_counts_round once more at a third of the LR
    ar_alike_only, ar_alike_round, ar_alike_anneal
                 relation questions about two objects alike in colour or shape alone, then ar_counts_round
                 and ar_anneal once more
    gen_decoder  phase 2: adapter + DiT from ground-truth ViT embeddings (10% conditioning dropout, so
                 guidance needs no T5); the context tokens carry their grid places as RoPE ids
    gen_decoder_more  gen_decoder continued for 2,000 steps, the LR warmed up again
    edit_decoder phase 3: merger + DiT from (target, reference) embeddings, the target the true edited
                 image's (upstream: the AR model's prediction); DiT initialised from gen_decoder's
    edit_decoder_more  edit_decoder continued for 700 steps, the LR warmed up again
    edit_decoder_more2, edit_decoder_more3  edit_decoder_more twice more (EDIT_DECODER_ROUND_SEEDS)

`--set vae.max_steps=100` overrides one stage, `--set lr=1e-4` all of them; `--resume` skips finished
stages and continues the interrupted one. Step counts are sized for hours, not days, of CPU time.
"""

from __future__ import annotations

import functools

from nexusgen.train.config import (
    CheckpointConfig,
    DataConfig,
    OptimConfig,
    ScheduleConfig,
    StageConfig,
    TrainConfig,
)
from nexusgen.worlds.shapes import UND_TYPES

IMAGE_PX = 64
PRESET = "shapes-mini"
# ShapesWorld options for every message stage: half of the generation prompts pin the scene down
# (sizes and places) and the short half draw canonical scenes (what the prompt leaves open takes the
# world's defaults), so every prompt's regression target is one image's embedding, not a blur of many:
# with random short scenes, the first full run generated washed-out blobs (GenEval overall 0.01).
# The language-model stages use beta2 = 0.95 (as nanoGPT and most LLM training): with 0.999 the LLM took
# far longer to start reading the image tokens in stage vlm (no gap after 1,500 steps vs ~600).
LM_BETAS = (0.9, 0.95)
# Stage ar_reasoning's question mix: relations x3 and captions x2.
REASONING_MIX = ("count", "color", "shape", "binding", "relation", "relation", "relation", "caption", "caption")
# Seeds of stage ar_edit's repeats, ar_edit2, ar_edit3, ...: each round is a run of its own from the last
# one's export, the LR warmed up again.
AR_EDIT_ROUND_SEEDS = (8, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27)
# Seeds of stage edit_decoder_more's repeats, edit_decoder_more2, ...: as AR_EDIT_ROUND_SEEDS.
EDIT_DECODER_ROUND_SEEDS = (24, 25)
WORLD = {"prompt_style": "mixed", "detailed_fraction": 0.5, "zh_fraction": 0.3, "short_layout": "canonical"}


def _config(stage: StageConfig, *, max_steps: int, lr: float, batch_size: int, tasks=("understand",),
            warmup_steps: int = 200, betas=(0.9, 0.999)) -> TrainConfig:
    return TrainConfig(
        stage=stage, max_steps=max_steps, batch_size=batch_size, lr=lr, seed=0, save_every=250, log_every=10,
        eval_every=250,
        optim=OptimConfig(grad_clip=1.0, weight_decay=0.01, betas=betas),
        schedule=ScheduleConfig(kind="cosine", warmup_steps=warmup_steps, min_lr_ratio=0.05),
        checkpoint=CheckpointConfig(keep_last=2),
        data=DataConfig(source="generated", world="shapes", num_samples=200_000, image_size_px=IMAGE_PX,
                        tasks=list(tasks), world_options=dict(WORLD)))


def shapes_mini_vae() -> TrainConfig:
    """VAE on ShapesWorld renders: L1 + MSE, a KL just large enough to keep latents well scaled."""
    return _config(StageConfig(name="vae", preset=PRESET, loss_weights={"l1": 1.0, "mse": 1.0, "kl": 1e-6}),
                   max_steps=2000, lr=1e-3, batch_size=32)


def shapes_mini_vlm() -> TrainConfig:
    """Understanding pre-training from scratch (the role of Qwen2.5-VL's own pre-training)."""
    return _config(StageConfig(name="vlm", preset=PRESET), max_steps=8000, lr=1e-3, batch_size=32,
                   tasks=("understand",), warmup_steps=100, betas=LM_BETAS)


def shapes_mini_vlm_answers() -> TrainConfig:
    """Stage vlm again, on the LLM alone, with CE averaged per answer: with the token mean the model
    answered "no" to over 90% of yes/no questions (chance) while it captioned; this took understanding from
    0.71 to 0.79. The ViT stays as stage vlm left it (its embeddings are what the decoders learn from)."""
    config = _config(StageConfig(name="vlm", preset=PRESET, ce_reduction="sample",
                                 trainable=["model.vlm.model.language_model", "model.vlm.lm_head"],
                                 loss_weights={"pixels": 0.0, "semantic": 0.0}),
                     max_steps=3000, lr=5e-4, batch_size=32, tasks=("understand",), warmup_steps=100,
                     betas=LM_BETAS)
    config.seed = 2
    return config


def shapes_mini_ar() -> TrainConfig:
    """Phase 1: all three tasks, half the samples understanding and CE per answer (with a third and the
    token mean, this stage took understanding from 0.71 to 0.64); image loss weighted up as in V2 (3:3
    there, 1:2 here)."""
    return _config(StageConfig(name="ar", preset=PRESET, loss_weights={"token": 1.0, "image": 2.0},
                               ce_reduction="sample"),
                   max_steps=4000, lr=5e-4, batch_size=32,
                   tasks=("understand", "understand", "generate", "edit"), betas=LM_BETAS)


def shapes_mini_ar_more() -> TrainConfig:
    """Stage ar continued: the LR warmed up again to 3e-4 and decayed over 2,000 more steps, same data."""
    config = shapes_mini_ar()
    config.max_steps, config.lr, config.seed = 2000, 3e-4, 5
    config.schedule.warmup_steps = 100
    return config


def shapes_mini_ar_edit() -> TrainConfig:
    """Stage ar_more continued for 1,500 steps with half the samples edits (a quarter before). The edit's
    prediction removed 56% of the error of copying the source (`eval shapes` editing `embedding_gain`),
    now 62%; editing success with the generation decoder went 0.06 -> 0.105. Captions pay for it (0.36 ->
    0.27)."""
    config = shapes_mini_ar_more()
    config.max_steps, config.seed = 1500, 7
    config.data.tasks = ["understand", "understand", "generate", "edit", "edit", "edit"]
    return config


def shapes_mini_ar_edit_again(seed: int) -> TrainConfig:
    """Stage ar_edit once more, from the last one's export, with another seed: each of seventeen rounds
    took the edit embedding gain up or kept it (0.62 -> 0.69 -> 0.73 -> 0.78 -> 0.81 -> 0.84 -> 0.85 -> 0.86
    -> 0.86 -> 0.87 -> 0.88 -> 0.88 -> 0.89 -> 0.89 -> 0.90 -> 0.90 -> 0.91 -> 0.91) and understanding mostly
    with it (0.73 -> 0.78 after five, 0.79-0.805 after seven and eight, 0.8275 after nine, 0.8425 after
    eleven, 0.82 after thirteen, 0.845 after sixteen and seventeen; the 400-item score moves by about 0.02
    between seeds), while generation held (0.975 -> 1.00). With bundle v11's editing decoder the last four
    took editing 0.805 -> 0.82 (bundle v12) -> 0.8375 (bundle v13)."""
    config = shapes_mini_ar_edit()
    config.seed = seed
    return config


def shapes_mini_ar_reasoning() -> TrainConfig:
    """An experiment, not a stage of the bundled model: `ar_more` with relation questions answered by
    reasoning (every object's place, then A's and B's, then yes/no; `tasks.relation_reasoning`), a third of
    the questions relations and two ninths captions. Relations stayed at chance (0.42 after 2,000 steps;
    training/shapes-mini/README.md)."""
    config = shapes_mini_ar_more()
    config.data.world_options.update(reasoned_answers=True, und_types=REASONING_MIX)
    return config


def shapes_mini_ar_rope_theta() -> TrainConfig:
    """An experiment, not a stage of the bundled model: `ar_edit` with the LLM's M-RoPE re-based from theta
    1e6 to 100. Qwen2.5-VL's M-RoPE gives the width axis each head's lowest frequencies: at 1e6 they turn by
    at most 1.8e-4 rad per token column, at 100 by 0.056, so attention can tell columns apart (bundle
    v7's captions put 14% of objects in the wrong column, 4% in the wrong row). From that model, this and
    1,500 more steps with half the samples understanding left the model still relearning what the new
    rotations scrambled: understanding 0.73 (captions 0.23), place errors 10% rows, 34% columns
    (training/shapes-mini/README.md). A fair test trains at theta 100 from stage vlm on."""
    config = shapes_mini_ar_edit()
    config.seed = 31
    config.stage.model = {"rope_theta": 100.0}
    return config


def shapes_mini_ar_input_places() -> TrainConfig:
    """An experiment, not a stage of the bundled model: `ar_edit` with the parent given input image places
    (`ARConfig.input_image_positions`: a zero-started map of each input token's normalised row and column,
    in units of the token's RMS), so that a token's place reaches the LLM's values, not only the rotary
    angles of its queries and keys. From `ar_edit12`, 1,500 steps, against the same run without places:
    held-out loss 0.465 vs 0.479, but understanding 0.8175 vs 0.8075, editing 0.6375 vs 0.6425, columns
    wrong in captions 6.2% vs 7.7%: within seed noise; a second round (seed 23) the same (0.8325 in both,
    editing 0.665 vs 0.6725; training/shapes-mini/README.md)."""
    config = shapes_mini_ar_edit()
    config.seed = 22
    config.stage.model = {"input_image_positions": True}
    return config


def shapes_mini_ar_where() -> TrainConfig:
    """An experiment, not a stage of the bundled model: `ar_edit` (seed 23, as `ar_edit14` of the plain
    chain) with "where is the red circle?" questions added to the understanding mix (a seventh of them).
    A relation needs that lookup twice; alone, from bundle v9, 600 steps of it reached 0.54 exact places
    (chance 0.11; 0.50 without input places). In the mix, against `ar_edit14`: where 0.30 exact,
    understanding 0.83 vs 0.82 (relations 0.55 vs 0.49), editing 0.6625 vs 0.6675, within noise
    (training/shapes-mini/README.md)."""
    config = shapes_mini_ar_edit()
    config.seed = 23
    config.data.world_options["und_types"] = [*UND_TYPES, "where"]
    return config


def shapes_mini_ar_ordered_relations() -> TrainConfig:
    """An experiment: a round of `ar_edit` (seed 28) with relations answered as an ordered comparison
    ("The blue square is in column 1 and the red circle is in column 3, so yes.", `reasoning_steps="ordered"`),
    twice as many relation questions and "where" questions added. Run from `ar_edit18`
    (training/shapes-mini/README.md has the scores)."""
    config = shapes_mini_ar_edit_again(28)
    config.data.world_options.update(reasoned_answers=True, reasoning_steps="ordered",
                                     und_types=[*UND_TYPES, "relation", "where"])
    return config


def _understanding_only(und_types, *, max_steps: int, seed: int, eval_every: int, ordered: bool) -> TrainConfig:
    """`ar_more`'s optimiser and LR schedule on understanding questions of `und_types` alone; with `ordered`,
    relations are answered as an ordered comparison (`reasoning_steps="ordered"`)."""
    config = shapes_mini_ar_more()
    config.max_steps, config.seed, config.eval_every = max_steps, seed, eval_every
    config.data.tasks = ["understand"]
    config.data.world_options = {**WORLD, "und_types": list(und_types)}
    if ordered:
        config.data.world_options.update(reasoned_answers=True, reasoning_steps="ordered")
    return config


def shapes_mini_ar_where_only() -> TrainConfig:
    """"Where is the red circle?" questions alone, 1,800 steps (seed 31). Among several objects every shorter
    or mixed run named a random object's place (0.31-0.36; a random pick scores 0.354); this one learns the
    lookup late, most of it between steps 1,200 and 1,800: where 0.825, among several 0.755, from bundle v13.
    Relations, not asked, fall to 0.07-0.175."""
    return _understanding_only(["where"], max_steps=1800, seed=31, eval_every=600, ordered=False)


def shapes_mini_ar_where_relations() -> TrainConfig:
    """`ar_where_only` continued for 600 steps (seed 32) on "where" and ordered relation questions: where 0.86
    (among several 0.80), relations 0.525, both stated places right for 33 of 112 relations."""
    return _understanding_only(["where", "relation"], max_steps=600, seed=32, eval_every=300, ordered=True)


def shapes_mini_ar_relations_only() -> TrainConfig:
    """Ordered relation questions alone, 1,800 steps (seed 33), from `ar_where_relations`: the relation's
    own two lookups ("the blue square is in column" -> "3") form as the "where" lookup did. Relations
    0.80, both stated places right for 90 of 112; "where" questions, not asked, fall to 0.09."""
    return _understanding_only(["relation"], max_steps=1800, seed=33, eval_every=600, ordered=True)


def shapes_mini_ar_relations_round() -> TrainConfig:
    """`ar_ordered_relations` (the full mix, relations ordered and twice as many, "where" added) with seed 34,
    from `ar_relations_only`: relations keep most of their gain (0.69 against v13's 0.49) but captions fall
    from 0.74 to 0.485, their objects' words copied from one another (500 items, seed 9001)."""
    config = shapes_mini_ar_ordered_relations()
    config.seed = 34
    return config


def shapes_mini_ar_captions_round() -> TrainConfig:
    """`ar_relations_round` again (seed 35) with captions three times as often: captions 0.485 -> 0.76,
    relations 0.70, understanding 0.875 (bundle v14; training/shapes-mini/README.md, thirteenth session)."""
    config = shapes_mini_ar_relations_round()
    config.seed = 35
    config.data.world_options["und_types"] += ["caption", "caption"]
    return config


def shapes_mini_ar_counts_only() -> TrainConfig:
    """Count questions alone, 1,800 steps (seed 36), from `ar_captions_round`: "how many red objects?" has to
    find every object of a description, the lookup the "where" and relation stages taught for one object.
    The count probe goes 0.903 -> 0.98, shape counts 0.766 -> 0.963."""
    return _understanding_only(["count"], max_steps=1800, seed=36, eval_every=600, ordered=False)


def shapes_mini_ar_counts_round() -> TrainConfig:
    """`ar_captions_round` again (seed 37), from `ar_counts_only`: counts keep their gain (0.955, count probe
    0.963) and understanding reaches 0.91 (bundle v15; training/shapes-mini/README.md, fourteenth session)."""
    config = shapes_mini_ar_captions_round()
    config.seed = 37
    return config


def shapes_mini_ar_captions_only() -> TrainConfig:
    """Caption questions alone, 1,800 steps (seed 38), from `ar_counts_round`: captions 0.79 -> 0.985 (no object
    in a wrong place), while the questions not asked fall (relations 0.25, counts 0.78)."""
    return _understanding_only(["caption"], max_steps=1800, seed=38, eval_every=600, ordered=False)


def shapes_mini_ar_counts_round_again(seed: int) -> TrainConfig:
    """`ar_counts_round`'s full mix with another seed: the rounds after `ar_captions_only` (seeds 39 and 40)
    bring the other questions back while captions keep most of their gain. After the first, captions 0.955 but
    relations 0.66; after the second, understanding 0.93 / 0.9125 on the two draws, captions 0.91, relations
    0.73 (bundle v16; training/shapes-mini/README.md, fourteenth session). The round after `ar_relations_only2`
    (seed 42) is `ar_counts_round4`."""
    config = shapes_mini_ar_counts_round()
    config.seed = seed
    return config


def shapes_mini_ar_relations_only_again() -> TrainConfig:
    """`ar_relations_only` again (seed 41), from `ar_counts_round3` (bundle v16's AR model): relations 0.73 ->
    0.91 and both stated places right for 93 of 112 (v16: 75), while the questions not asked fall (captions
    0.09, counts 0.43). One full round after it (`ar_counts_round4`, seed 42) brings them back and keeps
    relations at 0.91 / 0.90: understanding 0.9725 / 0.945 / 0.95 on seeds 9001 / 9002 / 9003 (bundle v17); a
    second round (seed 43) scored lower (0.9625 / 0.925) and is not a stage."""
    config = shapes_mini_ar_relations_only()
    config.seed = 41
    return config


def shapes_mini_ar_anneal() -> TrainConfig:
    """`ar_counts_round`'s full mix once more (seed 44) at a third of its LR (1e-4), from `ar_counts_round4`:
    each focused stage moved the questions it did not ask and the full-LR rounds after it moved them back; a
    round at a lower LR is meant to settle the mix. Understanding 0.9725 / 0.945 -> 0.9675 / 0.95 on seeds 9001 / 9002,
    and 0.9575 / 0.96 / 0.94 on seeds 9003 / 9004 / 9005, held out from every choice of stage (bundle v18)."""
    config = shapes_mini_ar_counts_round_again(44)
    config.lr = 1e-4
    return config


def shapes_mini_ar_alike_only() -> TrainConfig:
    """Relation questions about two objects alike in colour or shape, alone and ordered, 1,800 steps (seed 48),
    from `ar_anneal`: relations 0.896 / 0.866 -> 1.00 / 0.97 on seeds 9001 / 9002, no alike pair wrong (v18: 3 of
    30), while the questions not asked fall (captions 0.03 / 0.045), as after every focused stage."""
    return _understanding_only(["alike_relation"], max_steps=1800, seed=48, eval_every=600, ordered=True)


def shapes_mini_ar_alike_anneal() -> TrainConfig:
    """`ar_anneal` again (seed 50), from `ar_alike_round` (the full round, seed 49, after `ar_alike_only`):
    understanding 0.9825 / 0.97 / 0.9725 / 0.965 / 0.975 on seeds 9001-9005 against v18's
    0.9675 / 0.95 / 0.9575 / 0.96 / 0.94, relations 0.97-1.00 (bundle v19)."""
    config = shapes_mini_ar_anneal()
    config.seed = 50
    return config


def shapes_mini_ar_question_first() -> TrainConfig:
    """An experiment: `ar_ordered_relations` (the same seed) with every understanding question put before its
    image (`question_first`, in the data and in the model's config for inference). In a causal LLM the
    image tokens then see the question and can each mark whether they show the object it names, where
    image-first the answer tokens alone must find it by content (training/shapes-mini/README.md)."""
    config = shapes_mini_ar_ordered_relations()
    config.data.world_options.update(question_first=True)
    config.stage.model = {**config.stage.model, "question_first": True}
    return config


def shapes_mini_ar_listed_relations() -> TrainConfig:
    """An experiment: a round of `ar_edit` (seed 29) with relations answered by listing every object's number
    on the relation's axis in reading order, then the ordered comparison (`reasoning_steps="listed"`,
    `tasks.relation_listing`), and twice as many relation questions. Run from `ar_edit18`
    (training/shapes-mini/README.md has the scores)."""
    config = shapes_mini_ar_edit_again(29)
    config.data.world_options.update(reasoned_answers=True, reasoning_steps="listed", reasoned_types=["relation"],
                                     und_types=[*UND_TYPES, "relation"])
    return config


def shapes_mini_ar_listed_counts() -> TrainConfig:
    """An experiment: a round of `ar_edit` (seed 28) with colour and shape counts answered after the objects they
    count ("The red circle and the red cross, so 2.", `tasks.count_listing`; relations answered directly) and
    twice as many count questions. Run from `ar_edit18` (training/shapes-mini/README.md has the scores)."""
    config = shapes_mini_ar_edit_again(28)
    config.data.world_options.update(reasoned_answers=True, reasoning_steps="listed", reasoned_types=["count"],
                                     und_types=[*UND_TYPES, "count"])
    return config


def shapes_mini_gen_decoder() -> TrainConfig:
    """Phase 2: reconstruct the image from its own ViT embeddings. The preset places the 16 context tokens
    on the image grid (`DecoderConfig.generation_context_ids="grid"`): with upstream's all-zero ids the DiT
    has to read each token's place from its content, and it drew 0.30 of true scenes exactly, against 0.52
    with grid ids after the same 1,000 steps (training/shapes-mini/README.md)."""
    return _config(StageConfig(name="gen_decoder", preset=PRESET, cond_dropout_prob=0.1, ema_decay=0.999),
                   max_steps=4000, lr=5e-4, batch_size=32, tasks=("generate",))


def shapes_mini_gen_decoder_more() -> TrainConfig:
    """Stage gen_decoder continued: 2,000 more steps, the LR warmed up again to 3e-4, grid context ids (set
    explicitly, since a decoder loaded from a parent keeps its own config). The bundled generation decoder
    is this stage run on a gen_decoder trained with upstream's zero ids: held-out flow loss 0.0126 ->
    0.0081, exact reconstructions of true scenes 0.25 -> 0.66, generation 0.947 -> 0.975."""
    config = shapes_mini_gen_decoder()
    config.max_steps, config.lr, config.seed = 2000, 3e-4, 11
    config.schedule.warmup_steps = 100
    config.stage.model = {"generation_context_ids": "grid"}
    return config


def shapes_mini_edit_decoder() -> TrainConfig:
    """Phase 3: the edited image from a target's 16 embeddings + the source's 64; the DiT starts from the
    generation decoder's (as both official decoders start from FLUX.1-dev), so fewer steps. The target is
    the true edited image's embeddings (`stage.true_target_prob=1`), not upstream's AR prediction: trained
    on predictions, the decoder learned to copy the source and edited 0.08 of the items, 0.12 even from
    true embeddings; trained on true targets, 0.27 from the same predictions and 0.69 from true embeddings
    (training/shapes-mini/README.md). 1,000 steps take about 45 min on 1 thread. The EMA decay is shorter
    than gen_decoder's so that its average spans the end of a 1,000-step run, not the warm start."""
    config = _config(StageConfig(name="edit_decoder", preset=PRESET, cond_dropout_prob=0.1, ema_decay=0.995,
                                 true_target_prob=1.0),
                     max_steps=1000, lr=5e-4, batch_size=32, tasks=("edit",))
    config.data.reference_image_px = 2 * IMAGE_PX  # = PRESETS["shapes-mini"]["reference_image_px"]
    return config


def shapes_mini_edit_decoder_more() -> TrainConfig:
    """Stage edit_decoder continued: 700 more steps, the LR warmed up again to 3e-4 (its held-out flow loss
    was still falling, 0.0111 -> 0.0101 over the last 250 steps). Editing success with `ar_edit6`'s AR
    model 0.465 -> 0.505, PSNR outside the edit 32.7 -> 32.9 dB."""
    config = shapes_mini_edit_decoder()
    config.max_steps, config.lr, config.seed = 700, 3e-4, 15
    config.schedule.warmup_steps = 50
    return config


def shapes_mini_edit_decoder_again(seed: int) -> TrainConfig:
    """Stage edit_decoder_more once more, from the last one's export, with another seed: its held-out flow
    loss was still falling within a round (0.0118 -> 0.0092 from step 250 to 500 in the first, 0.0087 ->
    0.0067 in the second, on each run's own held-out batch), and with bundle v9's AR model the second and
    third took editing from 0.63 to 0.6475 and 0.6875, from true embeddings 0.81 -> 0.855 after both
    (training/shapes-mini/README.md)."""
    config = shapes_mini_edit_decoder_more()
    config.seed = seed
    return config


def shapes_mini_edit_decoder_predicted_targets() -> TrainConfig:
    """An experiment, not a stage of the bundled model: `edit_decoder` as upstream trains it, on the AR
    model's predicted targets. The editing decoders of bundles v1-v5 were trained this way; with `ar_edit3`'s
    AR model it edited 0.0825 of the items (0.12 from true embeddings), against 0.27 (0.69) for the stage."""
    config = shapes_mini_edit_decoder()
    config.stage.true_target_prob = 0.0
    return config


def shapes_mini_edit_decoder_reference_dropout() -> TrainConfig:
    """An experiment, not a stage of the bundled model: `edit_decoder` with half the samples' reference
    zeroed, so the decoder has to draw whole images from the target embeddings. Against `edit_decoder`
    on the same AR model it did not read the target better (from the true targets' embeddings 0.105 exact
    edits vs 0.10; from the predictions 0.0375 both) and it kept less of the source (PSNR outside the edit
    29.0 vs 30.7 dB): training/shapes-mini/README.md."""
    config = shapes_mini_edit_decoder()
    config.stage.reference_dropout_prob, config.stage.true_target_prob = 0.5, 0.0  # as measured
    return config


def _rounds(name: str, again, seeds) -> dict:
    """Stages `name2`, `name3`, ...: `again(seed)` for each seed in turn, each from the last one's export."""
    return {f"{name}{n}": functools.partial(again, seed) for n, seed in enumerate(seeds, start=2)}


STAGES = {
    "vae": shapes_mini_vae,
    "vlm": shapes_mini_vlm,
    "vlm_answers": shapes_mini_vlm_answers,
    "ar": shapes_mini_ar,
    "ar_more": shapes_mini_ar_more,
    "ar_edit": shapes_mini_ar_edit,
    **_rounds("ar_edit", shapes_mini_ar_edit_again, AR_EDIT_ROUND_SEEDS),
    "ar_where_only": shapes_mini_ar_where_only,
    "ar_where_relations": shapes_mini_ar_where_relations,
    "ar_relations_only": shapes_mini_ar_relations_only,
    "ar_relations_round": shapes_mini_ar_relations_round,
    "ar_captions_round": shapes_mini_ar_captions_round,
    "ar_counts_only": shapes_mini_ar_counts_only,
    "ar_counts_round": shapes_mini_ar_counts_round,
    "ar_captions_only": shapes_mini_ar_captions_only,
    **_rounds("ar_counts_round", shapes_mini_ar_counts_round_again, (39, 40)),
    "ar_relations_only2": shapes_mini_ar_relations_only_again,
    "ar_counts_round4": functools.partial(shapes_mini_ar_counts_round_again, 42),
    "ar_anneal": shapes_mini_ar_anneal,
    "ar_alike_only": shapes_mini_ar_alike_only,
    "ar_alike_round": functools.partial(shapes_mini_ar_counts_round_again, 49),
    "ar_alike_anneal": shapes_mini_ar_alike_anneal,
    "gen_decoder": shapes_mini_gen_decoder,
    "gen_decoder_more": shapes_mini_gen_decoder_more,
    "edit_decoder": shapes_mini_edit_decoder,
    "edit_decoder_more": shapes_mini_edit_decoder_more,
    **_rounds("edit_decoder_more", shapes_mini_edit_decoder_again, EDIT_DECODER_ROUND_SEEDS),
}
"""The shapes-mini pipeline, in training order."""
EXPERIMENTS = {"ar_reasoning": shapes_mini_ar_reasoning,
               "ar_rope_theta": shapes_mini_ar_rope_theta,
               "ar_input_places": shapes_mini_ar_input_places,
               "ar_listed_counts": shapes_mini_ar_listed_counts,
               "ar_listed_relations": shapes_mini_ar_listed_relations,
               "ar_where": shapes_mini_ar_where,
               "ar_ordered_relations": shapes_mini_ar_ordered_relations,
               "ar_question_first": shapes_mini_ar_question_first,
               "edit_decoder_predicted_targets": shapes_mini_edit_decoder_predicted_targets,
               "edit_decoder_reference_dropout": shapes_mini_edit_decoder_reference_dropout}
"""Recipes measured but not part of the pipeline (training/shapes-mini/README.md has their results)."""
