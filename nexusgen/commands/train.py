"""`nexusgen train RECIPE --out RUN_DIR [--set key=value ...] [--resume | --resume-if-possible] [--skip-bad]
[--image-root DIR] [--start-at STAGE] [--dry-run [--ranks N] [--seq-len S]]` and
`nexusgen export-checkpoint RUN_DIR --out FOLDER [--step N] [--no-ema]`.

The run folder is checked (writable, not a file) before torch and the recipes load; a run that fails before
its first complete checkpoint removes what it wrote (`nexusgen.train.loop.train`).
"""

from __future__ import annotations

import argparse

from nexusgen.files import check_output_folder
from nexusgen.validation import check_int


def train(args: argparse.Namespace) -> int | dict:
    """Resolve the recipe, train (one stage, or a multi-stage recipe in order), tear the process group down;
    with --dry-run, the memory plan instead (printed as JSON)."""
    overrides = [*args.overrides, *(["data.skip_bad=true"] if args.skip_bad else []),
                 *([f"data.image_root={args.image_root}"] if args.image_root is not None else [])]
    if args.dry_run:
        return dry_run(args.recipe, overrides, ranks=args.ranks, seq_len=args.seq_len)
    check_output_folder(args.out)
    from nexusgen.recipes import MULTI_STAGE_RECIPES, resolve_recipe  # no torch: the recipe is checked first

    config = None
    if args.recipe not in MULTI_STAGE_RECIPES:
        if args.start_at is not None:
            raise ValueError(f"--start-at is for multi-stage recipes ({', '.join(MULTI_STAGE_RECIPES)}), "
                             f"not {args.recipe!r}")
        config = resolve_recipe(args.recipe, overrides)
    from nexusgen.train import loop, parallel
    from nexusgen.train.multistage import run_stages

    resume = args.resume or args.resume_if_possible
    try:
        if config is None:
            summary = run_stages(MULTI_STAGE_RECIPES[args.recipe], args.out, overrides, resume=resume,
                                 start_at=args.start_at, require_checkpoint=not args.resume_if_possible)
        else:
            summary = loop.train(config, args.out, resume=resume, require_checkpoint=not args.resume_if_possible)
    finally:
        parallel.destroy_distributed()
    parallel.print0(f"done: {summary}")
    return 0


def dry_run(recipe: str, overrides: list[str], *, ranks: int, seq_len: int) -> dict:
    """The memory plan of every stage of `recipe`, built on the meta device (`nexusgen.train.plan`)."""
    check_int(ranks, "--ranks", 1)
    check_int(seq_len, "--seq-len", 1)
    from nexusgen.recipes import MULTI_STAGE_RECIPES, resolve_recipe
    from nexusgen.train.multistage import stage_configs
    from nexusgen.train.plan import plan_recipe

    if recipe in MULTI_STAGE_RECIPES:
        configs = stage_configs(MULTI_STAGE_RECIPES[recipe], overrides)
    else:
        config = resolve_recipe(recipe, overrides)
        configs = {config.stage.name: config}
    return {"recipe": recipe, **plan_recipe(configs, ranks, seq_len)}


def export_checkpoint(args: argparse.Namespace) -> int:
    """A run's checkpoint as a model folder."""
    if args.step is not None:
        check_int(args.step, "--step", 0)
    check_output_folder(args.out)
    from nexusgen.train import loop

    loop.export_checkpoint(args.run_dir, args.out, step=args.step, ema=not args.no_ema)
    return 0
