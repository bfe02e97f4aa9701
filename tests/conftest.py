"""Test-session settings shared by every test."""

import os

# Before torch is imported by any test module: OpenMP threads that busy-wait stall badly when the CPU is
# shared (CI machines, parallel jobs); the CLI sets the same default (nexusgen/cli.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
