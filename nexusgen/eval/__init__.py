"""Evaluation: generate artifacts (answers, images) to disk with a model, then score them.

- `shapes`: the ShapesWorld benchmark (`nexusgen eval shapes`), understanding / generation / editing
  scored exactly by the ShapesWorld detector. Its numbers are "ShapesWorld" scores: synthetic,
  GenEval-style, never comparable with published GenEval / ImgEdit figures.
- `geneval`: writes GenEval's folder layout for a real GenEval run on a real model.
- `oracle`: the ground-truth model (the scorer's upper bound) and a blank baseline.
- `metrics`: PSNR, SSIM, answer matching, GenEval's rules and aggregation.

eval may import pipelines, api, loading and worlds, never train.
"""
