"""One rank of a `torchrun`-style launch (RANK / WORLD_SIZE / MASTER_* in the environment) that trains
several runs in one process group, so the distributed test pays for process start-up once.

Usage: python distributed_worker.py RUNS_JSON, RUNS_JSON = [[recipe, run_dir, [override, ...]], ...].
"""

import json
import sys

from nexusgen.recipes import get_recipe
from nexusgen.train import parallel
from nexusgen.train.config import apply_overrides
from nexusgen.train.loop import train


def main(runs: list) -> None:
    try:
        for recipe, run_dir, overrides in runs:
            train(apply_overrides(get_recipe(recipe), overrides), run_dir)
    finally:
        parallel.destroy_distributed()


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
