"""Training: one loop (`loop.train`), stages as configs (`config.TrainConfig`), recipes in
`nexusgen.recipes`. Nothing outside `train/` and the CLI imports this package."""
