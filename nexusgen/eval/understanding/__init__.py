"""Understanding benchmarks (MME, MMBench, MMMU, POPE) over their published files, scored offline.

One module per benchmark: `load` (questions from the published layout), `score` (the official
deterministic rules), `write_official` (the answer files the official scripts read); `runner` asks the
model, resumably.
"""
