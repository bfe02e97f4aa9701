"""The training loop: one explicit function for every stage.

Order: set up (process group, seeds, stage, LoRA, data parallel wrapping, optimiser, schedule, EMA)
-> resume -> for each step: batch -> forward/loss -> backward -> clip -> optimiser step -> log -> eval
-> save -> export of the model folder to RUN_DIR/final.

Precision policy (stated once here; docs/architecture.md §6): master weights and optimiser state are fp32;
`precision="auto"` runs the forward under bf16 autocast on GPU and in plain fp32 on CPU (bf16 matmul
is 100x slower than fp32 on our AVX2 CPUs); losses are reduced in fp32.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from nexusgen.files import atomic_folder, atomic_write_text, git_sha, missing_folders, remove_empty
from nexusgen.train import checkpoint, parallel
from nexusgen.train.config import TrainConfig, config_to_dict, load_config, save_config
from nexusgen.train.ema import EMA
from nexusgen.train.metrics import MetricsLogger, Progress
from nexusgen.train.optim import build_optimizer, build_scheduler
from nexusgen.train.stages import Stage, build_stage
from nexusgen.train.stages.common import LOSS_TOTALS
from nexusgen.train.stages.parts import write_preset_config


def train(config: TrainConfig, run_dir, *, resume: bool = False, require_checkpoint: bool = True) -> dict:
    """Run (or continue) a training run; returns a summary dict.

    Args:
        config: the complete, resolved configuration.
        run_dir: RUN_DIR (config.json, git_sha, metrics.jsonl, checkpoints/, final/).
        resume: continue from the newest complete checkpoint in RUN_DIR.
        require_checkpoint: with `resume`, a RUN_DIR without a complete checkpoint is an error (`--resume`);
            False starts such a run from step 0 (`--resume-if-possible`, and the stages of a multi-stage
            recipe that had not started).

    Raises:
        ValueError: RUN_DIR already holds checkpoints or a final/ export and `resume` is False; `resume`
            with nothing to resume (see `require_checkpoint`); or a bad config.
    """
    config.data.check_files()
    info = parallel.init_distributed(config.dist, config.device)
    run_dir = Path(run_dir)
    latest = checkpoint.latest_checkpoint(run_dir)
    check_run_dir(run_dir, latest, resume=resume, require_checkpoint=require_checkpoint)
    if resume and latest is not None:
        check_resumable(config, run_dir / "config.json")
    created = missing_folders(run_dir)
    try:
        return _train(config, run_dir, info, latest if resume else None)
    except BaseException:
        if info.is_main:
            remove_unfinished_run(run_dir, created)
        raise


def remove_unfinished_run(run_dir: Path, created: list[Path]) -> None:
    """After a failure, remove what a run that cannot be resumed wrote (no complete checkpoint, no final/):
    its files, its unfinished checkpoint folders, and the folders it created, so a failed `train` leaves
    no empty run folder. A run that can be resumed keeps everything."""
    if checkpoint.latest_checkpoint(run_dir) is not None or (run_dir / "final").exists():
        return
    for name in ("config.json", "git_sha", "metrics.jsonl"):
        (run_dir / name).unlink(missing_ok=True)
    for stale in (run_dir / "checkpoints").glob(".step_*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    remove_empty([run_dir / "checkpoints", *created])


def _train(config: TrainConfig, run_dir: Path, info: parallel.DistInfo, latest: Path | None) -> dict:
    """The run itself, after `train`'s checks; `latest`: the checkpoint to resume from, or None."""
    resume = latest is not None
    micro_batch = config.micro_batch_size(info.world_size)  # validates the batch split early
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    _set_determinism(config.deterministic)

    parts = build_training(config, info)
    stage, model, optimizer, scheduler, ema = (parts.stage, parts.model, parts.optimizer, parts.scheduler,
                                               parts.ema)

    start_step = 0
    if resume:
        start_step, data_state = checkpoint.load_checkpoint(
            latest, model=model, optimizer=optimizer, scheduler=scheduler, info=info, ema=ema)
        stage.stream.load_state_dict(data_state)
        parallel.print0(f"resumed from {latest} at step {start_step}")
    _prepare_run_dir(config, run_dir, info)  # after the checkpoint loaded: a failed resume changes nothing
    logger = MetricsLogger(run_dir / "metrics.jsonl", enabled=info.is_main,
                           resume_step=start_step if resume else None)
    progress = Progress(config.max_steps, start_step, enabled=info.is_main and config.progress)
    autocast = _autocast_context(config.precision, info.device)
    parallel.print0(f"training stage {config.stage.name}: {_count_params(stage.module)} on "
                    f"{info.world_size} x {info.device}, micro-batch {micro_batch}")

    record: dict = {}
    for step in range(start_step, config.max_steps):
        started = time.perf_counter()
        micro_batches = next_micro_batches(stage, config, info)
        record = train_step(model, optimizer, micro_batches, config=config, autocast=autocast,
                            world_size=info.world_size)
        record["lr"] = scheduler.get_last_lr()[0]
        scheduler.step()
        done = step + 1
        if ema is not None:
            ema.update(done)
        evaluate_now = bool(config.eval_every) and done % config.eval_every == 0
        if done % config.log_every == 0 or done == config.max_steps or evaluate_now:
            record = _log_record(record, stage, micro_batches, info, done, time.perf_counter() - started)
            if evaluate_now:
                record.update(evaluate(stage, model, config, info))
            logger.log(record)
            progress.update(record)
        if config.save_every and done % config.save_every == 0:
            checkpoint.save_checkpoint(run_dir, done, model=model, optimizer=optimizer, scheduler=scheduler,
                                       data_state=stage.stream.state_dict(), info=info,
                                       keep_last=config.checkpoint.keep_last, ema=ema)
    progress.close()
    logger.close()
    if config.checkpoint.export_final:
        export_final(stage, model, ema, config, info, run_dir / "final")
    parallel.barrier()
    torch.use_deterministic_algorithms(was_deterministic)
    return {"run_dir": str(run_dir), "steps": config.max_steps, "resumed_from": start_step,
            "final_loss": record.get("loss"), "world_size": info.world_size}


