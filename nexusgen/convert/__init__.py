"""Converters from upstream checkpoints (official Nexus-Gen decoders, DiffSynth FluxDiT, BFL FLUX VAE) to
the nexusgen model-folder format (`nexusgen convert`: `nexusgen.commands.convert`)."""
