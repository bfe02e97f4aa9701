"""2 gloo processes (DDP and FSDP2) follow 1 process within 1e-5 relative on every stage, with answers of
different lengths on the two ranks, gradient accumulation, clipping and EMA."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from nexusgen.recipes import get_recipe
from nexusgen.train.config import apply_overrides
from nexusgen.train.loop import train
from nexusgen.train.metrics import read_metrics
from nexusgen.train.parallel import DistInfo
from nexusgen.train.stages import build_stage

COMMON = ["max_steps=3", "save_every=3", "batch_size=8", "optim.grad_accum_steps=2", "seed=77", "progress=false"]
RUNS = {  # recipe -> its own overrides; the decoders keep an EMA (exported), every stage clips at 1.0
    "tiny-vae": [],
    "tiny-ar": [],
    "tiny-generation_decoder": ["stage.ema_decay=0.9"],
    "tiny-editing_decoder": ["stage.ema_decay=0.9", "stage.cond_dropout_prob=0.3"],
}
TERMS = {"tiny-vae": ("loss", "l1", "mse", "kl"), "tiny-ar": ("loss", "ce", "image_loss", "image_mse", "image_cos"),
         "tiny-generation_decoder": ("loss", "flow", "mse"), "tiny-editing_decoder": ("loss", "flow", "mse")}
STRATEGIES = ("ddp", "fsdp")
WORKER = Path(__file__).with_name("distributed_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(runs: list, logs: Path, world_size: int = 2) -> None:
    """What `torchrun --nproc_per_node 2` does: one process per rank with the rendezvous environment.
    Output goes to files: a rank blocked on a full pipe would stall the collective the other waits in."""
    port = _free_port()
    procs = []
    for rank in range(world_size):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
        with open(logs / f"rank{rank}.log", "w") as log:
            procs.append(subprocess.Popen([sys.executable, str(WORKER), json.dumps(runs)], env=env,
                                          stdout=log, stderr=subprocess.STDOUT))
    for rank, proc in enumerate(procs):
        proc.wait(timeout=600)
        assert proc.returncode == 0, (logs / f"rank{rank}.log").read_text()[-3000:]


def _overrides(recipe: str, strategy: str) -> list[str]:
    return [*COMMON, *RUNS[recipe], f"dist.strategy={strategy}"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every recipe on 2 processes under both strategies (one launch), and on 1 process."""
    root = tmp_path_factory.mktemp("distributed")
    _launch([[recipe, str(root / f"{recipe}-{strategy}"), _overrides(recipe, strategy)]
             for strategy in STRATEGIES for recipe in RUNS], root)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for recipe in RUNS:
            train(apply_overrides(get_recipe(recipe), _overrides(recipe, "ddp")), root / f"{recipe}-single")
    finally:
        torch.set_num_threads(threads)
    return root


def test_the_ranks_hold_answers_of_different_lengths():
    """The AR comparison below is only a test if the two ranks' shares of a batch differ in size (at step 1
    at least: before any update a per-rank mean would already show)."""
    config = apply_overrides(get_recipe("tiny-ar"), COMMON)
    stage = build_stage(config, DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu")))
    differs = []
    for _ in range(config.max_steps):  # world 1 x 4 micro-batches of 2 = the ranks' micro-batches in order
        micro = stage.stream.next_step(config.batch_size, 0, 1, 4)
        tokens = [sum(stage.loss_units(stage.collate(m))["text_tokens"] for m in micro[r * 2:r * 2 + 2])
                  for r in (0, 1)]
        differs.append(tokens[0] != tokens[1])
    assert differs[0] and sum(differs) >= 2, differs


@pytest.mark.distributed
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("recipe", sorted(RUNS))
def test_two_gloo_processes_match_one_process(runs, recipe, strategy):
    single, double = runs / f"{recipe}-single", runs / f"{recipe}-{strategy}"
    one, two = read_metrics(single / "metrics.jsonl"), read_metrics(double / "metrics.jsonl")
    assert [r["step"] for r in two] == [r["step"] for r in one] == [1, 2, 3]
    for a, b in zip(one, two):
        for term in (*TERMS[recipe], "grad_norm"):
            assert abs(a[term] - b[term]) <= 1e-5 * abs(a[term]), (a["step"], term, a[term], b[term])
    assert one[-1]["loss"] != one[0]["loss"]  # it did train
    first, second = _final_weights(single), _final_weights(double)
    assert first.keys() == second.keys() and first
    # Adam divides by sqrt(v): on near-zero gradients, round-off of the all-reduce can move a few
    # weights by up to lr per step, so the weights are compared on average, the losses above exactly.
    diffs = torch.cat([(first[k].float() - second[k].float()).abs().flatten() for k in first])
    assert diffs.mean().item() < 1e-5, diffs.mean().item()
    assert (double / "checkpoints/step_000003/COMPLETE").exists()
    assert len(list((double / "checkpoints/step_000003").glob("rank_*.pt"))) == 2


def _final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """Every safetensors tensor of RUN_DIR/final, keyed by file and name."""
    weights = {}
    for path in sorted((run_dir / "final").rglob("*.safetensors")):
        weights.update({f"{path.relative_to(run_dir)}:{k}": v for k, v in load_file(str(path)).items()})
    return weights
