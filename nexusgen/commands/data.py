"""`nexusgen prepare-embeds`: the decoders' training embeddings (`nexusgen.data.prepare`)."""

from __future__ import annotations

import argparse

from nexusgen.data import prepare
from nexusgen.tasks import GENERATE


def prepare_embeds(args: argparse.Namespace) -> dict:
    """Precompute embeddings for every record of --data; returns the summary (printed as JSON)."""
    task = {"gen": GENERATE}.get(args.kind, args.kind)  # the old spelling of --kind generate
    return prepare.prepare_embeds(args.data, args.model, task, args.out, batch_size=args.batch_size,
                          skip_bad=args.skip_bad, image_root=args.image_root)
