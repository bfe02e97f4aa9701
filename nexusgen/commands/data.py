"""`nexusgen prepare-embeds`: the decoders' training embeddings (`nexusgen.data.prepare`)."""

from __future__ import annotations

import argparse

from nexusgen.data import prepare


def prepare_embeds(args: argparse.Namespace) -> dict:
    """Precompute embeddings for every record of --data; returns the summary (printed as JSON)."""
    return prepare.prepare_embeds(args.data, args.model, args.kind, args.out, batch_size=args.batch_size,
                          skip_bad=args.skip_bad, image_root=args.image_root)
