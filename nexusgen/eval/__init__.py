"""Evaluation: generate artifacts (answers, images) to disk with a model, then score them.

- `shapes`: the ShapesWorld benchmark (`nexusgen eval shapes`), understanding / generation / editing
  scored exactly by the ShapesWorld detector. Its numbers are "ShapesWorld" scores: synthetic,
  GenEval-style, never comparable with published GenEval / ImgEdit figures.
- Public benchmarks (docs/benchmarks.md), each writing what the benchmark's own scorer reads:
  `geneval`, `dpg` (generation), `imgedit`, `gedit` (editing), `understanding/` (MME, MMBench, MMMU, POPE,
  scored here with the official deterministic rules); they run the batch commands' batched, resumable,
  sharded item loop (`nexusgen.batch.runner`). `benchmark_files` reads the published files, `lmms_adapter`
  is the lmms-eval model (loaded by lmms-eval only). Their command-line handlers are in `nexusgen.commands.eval`.
- `oracle`: the ground-truth model (the scorer's upper bound) and a blank baseline.
- `metrics`: PSNR, SSIM, answer matching, GenEval's rules and aggregation.

eval may import pipelines, api, loading and worlds, never train.
"""
