"""Multi-stage recipes: several stages trained in order, each from the previous stage's export.

`nexusgen train shapes-mini --out RUN` trains every stage of the recipe into `RUN/<stage>/` (a normal
run directory each) and copies the last stage's complete model folder to `RUN/final/`. Overrides name a
stage to target it (`--set vae.max_steps=100`) or apply to every stage (`--set lr=1e-4`). With
`--resume`, stages whose run already reached `max_steps` are skipped and the interrupted one continues.
`--start-at ar --set ar.stage.parent=FOLDER` starts the recipe at a later stage from a model folder
(e.g. one committed by an earlier session: CPU recipes take longer than one machine lives). A decoder stage
given a parent without an AR model (`--set generation_decoder.stage.parent=FLUX_DIR`) takes the previous
stage's export as its `stage.ar_parent`. Stage names
given with the decoder stages' old names (`gen_decoder.max_steps=10`, `--start-at edit_decoder_more`) are
accepted for one release.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from nexusgen.files import atomic_folder, missing_folders, remove_empty
from nexusgen.train import checkpoint, parallel
from nexusgen.train.config import TrainConfig, apply_overrides, current_name
from nexusgen.train.stages.parent import wants_ar_parent


def split_overrides(overrides: list[str], stage_names: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """(overrides for every stage, {stage: its own overrides with the stage prefix removed})."""
    common, per_stage = [], {name: [] for name in stage_names}
    for assignment in overrides:
        head, _, rest = assignment.partition(".")
        head = current_name(head)
        if head in per_stage and rest:
            per_stage[head].append(rest)
        else:
            common.append(assignment)
    return common, per_stage


def stage_configs(stages: dict[str, Callable[[], TrainConfig]], overrides: list[str]) -> dict[str, TrainConfig]:
    """Every stage's resolved config (ValueError for an override that names no field of some stage)."""
    common, per_stage = split_overrides(overrides, list(stages))
    return {name: apply_overrides(make(), common + per_stage[name]) for name, make in stages.items()}


def is_finished(run_dir: Path, config: TrainConfig) -> bool:
    """A stage's run reached its max_steps and exported its folder."""
    latest = checkpoint.latest_checkpoint(run_dir)
    done_step = int(latest.name.rsplit("_", 1)[-1]) if latest is not None else -1
    return (run_dir / "final").is_dir() and done_step >= config.max_steps


def run_stages(stages: dict[str, Callable[[], TrainConfig]], out, overrides: list[str], *,
               resume: bool = False, start_at: str | None = None, require_checkpoint: bool = True) -> dict:
    """Train the stages in order (from `start_at`, whose stage.parent must then be set); returns
    {stage: summary} (skipped stages: "already finished"). With `resume`, stages not started yet start
    from step 0, but a recipe with nothing at all to resume is an error unless not `require_checkpoint`."""
    out = Path(out)
    created = missing_folders(out)
    try:
        return _run_stages(stages, out, overrides, resume=resume, start_at=start_at,
                           require_checkpoint=require_checkpoint)
    except BaseException:
        if parallel.is_main_process():
            remove_empty(created)  # each stage removed what it wrote if it cannot be resumed
        raise


def _run_stages(stages: dict[str, Callable[[], TrainConfig]], out: Path, overrides: list[str], *, resume: bool,
                start_at: str | None, require_checkpoint: bool) -> dict:
    from nexusgen.train.loop import train

    configs = stage_configs(stages, overrides)  # every override is checked before any training
    if start_at is not None:
        configs = _from_stage(configs, start_at)
    started = [n for n in configs if checkpoint.latest_checkpoint(out / n) or (out / n / "final").exists()]
    if resume and require_checkpoint and not started:
        raise ValueError(f"--resume: no stage of {out} has a checkpoint or an export, nothing to resume from; "
                         "drop --resume to start (or pass --resume-if-possible)")
    summaries, previous = {}, None
    for name, config in configs.items():
        if previous is not None and config.stage.parent is None:
            config.stage.parent = str(previous)
        elif previous is not None and config.stage.ar_parent is None and wants_ar_parent(config.stage.name,
                                                                                          config.stage.parent):
            config.stage.ar_parent = str(previous)  # e.g. a decoder's DiT from FLUX, its AR model from the chain
        run_dir = out / name
        if resume and is_finished(run_dir, config):
            parallel.print0(f"stage {name}: already finished in {run_dir}, skipped")
            summaries[name] = "already finished"
        else:
            parallel.print0(f"stage {name}: training into {run_dir}")
            summaries[name] = train(config, run_dir, resume=resume, require_checkpoint=False)
        previous = run_dir
    if parallel.is_main_process():
        _copy_final(previous / "final", out / "final", configs[name].stage.preset)
    parallel.barrier()
    return summaries


def _from_stage(configs: dict[str, TrainConfig], start_at: str) -> dict[str, TrainConfig]:
    start_at = current_name(start_at)
    if start_at not in configs:
        raise ValueError(f"--start-at {start_at!r} is not a stage of this recipe; stages: {', '.join(configs)}")
    names = list(configs)
    kept = {name: configs[name] for name in names[names.index(start_at):]}
    if kept[start_at].stage.parent is None:
        raise ValueError(f"--start-at {start_at} needs the folder it starts from: "
                         f"--set {start_at}.stage.parent=FOLDER")
    return kept


def _copy_final(source: Path, target: Path, preset: str) -> None:
    """RUN/final = the last stage's complete folder, plus the model-level config (nexusgen.json) of the
    recipe's preset, so sampling defaults and grids are recorded rather than inferred."""
    from nexusgen.train.stages.parts import write_preset_config

    with atomic_folder(target) as tmp:
        shutil.copytree(source, tmp, dirs_exist_ok=True)
        write_preset_config(tmp, preset, overwrite=True)
