"""Training data: the message-format JSONL reader, decoder embedding datasets, mixtures, collation.

Modules (imported directly; this package file stays empty so `import nexusgen.data.x` is cheap):
    messages   MessageDataset: validated, lazy reader of message-format JSONL (docs/upstream.md §6)
    embeds     GenEmbedDataset / EditEmbedDataset: decoder-training embedding datasets
    mixture    MixtureSampler: weighted, seeded, resumable, rank-sharded batches over several sources
    worlds     the registry of procedural worlds (ShapesWorld plugs in from nexusgen.recipes), WorldSource
    synthetic  SyntheticSource: the built-in world of coloured rectangles; write_jsonl
    scene_labels  per-token shape / colour labels of a world's images (stage vlm)
    prepare    precompute decoder-training embeddings, resumably (`nexusgen prepare-embeds`)
    collate    collate_ar: samples -> model inputs (owned by the AR model)
"""
