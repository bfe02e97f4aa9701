"""Building models from folders and writing them back: one module per part, plus the model folder.

Models are pure `nn.Module`s (nexusgen.models); everything that touches files lives here.
"""
