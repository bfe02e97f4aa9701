"""OpenMP's wait policy for the `nexusgen` command, chosen from the machine's load before torch loads.

Between two parallel regions an OpenMP thread either spins (libgomp's default: a short while, then it
sleeps) or sleeps at once (``OMP_WAIT_POLICY=PASSIVE``). Which is faster depends on the other processes:

* machine otherwise idle: spinning wins; waking a sleeping thread costs every one of the model's hundreds
  of small operations a futex round trip. shapes-mini, 2 cores, medians: `generate` 0.15-0.25 s spinning
  vs 0.25-0.27 s passive, `edit` 0.49-0.68 vs 0.85-0.95 s;
* another process holding a core: spinning threads take the core the working thread needs: `generate`
  0.63 s spinning vs 0.25 s passive, `edit` 2.5 vs 0.93 s, and an early bench measured a 10 ms forward at
  380-540 ms.

So the command samples how busy the CPUs are (~0.1 s, from /proc/stat) and waits passively only when other
work is running, or when it cannot tell. libgomp reads the variable once, when torch loads; a user's own
``OMP_WAIT_POLICY`` always wins.
"""

from __future__ import annotations

import os
import sys
import time

PROC_STAT = "/proc/stat"
SAMPLE_SECONDS = 0.1
BUSY_CORES = 0.5
"""Other processes' load, in cores, from which threads wait passively."""


def cpu_times(path: str = PROC_STAT) -> tuple[int, int] | None:
    """(busy, total) clock ticks of all CPUs since boot, or None where the file is missing or unreadable."""
    try:
        with open(path, encoding="ascii") as f:
            fields = f.readline().split()
        ticks = [int(x) for x in fields[1:]]
    except (OSError, ValueError):  # ValueError: not ASCII, or a field that is not a number
        return None
    if not fields or fields[0] != "cpu" or len(ticks) < 4:
        return None
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    total = sum(ticks[:8])  # guest times are already counted in user and nice
    return total - idle, total


def busy_cores(before: tuple[int, int] | None, after: tuple[int, int] | None, cores: int) -> float | None:
    """Cores' worth of CPU time used between two `cpu_times` samples (None if either is missing)."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return cores * (after[0] - before[0]) / (after[1] - before[1])


def choose_wait_policy(load: float | None) -> str | None:
    """"PASSIVE" when other processes use `BUSY_CORES` or more, or the load is unknown; else None (libgomp's
    own spin-then-sleep)."""
    return "PASSIVE" if load is None or load >= BUSY_CORES else None


def configure(environ=os.environ, sample_seconds: float = SAMPLE_SECONDS) -> str | None:
    """Set OMP_WAIT_POLICY in `environ` from the current load; returns the policy that applies.

    Does nothing (returns the current value) when the user set the variable or torch is already loaded.
    """
    if "OMP_WAIT_POLICY" in environ or "torch" in sys.modules:
        return environ.get("OMP_WAIT_POLICY")
    before = cpu_times()
    time.sleep(sample_seconds)  # this process sleeps: what is counted is everything else
    policy = choose_wait_policy(busy_cores(before, cpu_times(), os.cpu_count() or 1))
    if policy is not None:
        environ["OMP_WAIT_POLICY"] = policy
    return policy


def current_policy() -> str:
    """The policy in force, for benchmark reports."""
    return os.environ.get("OMP_WAIT_POLICY") or "unset (libgomp: spin, then sleep)"
