"""Converters from upstream checkpoints (official Nexus-Gen decoders, DiffSynth FluxDiT, BFL FLUX VAE) to
the nexusgen model-folder format. `official.convert_command` is the `nexusgen convert` handler."""
