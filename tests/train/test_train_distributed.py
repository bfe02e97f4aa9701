"""2 gloo processes (torchrun-style environment) follow the 1-process loss trajectory within 1e-5."""

import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from nexusgen.recipes import get_recipe
from nexusgen.train.config import apply_overrides
from nexusgen.train.loop import train
from nexusgen.train.metrics import read_metrics

OVERRIDES = ["max_steps=6", "save_every=3", "batch_size=8", "optim.grad_accum_steps=2", "progress=false"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(run_dir, strategy: str, world_size: int = 2):
    """What `torchrun --nproc_per_node 2 -m nexusgen train ...` does: one process per rank + env."""
    port = _free_port()
    cmd = [sys.executable, "-m", "nexusgen", "train", "tiny-vae", "--out", str(run_dir)]
    cmd += [a for o in [*OVERRIDES, f"dist.strategy={strategy}"] for a in ("--set", o)]
    procs = []
    for rank in range(world_size):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]


@pytest.mark.distributed
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_gloo_processes_match_one_process(tmp_path, strategy):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        config = apply_overrides(get_recipe("tiny-vae"), OVERRIDES)
        single, double = tmp_path / "single", tmp_path / "double"
        _launch(double, strategy)
        train(config, single)
    finally:
        torch.set_num_threads(threads)
    one, two = read_metrics(single / "metrics.jsonl"), read_metrics(double / "metrics.jsonl")
    assert [r["step"] for r in two] == [r["step"] for r in one] == list(range(1, 7))
    for a, b in zip(one, two):
        for term in ("loss", "l1", "mse", "kl", "grad_norm"):
            assert abs(a[term] - b[term]) <= 1e-5, (a["step"], term, a[term], b[term])
    assert one[-1]["loss"] != one[0]["loss"]  # it did train
    w1 = load_file(str(single / "final/vae/diffusion_pytorch_model.safetensors"))
    w2 = load_file(str(double / "final/vae/diffusion_pytorch_model.safetensors"))
    # Adam divides by sqrt(v): on near-zero gradients, round-off of the all-reduce can move a few
    # weights by up to lr per step, so the weights are compared on average, the losses above exactly.
    diffs = torch.cat([(w1[k] - w2[k]).abs().flatten() for k in w1])
    assert diffs.mean().item() < 1e-5, diffs.mean().item()
    assert (double / "checkpoints/step_000006/COMPLETE").exists()
    assert len(list((double / "checkpoints/step_000006").glob("rank_*.pt"))) == 2
