"""One module per ShapesWorld task, each with the same three steps: `build` the items (from the
evaluation's own random streams), `run` a model on them (artifacts to disk), `score` the artifacts."""
