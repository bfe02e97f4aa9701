"""Batch work: files of prompts, edits or questions in, a folder of images (or an answers file) out.

- `items`: reading the input files, every line checked (bad lines named `file:line`) before a model loads.
- `runner`: the batched, resumable, rank-sharded loop over items, with bad-item handling, a progress bar and a
  summary; the benchmark exports of `nexusgen.eval` run it too.
- `records`: the per-item result records, written by each process to its own log and merged into one file.
- `jobs`: generation, editing and understanding over items with a model.

The command-line handlers are in `nexusgen.commands.batch`; docs/batch.md is the user's guide.
"""
