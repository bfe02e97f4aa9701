"""`nexusgen train RECIPE --out RUN_DIR [--set key=value ...] [--resume | --resume-if-possible] [--skip-bad]
[--image-root DIR] [--start-at STAGE] [--dry-run [--ranks N] [--seq-len S]]` and
`nexusgen export-checkpoint RUN_DIR --out FOLDER [--step N] [--no-ema]`."""

from __future__ import annotations

import argparse

from nexusgen.recipes import MULTI_STAGE_RECIPES, resolve_recipe
from nexusgen.train import loop, parallel
from nexusgen.train.multistage import run_stages, stage_configs


def train(args: argparse.Namespace) -> int | dict:
    """Resolve the recipe, train (one stage, or a multi-stage recipe in order), tear the process group down;
    with --dry-run, the memory plan instead (printed as JSON)."""
    overrides = [*args.overrides, *(["data.skip_bad=true"] if args.skip_bad else []),
                 *([f"data.image_root={args.image_root}"] if args.image_root is not None else [])]
    if args.dry_run:
        return dry_run(args.recipe, overrides, ranks=args.ranks, seq_len=args.seq_len)
    resume = args.resume or args.resume_if_possible
    try:
        if args.recipe in MULTI_STAGE_RECIPES:
            summary = run_stages(MULTI_STAGE_RECIPES[args.recipe], args.out, overrides, resume=resume,
                                 start_at=args.start_at, require_checkpoint=not args.resume_if_possible)
        else:
            if args.start_at is not None:
                raise ValueError(f"--start-at is for multi-stage recipes ({', '.join(MULTI_STAGE_RECIPES)}), "
                                 f"not {args.recipe!r}")
            summary = loop.train(resolve_recipe(args.recipe, overrides), args.out, resume=resume,
                                 require_checkpoint=not args.resume_if_possible)
    finally:
        parallel.destroy_distributed()
    parallel.print0(f"done: {summary}")
    return 0


def dry_run(recipe: str, overrides: list[str], *, ranks: int, seq_len: int) -> dict:
    """The memory plan of every stage of `recipe`, built on the meta device (`nexusgen.train.plan`)."""
    from nexusgen.train.plan import plan_recipe

    if ranks < 1 or seq_len < 1:
        raise ValueError(f"--ranks and --seq-len must be >= 1, got {ranks} and {seq_len}")
    if recipe in MULTI_STAGE_RECIPES:
        configs = stage_configs(MULTI_STAGE_RECIPES[recipe], overrides)
    else:
        config = resolve_recipe(recipe, overrides)
        configs = {config.stage.name: config}
    return {"recipe": recipe, **plan_recipe(configs, ranks, seq_len)}


def export_checkpoint(args: argparse.Namespace) -> int:
    """A run's checkpoint as a model folder."""
    loop.export_checkpoint(args.run_dir, args.out, step=args.step, ema=not args.no_ema)
    return 0
