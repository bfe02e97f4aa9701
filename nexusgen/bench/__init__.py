"""Benchmarks: `nexusgen bench ar|decoder|e2e|train`, each a `run(args) -> dict` printed as JSON."""
