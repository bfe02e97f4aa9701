"""Procedural worlds with exact ground truth (scene graphs), used to train and score nexusgen offline.

`nexusgen.worlds.shapes` is ShapesWorld: coloured shapes on a plain background, with understanding
questions, generation prompts and edits whose answers and targets are known exactly. This package
depends on numpy and Pillow only; it never imports models, flow, pipelines or train.
"""