def check_run_dir(run_dir: Path, latest: Path | None, *, resume: bool, require_checkpoint: bool) -> None:
    """Never overwrite a run, and never pretend to resume one: ValueError before anything is built."""
    finished = (run_dir / "final").exists()
    if not resume and (latest is not None or finished):
        # a finished run saved without checkpoints (save_every=0) is a result too: never overwrite silently
        raise ValueError(f"{run_dir} already holds a run; pass --resume or choose another --out")
    if resume and latest is None and (require_checkpoint or finished):
        what = "a finished run without checkpoints (save_every=0)" if finished else "no complete checkpoint"
        hint = "" if finished else "; drop --resume to start a new run (or pass --resume-if-possible)"
        raise ValueError(f"--resume: {run_dir} holds {what}, nothing to resume from{hint}")


@dataclass
class TrainingParts:
    """Everything `train` builds before the first step (also used by the training benchmark)."""

    stage: Stage
    model: torch.nn.Module
    """`stage.module`, wrapped for data parallelism (DDP) or sharded in place (FSDP2)."""
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    ema: EMA | None


def build_training(config: TrainConfig, info: parallel.DistInfo) -> TrainingParts:
    """Build the stage, LoRA, data-parallel wrapping, optimiser, LR schedule and EMA, in that order."""
    # Same seed on every rank while building, so every rank starts from identical weights (FSDP2 does
    # not broadcast them); then per-rank seeds for everything drawn during training.
    parallel.seed_everything(config.seed, 0)
    stage = build_stage(config, info)
    if config.lora.rank:
        from nexusgen.train.lora import apply_lora

        apply_lora(stage.module, config.lora)
    parallel.seed_everything(config.seed, info.rank)
    model = parallel.parallelize(stage.module, config.dist, info, stage.shard_units)
    optimizer = build_optimizer(stage.module, config)
    scheduler = build_scheduler(optimizer, config)
    ema = (EMA(stage.module, config.stage.ema_decay, warmup=config.stage.ema_warmup) if config.stage.ema_decay
           else None)
    return TrainingParts(stage, model, optimizer, scheduler, ema)


def next_micro_batches(stage: Stage, config: TrainConfig, info: parallel.DistInfo) -> list[dict]:
    """This rank's collated accumulation micro-batches for one step, on its device, each carrying the
    global batch's loss denominators (`with_loss_totals`)."""
    samples = stage.stream.next_step(config.batch_size, info.rank, info.world_size,
                                     config.optim.grad_accum_steps)
    return with_loss_totals(stage, [_to_device(stage.collate(s), info.device) for s in samples], info)


