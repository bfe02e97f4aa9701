"""`nexusgen prepare-embeds`: the decoders' training embeddings (`nexusgen.data.prepare`).

--data, --batch-size, --model and the output folder are checked before torch loads."""

from __future__ import annotations

import argparse
from pathlib import Path

from nexusgen.files import check_output_folder
from nexusgen.loading.names import check_model_name
from nexusgen.tasks import GENERATE
from nexusgen.validation import check_int


def prepare_embeds(args: argparse.Namespace) -> dict:
    """Precompute embeddings for every record of --data; returns the summary (printed as JSON)."""
    if not Path(args.data).is_file():
        raise ValueError(f"--data {args.data}: no such file")
    check_int(args.batch_size, "--batch-size", 1)
    check_model_name(args.model)
    check_output_folder(args.out)
    from nexusgen.data import prepare

    task = {"gen": GENERATE}.get(args.kind, args.kind)  # the old spelling of --kind generate
    return prepare.prepare_embeds(args.data, args.model, task, args.out, batch_size=args.batch_size,
                                  skip_bad=args.skip_bad, image_root=args.image_root)
