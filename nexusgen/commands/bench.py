"""`nexusgen bench ar|decoder|e2e|train|serve|gpu|assemble`: the benchmarks of `nexusgen.bench`; their reports are
printed as JSON."""

from __future__ import annotations

import argparse
import importlib

from nexusgen.validation import check_device, check_steps


def bench(args: argparse.Namespace) -> dict:
    """Run the benchmark named by `args.what` (only its module is imported)."""
    if args.steps is not None:
        check_steps(args.steps, "--steps")
    if args.device is not None:
        check_device(args.device, "--device")
    module = importlib.import_module(f"nexusgen.bench.{args.what}")
    if args.what in ("e2e", "serve"):  # the two that load a model and sample with it
        return module.run(args.model, quick=args.quick, steps=args.steps)
    if args.what == "gpu":
        return module.run(module.GPUBenchSettings(
            device=args.device, dtype=args.dtype, blocks=args.blocks, vocab=args.vocab,
            intermediate=args.intermediate, sizes=tuple(args.sizes), e2e_size=args.e2e_size,
            e2e_steps=args.e2e_steps, negative_tokens=args.negative_tokens, edit_image=args.edit_image,
            decode_tokens=args.decode_tokens, repeats=args.repeats, warmup=args.warmup))
    if args.what == "assemble":
        return module.run(blocks=args.blocks, intermediate=args.intermediate)
    return module.run(quick=args.quick)
