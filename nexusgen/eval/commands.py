"""The edge of the public-benchmark commands: argparse Namespaces stop here (see nexusgen/cli.py).

Each handler validates the benchmark's files first (a bad file fails before the model loads), then calls
the typed library function.
"""

from __future__ import annotations

from . import dpg, gedit, geneval, imgedit
from .harness import load_model


def geneval_export(args) -> dict:
    prompts = geneval.read_prompts(args.prompts)
    if args.images_per_prompt < 1:
        raise ValueError(f"--images-per-prompt must be >= 1, got {args.images_per_prompt}")
    return geneval.export(load_model(args.model), prompts, args.out, images_per_prompt=args.images_per_prompt,
                          seed=args.seed, batch_size=args.batch_size)


def dpg_export(args) -> dict:
    items = dpg.read_prompts(args.prompts)
    if args.resolution is not None and args.resolution < 16:
        raise ValueError(f"--resolution must be >= 16, got {args.resolution}")
    return dpg.export(load_model(args.model), items, args.out, resolution=args.resolution, seed=args.seed,
                      batch_size=args.batch_size)


def imgedit_export(args) -> dict:
    cases = imgedit.read_cases(args.edits, args.images)
    return imgedit.export(load_model(args.model), cases, args.out, seed=args.seed, decoder=args.decoder,
                          batch_size=args.batch_size)


def gedit_export(args) -> dict:
    cases = gedit.read_cases(args.data)
    if args.area < 32 * 32:
        raise ValueError(f"--area must be >= 1024 pixels, got {args.area}")
    return gedit.export(load_model(args.model), cases, args.out, seed=args.seed, area=args.area,
                        decoder=args.decoder, batch_size=args.batch_size)


def understand(args) -> dict:
    from .understanding import runner

    questions = runner.load_questions(args.benchmark, args.data, split=args.split, image_root=args.image_root)
    return runner.run(args.benchmark, questions, args.out, model_name=args.model, score_only=args.score_only,
                      batch_size=args.batch_size, max_new_tokens=args.max_new_tokens)
