"""`nexusgen convert OFFICIAL_DIR OUT_DIR` (official Nexus-Gen checkpoints -> a nexusgen model folder),
`nexusgen export-official MODEL_DIR OUT_DIR` (back to the official Nexus-GenV2 layout) and `nexusgen assemble`
(an untrained model folder from stock Qwen2.5-VL-Instruct + FLUX.1-dev). Progress goes to stderr."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nexusgen.convert.assemble import assemble_model
from nexusgen.convert.export import export_official as export_folder
from nexusgen.convert.official import convert_official


def _log(line: str) -> None:
    print(line, file=sys.stderr)


def convert(args: argparse.Namespace) -> int:
    """Convert every official part found (with --flux: CLIP("") and the T5 negative branch)."""
    convert_official(args.official_dir, args.out_dir, log=_log, vae_norm_num_groups=args.vae_norm_groups,
                     flux_dir=args.flux, negative_prompt=args.negative_prompt)
    return 0


def export_official(args: argparse.Namespace) -> int:
    """A nexusgen model folder (or a run's final/) in the official layout."""
    _log(f"exporting {args.model_dir} -> {args.out_dir}")
    export_folder(args.model_dir, args.out_dir, dtype=args.dtype, log=_log)
    return 0


def assemble(args: argparse.Namespace) -> int:
    """Write the untrained model folder; prints its path."""
    for flag, path in (("--qwen", args.qwen), ("--flux", args.flux)):
        if not Path(path).is_dir():
            raise ValueError(f"{flag} {path}: not a directory")
    assemble_model(args.qwen, args.flux, args.out, negative_prompt=args.negative_prompt, device=args.device,
                   seed=args.seed, log=_log)
    print(args.out)
    return 0
