"""`nexusgen eval ...`: the ShapesWorld benchmark and the public benchmarks of `nexusgen.eval`.

Each handler validates the benchmark's files first (a bad file fails before the model loads), then calls the
typed library function.
"""

from __future__ import annotations

import argparse

from nexusgen.eval import dpg, gedit, geneval, imgedit
from nexusgen.eval.harness import load_model
from nexusgen.eval.oracle import GroundTruthEmbedsModel
from nexusgen.eval.shapes import ShapesEvalConfig, evaluate, override_sampling, score


def shapes(args: argparse.Namespace) -> dict:
    """Run (or with --score-only, rescore) the ShapesWorld benchmark; returns results.json's content."""
    if args.score_only:
        return score(args.out)
    tasks = tuple(task.strip() for task in args.tasks.split(",") if task.strip())
    config = ShapesEvalConfig(num=args.num, seed=args.seed, decoder=args.decoder, prompt_style=args.prompt_style,
                              tasks=tasks)  # checked before the model loads
    model = load_model(args.model)
    override_sampling(model, num_steps=args.steps, guidance_scale=args.guidance,
                      edit_guidance_scale=args.edit_guidance)
    if args.embeds == "ground-truth":
        model = GroundTruthEmbedsModel(model)
    return evaluate(model, args.out, config)


def geneval_export(args: argparse.Namespace) -> dict:
    """GenEval: prompt folders of samples for its detector-based scorer."""
    prompts = geneval.read_prompts(args.prompts)
    if args.images_per_prompt < 1:
        raise ValueError(f"--images-per-prompt must be >= 1, got {args.images_per_prompt}")
    return geneval.export(load_model(args.model), prompts, args.out, images_per_prompt=args.images_per_prompt,
                          seed=args.seed, batch_size=args.batch_size)


def dpg_export(args: argparse.Namespace) -> dict:
    """DPG-Bench: 2x2 grids of 4 samples per prompt."""
    items = dpg.read_prompts(args.prompts)
    if args.resolution is not None and args.resolution < 16:
        raise ValueError(f"--resolution must be >= 16, got {args.resolution}")
    return dpg.export(load_model(args.model), items, args.out, resolution=args.resolution, seed=args.seed,
                      batch_size=args.batch_size)


def imgedit_export(args: argparse.Namespace) -> dict:
    """ImgEdit-Bench: one edited image per case, for its judge."""
    cases = imgedit.read_cases(args.edits, args.images)
    return imgedit.export(load_model(args.model), cases, args.out, seed=args.seed, decoder=args.decoder,
                          batch_size=args.batch_size)


def gedit_export(args: argparse.Namespace) -> dict:
    """GEdit-Bench: the fullset/<task_type>/<lang>/ layout VIEScore reads."""
    cases = gedit.read_cases(args.data)
    if args.area < 32 * 32:
        raise ValueError(f"--area must be >= 1024 pixels, got {args.area}")
    return gedit.export(load_model(args.model), cases, args.out, seed=args.seed, area=args.area,
                        decoder=args.decoder, batch_size=args.batch_size)


def understand(args: argparse.Namespace) -> dict:
    """MME / MMBench / MMMU / POPE: answer the questions, then score them with the official rules."""
    from nexusgen.eval.understanding import runner

    questions = runner.load_questions(args.benchmark, args.data, split=args.split, image_root=args.image_root)
    return runner.run(args.benchmark, questions, args.out, model_name=args.model, score_only=args.score_only,
                      batch_size=args.batch_size, max_new_tokens=args.max_new_tokens)
