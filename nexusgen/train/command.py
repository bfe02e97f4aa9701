"""`nexusgen train RECIPE --out RUN_DIR [--set key=value ...] [--resume | --resume-if-possible] [--skip-bad]
[--image-root DIR] [--start-at STAGE]` and
`nexusgen export-checkpoint RUN_DIR --out FOLDER [--step N]`."""

from __future__ import annotations

import argparse

from nexusgen.train.config import TrainConfig, apply_overrides


def resolve_config(recipe: str, overrides: list[str], *, skip_bad: bool = False) -> TrainConfig:
    """Recipe config with the `--set` overrides applied (ValueError for an unknown recipe or field)."""
    from nexusgen.recipes import get_recipe  # recipes build on train.config; imported here, not at top

    config = apply_overrides(get_recipe(recipe), overrides)
    if skip_bad:
        config = apply_overrides(config, ["data.skip_bad=true"])
    return config


def train_command(args: argparse.Namespace) -> int:
    """CLI handler: resolve the config, train, tear the process group down. Returns the exit code."""
    from nexusgen.recipes import PIPELINES
    from nexusgen.train import parallel
    from nexusgen.train.loop import train

    overrides = [*args.overrides, *(["data.skip_bad=true"] if args.skip_bad else []),
                 *([f"data.image_root={args.image_root}"] if args.image_root is not None else [])]
    resume = args.resume or args.resume_if_possible
    if args.dry_run:
        return dry_run(args.recipe, overrides, ranks=args.ranks, seq_len=args.seq_len)
    try:
        if args.recipe in PIPELINES:
            from nexusgen.train.pipeline import run_pipeline

            summary = run_pipeline(PIPELINES[args.recipe], args.out, overrides, resume=resume,
                                   start_at=args.start_at, require_checkpoint=not args.resume_if_possible)
        else:
            if args.start_at is not None:
                raise ValueError(f"--start-at is for multi-stage recipes ({', '.join(PIPELINES)}), "
                                 f"not {args.recipe!r}")
            summary = train(resolve_config(args.recipe, overrides), args.out, resume=resume,
                            require_checkpoint=not args.resume_if_possible)
    finally:
        parallel.destroy_distributed()
    parallel.print0(f"done: {summary}")
    return 0


def dry_run(recipe: str, overrides: list[str], *, ranks: int, seq_len: int) -> dict:
    """The memory plan of every stage of `recipe`, built on the meta device (`train/plan.py`)."""
    from nexusgen.recipes import PIPELINES
    from nexusgen.train.plan import plan_recipe

    if ranks < 1 or seq_len < 1:
        raise ValueError(f"--ranks and --seq-len must be >= 1, got {ranks} and {seq_len}")
    if recipe in PIPELINES:
        from nexusgen.train.pipeline import stage_configs

        configs = stage_configs(PIPELINES[recipe], overrides)
    else:
        configs = {resolve_config(recipe, overrides).stage.name: resolve_config(recipe, overrides)}
    return {"recipe": recipe, **plan_recipe(configs, ranks, seq_len)}


def export_checkpoint_command(args: argparse.Namespace) -> int:
    """CLI handler: a run's checkpoint as a model folder."""
    from nexusgen.train.loop import export_checkpoint

    export_checkpoint(args.run_dir, args.out, step=args.step, ema=not args.no_ema)
    return 0
