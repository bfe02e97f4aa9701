"""Training data: the message-format JSONL reader, decoder embedding datasets, mixtures, collation.

Modules (imported directly; this package file stays empty so `import nexusgen.data.x` is cheap):
    messages   MessageDataset: validated, lazy reader of message-format JSONL (SPEC section 6)
    embeds     GenEmbedDataset / EditEmbedDataset: decoder-training embedding datasets
    mixture    MixtureSampler: weighted, seeded, resumable, rank-sharded batches over several sources
    synthetic  ShapesSource (ShapesWorld) / SyntheticSource: in-memory samples in message format
    prepare    `nexusgen prepare-embeds`: precompute decoder-training embeddings (resumable)
    collate    collate_ar: samples -> model inputs (owned by the AR model)
"""
