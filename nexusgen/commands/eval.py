"""`nexusgen eval ...`: the ShapesWorld benchmark and the public benchmarks of `nexusgen.eval`.

Each handler checks its options, its output folder and the benchmark's files first (a bad value fails in
milliseconds, a bad file before the model loads), then calls the typed library function. The exports split
their items over the launcher's ranks as the batch commands do (`torchrun --nproc_per_node N -m nexusgen eval
geneval-export ...`; `nexusgen.batch.runner.Shard`).
"""

from __future__ import annotations

import argparse

from nexusgen.batch.runner import Shard
from nexusgen.files import check_output_folder
from nexusgen.loading.names import check_model_name
from nexusgen.validation import check_guidance, check_int, check_max_new_tokens, check_seed, check_steps


def load_model(name: str):
    """The model (or reference model) `name`, imported on use (`nexusgen.eval.harness.load_model`)."""
    from nexusgen.eval.harness import load_model as load

    return load(name)


def _check_common(args: argparse.Namespace, seeds: int) -> Shard:
    """--model, --seed (for `seeds` consecutive seeds), --batch-size and --out of an export; returns this
    process's shard (the launcher's RANK / WORLD_SIZE)."""
    from nexusgen.eval.harness import REFERENCE_MODELS

    if args.model not in REFERENCE_MODELS:
        check_model_name(args.model)
    check_seed(args.seed, seeds, "--seed")
    check_int(args.batch_size, "--batch-size", 1)
    check_output_folder(args.out)
    return Shard.from_env()


def shapes(args: argparse.Namespace) -> dict:
    """Run (or with --score-only, rescore) the ShapesWorld benchmark; returns results.json's content."""
    from nexusgen.eval.harness import REFERENCE_MODELS
    from nexusgen.eval.shapes import ShapesEvalConfig, check_out_dir, evaluate, override_sampling, score

    if args.score_only:
        return score(args.out)
    tasks = tuple(task.strip() for task in args.tasks.split(",") if task.strip())
    check_int(args.num, "--num", 1)
    check_seed(args.seed, args.num, "--seed")
    steps = None if args.steps is None else check_steps(args.steps, "--steps")
    guidance = None if args.guidance is None else check_guidance(args.guidance, "--guidance")
    edit_guidance = None if args.edit_guidance is None else check_guidance(args.edit_guidance, "--edit-guidance")
    config = ShapesEvalConfig(num=args.num, seed=args.seed, decoder=args.decoder, prompt_style=args.prompt_style,
                              tasks=tasks)
    check_out_dir(args.out)
    if args.model not in REFERENCE_MODELS:
        check_model_name(args.model)
    model = load_model(args.model)
    override_sampling(model, num_steps=steps, guidance_scale=guidance, edit_guidance_scale=edit_guidance)
    if args.embeds == "ground-truth":
        from nexusgen.eval.oracle import GroundTruthEmbedsModel

        model = GroundTruthEmbedsModel(model)
    return evaluate(model, args.out, config)


def geneval_export(args: argparse.Namespace) -> dict:
    """GenEval: prompt folders of samples for its detector-based scorer."""
    from nexusgen.eval import geneval

    check_int(args.images_per_prompt, "--images-per-prompt", 1)
    shard = _check_common(args, args.images_per_prompt)
    prompts = geneval.read_prompts(args.prompts)
    return geneval.export(load_model(args.model), prompts, args.out, images_per_prompt=args.images_per_prompt,
                          seed=args.seed, batch_size=args.batch_size, shard=shard)


def dpg_export(args: argparse.Namespace) -> dict:
    """DPG-Bench: 2x2 grids of 4 samples per prompt."""
    from nexusgen.eval import dpg
    from nexusgen.validation import check_side

    if args.resolution is not None:
        check_side(args.resolution, "--resolution")
    shard = _check_common(args, 4)
    items = dpg.read_prompts(args.prompts)
    return dpg.export(load_model(args.model), items, args.out, resolution=args.resolution, seed=args.seed,
                      batch_size=args.batch_size, shard=shard)


def imgedit_export(args: argparse.Namespace) -> dict:
    """ImgEdit-Bench: one edited image per case, for its judge."""
    from nexusgen.eval import imgedit

    shard = _check_common(args, 1)
    cases = imgedit.read_cases(args.edits, args.images)
    return imgedit.export(load_model(args.model), cases, args.out, seed=args.seed, decoder=args.decoder,
                          batch_size=args.batch_size, shard=shard)


def gedit_export(args: argparse.Namespace) -> dict:
    """GEdit-Bench: the fullset/<task_type>/<lang>/ layout VIEScore reads."""
    from nexusgen.eval import gedit

    check_int(args.area, "--area", 32 * 32, None, " pixels")
    shard = _check_common(args, 1)
    cases = gedit.read_cases(args.data)
    return gedit.export(load_model(args.model), cases, args.out, seed=args.seed, area=args.area,
                        decoder=args.decoder, batch_size=args.batch_size, shard=shard)


def understand(args: argparse.Namespace) -> dict:
    """MME / MMBench / MMMU / POPE: answer the questions, then score them with the official rules."""
    from nexusgen.eval.understanding import runner

    check_int(args.batch_size, "--batch-size", 1)
    check_max_new_tokens(args.max_new_tokens, "--max-new-tokens")
    check_output_folder(args.out)
    if not args.score_only:
        check_model_name(args.model)
    questions = runner.load_questions(args.benchmark, args.data, split=args.split, image_root=args.image_root)
    return runner.run(args.benchmark, questions, args.out, model_name=args.model, score_only=args.score_only,
                      batch_size=args.batch_size, max_new_tokens=args.max_new_tokens)