def with_loss_totals(stage: Stage, micro_batches: list[dict], info: parallel.DistInfo) -> list[dict]:
    """Attach to every micro-batch the global batch's `loss_units` (summed over this step's micro-batches
    and over ranks: one collective), so that each loss is a mean over the global batch, not a mean of
    per-rank or per-micro-batch means (they differ when answers have different lengths)."""
    totals: dict[str, float] = {}
    for batch in micro_batches:
        for unit, value in stage.loss_units(batch).items():
            totals[unit] = totals.get(unit, 0) + value
    totals = parallel.all_reduce_sums(totals, info)
    return [{**batch, LOSS_TOTALS: totals} for batch in micro_batches]


def train_step(model, optimizer, micro_batches: list[dict], *, config: TrainConfig, autocast,
               world_size: int = 1) -> dict:
    """Forward/backward over the accumulation micro-batches, clip, optimiser step.

    The micro-batches carry the global denominators (`next_micro_batches`), so each one's loss is its
    share of the global batch's loss and their sum over micro-steps and ranks is that loss. DDP and FSDP
    average gradients over ranks, so the backward pass scales by `world_size` to make the gradient that of
    the sum. Returns this rank's shares of the loss terms (summed over micro-batches; `_log_record` sums
    them over ranks) and the pre-clip norm of the global gradient.
    """
    accum = len(micro_batches)
    terms: dict[str, float] = {}
    for index, batch in enumerate(micro_batches):
        with parallel.gradient_sync(model, enabled=index == accum - 1), autocast:
            out = model(batch)
            (out["loss"] * world_size).backward()
        for name, value in out.items():
            terms[name] = terms.get(name, 0.0) + float(value.detach())
    params = [p for p in model.parameters() if p.requires_grad]
    max_norm = config.optim.grad_clip if config.optim.grad_clip > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    if hasattr(grad_norm, "full_tensor"):  # FSDP2: a DTensor
        grad_norm = grad_norm.full_tensor()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return {**terms, "grad_norm": float(grad_norm)}


@torch.no_grad()
def evaluate(stage: Stage, model, config: TrainConfig, info: parallel.DistInfo) -> dict[str, float]:
    """The periodic evaluation hook: the stage's own `evaluate`, else its loss terms on a fixed batch
    (drawn once from the same sources, in the order of seed + 1), averaged over ranks; keys "eval/*"."""
    if stage.evaluate is not None:
        values = stage.evaluate(stage.module)
    else:
        if getattr(stage, "_eval_batch", None) is None:
            from nexusgen.train.stages.common import SampleStream

            fixed = SampleStream(stage.stream.sampler.sources, seed=config.seed + 1)
            samples = fixed.next_step(config.batch_size, info.rank, info.world_size, 1)[0]
            stage._eval_batch = with_loss_totals(stage, [_to_device(stage.collate(samples), info.device)], info)[0]
        with torch.no_grad(), _autocast_context(config.precision, info.device):
            values = {k: float(v) for k, v in model(stage._eval_batch).items()}
        values = parallel.all_reduce_sums(values, info)  # shares of the global batch's means
    return {f"eval/{k}": v for k, v in values.items()}


def export_final(stage: Stage, model, ema, config: TrainConfig, info: parallel.DistInfo,
                 out_dir: Path) -> None:
    """Write the model folder atomically: EMA weights if any, LoRA merged, unsharded (rank 0 writes).

    Collective (gathers the weights); call on every rank.
    """
    module = stage.module
    sharded = info.is_distributed and config.dist.strategy == "fsdp"
    if ema is not None or sharded:
        state = parallel.full_model_state_dict(model)  # collective under FSDP
        if ema is not None:
            state.update(ema.state_dict())
        if info.is_main:
            module = _fresh_module(config) if sharded else module  # a sharded module: rebuild it whole
            module.load_state_dict(state)
    if info.is_main:
        if config.lora.rank:
            from nexusgen.train.lora import merge_lora

            merge_lora(module)
        with atomic_folder(out_dir) as tmp:
            stage.export(module, tmp)
            write_preset_config(Path(tmp), config.stage.preset, overwrite=False)
    parallel.barrier()


