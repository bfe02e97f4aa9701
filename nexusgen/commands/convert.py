"""`nexusgen convert OFFICIAL_DIR OUT_DIR` (official Nexus-Gen checkpoints -> a nexusgen model folder),
`nexusgen export-official MODEL_DIR OUT_DIR` (back to the official Nexus-GenV2 layout) and `nexusgen assemble`
(an untrained model folder from stock Qwen2.5-VL-Instruct + FLUX.1-dev).

The output folder is checked before torch loads; each writes its folder whole or leaves it as it was. What
was converted is reported on stdout, one line per part (stderr is for errors only).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from nexusgen.files import check_output_folder


def _log(line: str) -> None:
    print(line, flush=True)


def _check_folder(flag: str, path: str) -> None:
    if not Path(path).is_dir():
        raise ValueError(f"{flag} {path}: not a directory")


def convert(args: argparse.Namespace) -> int:
    """Convert every official part found (with --flux: CLIP("") and the T5 negative branch)."""
    _check_folder("OFFICIAL_DIR", args.official_dir)
    if args.flux is not None:
        _check_folder("--flux", args.flux)
    check_output_folder(args.out_dir)
    from nexusgen.convert.official import convert_official

    convert_official(args.official_dir, args.out_dir, log=_log, vae_norm_num_groups=args.vae_norm_groups,
                     flux_dir=args.flux, negative_prompt=args.negative_prompt)
    return 0


def export_official(args: argparse.Namespace) -> int:
    """A nexusgen model folder (or a run's final/) in the official layout."""
    _check_folder("MODEL_DIR", args.model_dir)
    if Path(args.out_dir).exists():
        raise ValueError(f"{args.out_dir} exists; choose a new OUT_DIR")
    check_output_folder(args.out_dir)
    from nexusgen.convert.export import export_official as export_folder

    _log(f"exporting {args.model_dir} -> {args.out_dir}")
    export_folder(args.model_dir, args.out_dir, dtype=args.dtype, log=_log)
    return 0


def assemble(args: argparse.Namespace) -> int:
    """Write the untrained model folder; prints its path."""
    from nexusgen.validation import check_device, check_seed

    for flag, path in (("--qwen", args.qwen), ("--flux", args.flux)):
        _check_folder(flag, path)
    check_device(args.device, "--device")
    check_seed(args.seed, 1, "--seed")
    check_output_folder(args.out)
    from nexusgen.convert.assemble import assemble_model

    assemble_model(args.qwen, args.flux, args.out, negative_prompt=args.negative_prompt, device=args.device,
                   seed=args.seed, log=_log)
    print(args.out)
    return 0
