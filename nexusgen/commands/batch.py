"""`nexusgen generate --prompts FILE`, `nexusgen edit --edits FILE`, `nexusgen understand --questions FILE`:
batch work over files of items (`nexusgen.batch`; the user's guide is docs/batch.md).

Every option, the whole input file and the output are checked before torch loads: a bad line stops the run
there (one line, `file:line`, exit code 2) unless `--skip-bad`, which reports each bad line on stderr and
goes on. The shard comes from the launcher's RANK / WORLD_SIZE (`torchrun --nproc_per_node N -m nexusgen
...`); with GPUs, rank r of a node uses cuda:LOCAL_RANK unless --device says otherwise. The summary line
(done, skipped as already complete, failed) goes to stdout; stderr stays empty on a clean run without a
terminal.
"""

from __future__ import annotations

import argparse
import sys

from nexusgen.batch.items import EDITS, PROMPTS, QUESTIONS, read_items
from nexusgen.batch.runner import ItemError, RunSummary, Shard
from nexusgen.commands.common import check_model_options, image_options, load_model, rank_device
from nexusgen.files import check_output_file, check_output_folder
from nexusgen.validation import check_int, check_max_new_tokens, check_sampling, check_seed


def generate_batch(args: argparse.Namespace) -> int:
    """`nexusgen generate --prompts FILE --out DIR`."""
    if args.prompt is not None:
        raise ValueError("--prompts FILE takes the prompts from the file: drop --prompt")
    return _image_batch(args, args.prompts, PROMPTS, "generate")


def edit_batch(args: argparse.Namespace) -> int:
    """`nexusgen edit --edits FILE --out DIR`."""
    return _image_batch(args, args.edits, EDITS, "edit")


def understand_batch(args: argparse.Namespace) -> int:
    """`nexusgen understand --questions FILE --out FILE.jsonl`."""
    from nexusgen.batch.jobs import AnswerOptions, answer_questions

    if args.out is None:
        raise ValueError("--questions needs --out FILE.jsonl (where the answers go)")
    if args.image or args.prompt is not None:
        raise ValueError("--questions FILE takes the images and questions from the file: drop --image / --prompt")
    answer = AnswerOptions(max_new_tokens=check_max_new_tokens(args.max_new_tokens, "--max-new-tokens"),
                           temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    check_sampling(args.temperature, args.top_k, args.top_p, ("--temperature", "--top-k", "--top-p"))
    out = check_output_file(args.out, (".jsonl",))
    run, items, bad = _prepare(args, args.questions, QUESTIONS)
    summary = answer_questions(_model_loader(args, run.shard), args.model, items, out, answer=answer, run=run)
    return _finish(args, summary, bad, run.shard)


def _image_batch(args: argparse.Namespace, path: str, kind: str, task: str) -> int:
    from nexusgen.batch.jobs import ImageOptions, edit_images, generate_images

    options = image_options(args)
    image = ImageOptions(height=options["height"], width=options["width"], num_steps=options["num_steps"],
                         guidance_scale=options["guidance_scale"], decoder=getattr(args, "decoder", "editing"))
    out = check_output_folder(args.out)
    run, items, bad = _prepare(args, path, kind)
    job = generate_images if task == "generate" else edit_images
    summary = job(_model_loader(args, run.shard), args.model, items, out, image=image, run=run)
    return _finish(args, summary, bad, run.shard)


def _prepare(args: argparse.Namespace, path: str, kind: str):
    """The run options, the file's good items and its bad lines (ValueError: a bad line without --skip-bad)."""
    from nexusgen.batch.jobs import RunOptions

    check_seed(args.seed, 1, "--seed")
    batch_size = check_int(args.batch_size, "--batch-size", 1)
    check_model_options(args)
    shard = Shard.from_env()
    items, bad = read_items(path, kind, seed=args.seed)
    if bad and not args.skip_bad:
        more = f" (and {len(bad) - 1} more bad line{'s' if len(bad) > 2 else ''})" if len(bad) > 1 else ""
        raise ValueError(f"{bad[0]}{more}; fix the file, or pass --skip-bad to skip bad items")
    if shard.rank == 0:  # every rank reads the file; one reports its bad lines
        for error in bad:
            _report(args)(str(error))
    run = RunOptions(batch_size=batch_size, shard=shard, skip_bad=args.skip_bad, report=_report(args))
    return run, items, bad


def _model_loader(args: argparse.Namespace, shard: Shard):
    """Loads the model when first called; with several ranks and GPUs, rank r takes cuda:LOCAL_RANK."""

    def load():
        return load_model(args.model, rank_device(args.device, shard), args.dtype, args.offload, args.fp8)

    return load


def _report(args: argparse.Namespace):
    def report(line: str) -> None:
        print(f"nexusgen {args.command}: bad item skipped: {line}", file=sys.stderr, flush=True)

    return report


def _finish(args: argparse.Namespace, summary: RunSummary, bad: list[ItemError], shard: Shard) -> int:
    summary.total += len(bad)
    summary.failed += len(bad) if shard.rank == 0 else 0  # rank 0 reported them
    print(f"nexusgen {args.command}: {summary.line()} -> {args.out}", flush=True)
    return 0