def export_checkpoint(run_dir, out_dir, step: int | None = None, ema: bool = True) -> Path:
    """Write a run's checkpoint (the newest, or the one at `step`) as a model folder, as the run's final
    export would be (EMA weights where the stage keeps them; nexusgen.json): to evaluate a run while it
    trains, or an earlier step than its end. On CPU, in this process. `ema=False` exports the trained
    weights themselves (an EMA without warm-up can still hold much of a parent's weights).

    Raises:
        ValueError: no config.json in `run_dir`, no such checkpoint, or `out_dir` exists.
    """
    from nexusgen.train.config import load_config

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if not (run_dir / "config.json").is_file():
        raise ValueError(f"{run_dir} is not a training run (no config.json)")
    found = dict(checkpoint.list_checkpoints(run_dir))
    if not found or (step is not None and step not in found):
        have = ", ".join(map(str, sorted(found))) or "none"
        raise ValueError(f"{run_dir}: no checkpoint{'' if step is None else f' at step {step}'} (steps: {have})")
    if out_dir.exists():
        raise ValueError(f"{out_dir} exists; choose a new --out")
    config = load_config(run_dir / "config.json")
    info = parallel.DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    parts = build_training(config, info)
    done, _ = checkpoint.load_checkpoint(found[step if step is not None else max(found)], model=parts.model,
                                         optimizer=parts.optimizer, scheduler=parts.scheduler, info=info,
                                         ema=parts.ema)
    export_final(parts.stage, parts.model, parts.ema if ema else None, config, info, out_dir)
    parallel.print0(f"exported step {done} of {run_dir} to {out_dir}{'' if ema else ' (trained weights, not EMA)'}")
    return out_dir


def _fresh_module(config: TrainConfig) -> torch.nn.Module:
    single = parallel.DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    module = build_stage(config, single).module
    if config.lora.rank:
        from nexusgen.train.lora import apply_lora

        apply_lora(module, config.lora)
    return module


def _log_record(record: dict, stage: Stage, micro_batches, info, step: int, seconds: float) -> dict:
    """Sum the ranks' shares of the loss terms (the global batch's means); add throughput (global samples /
    tokens / images per second). The gradient norm and the learning rate are the same on every rank."""
    lr, grad_norm = record.pop("lr"), record.pop("grad_norm")
    record = {**parallel.all_reduce_sums(record, info), "grad_norm": grad_norm, "lr": lr}
    counts: dict[str, float] = {}
    for batch in micro_batches:
        for name, value in (stage.count(batch) if stage.count else {}).items():
            counts[name] = counts.get(name, 0) + value
    counts = parallel.all_reduce_mean(counts, info)
    rates = {f"{name}_per_s": value * info.world_size / seconds for name, value in counts.items()}
    bad = parallel.all_reduce_sum(sum(stage.stream.bad_counts().values()), info)  # skipped (--skip-bad)
    return {"step": step, **record, "step_time_s": seconds, **rates, **({"bad_records": bad} if bad else {})}


def _to_device(batch, device: torch.device):
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch.to(device, non_blocking=True) if isinstance(batch, torch.Tensor) else batch


def _autocast_context(precision: str, device: torch.device):
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if not use_bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _set_determinism(deterministic: bool) -> None:
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # required by cuBLAS in this mode
        torch.use_deterministic_algorithms(True, warn_only=True)


RESUME_MAY_CHANGE = ("max_steps", "save_every", "log_every", "eval_every", "progress", "checkpoint.keep_last",
                     "data.skip_bad")
"""Config fields a `--resume` may change. Anything else (data, model, optimiser, seed, batch) would
silently make the resumed run a different run from the one its checkpoints came from."""


def check_resumable(config: TrainConfig, stored_path: Path) -> None:
    """ValueError naming the fields where `config` differs from the run's stored config.json."""
    if not stored_path.is_file():
        return
    # Read back through the config classes, so a run stored under an older spelling of the same settings
    # (a stage's old name, an untyped stage.model) compares equal; a removed option turned on is refused.
    stored = _flatten(json.loads(json.dumps(config_to_dict(load_config(stored_path)))))
    current = _flatten(json.loads(json.dumps(config_to_dict(config))))
    changed = sorted(k for k in stored.keys() | current.keys()
                     if stored.get(k) != current.get(k) and not k.startswith(RESUME_MAY_CHANGE))
    if changed:
        details = ", ".join(f"{k}: {stored.get(k)!r} -> {current.get(k)!r}" for k in changed[:5])
        raise ValueError(f"--resume with a different config than {stored_path} ({details}); only "
                         f"{', '.join(RESUME_MAY_CHANGE)} may change: resume with the run's own settings")


def _flatten(data: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict) and key not in ("model", "loss_weights", "world_options"):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _prepare_run_dir(config: TrainConfig, run_dir: Path, info: parallel.DistInfo) -> None:
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir / "config.json")
        atomic_write_text(run_dir / "git_sha", git_sha() + "\n")
    parallel.barrier()


def _count_params(module: torch.nn.Module) -> str:
    total = sum(p.numel() for p in module.parameters())
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return f"{trainable / 1e6:.2f} M trainable of {total / 1e6:.2f} M parameters"
