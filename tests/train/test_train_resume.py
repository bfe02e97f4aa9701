"""Checkpoints: atomic, keep-last-K, incomplete ones ignored; SIGKILL + --resume is bitwise exact."""

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from nexusgen.recipes import get_recipe
from nexusgen.train import checkpoint
from nexusgen.train.config import apply_overrides
from nexusgen.train.loop import train
from nexusgen.train.metrics import read_metrics

OVERRIDES = ["max_steps=30", "save_every=5", "batch_size=4", "progress=false"]


def _vae_weights(run_dir):
    return load_file(str(run_dir / "final" / "vae" / "diffusion_pytorch_model.safetensors"))


def test_rng_state_round_trip():
    state = checkpoint.rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(3))
    checkpoint.set_rng_state(state)
    assert (random.random(), np.random.rand()) == expected[:2]
    assert torch.equal(torch.rand(3), expected[2])


def test_latest_ignores_incomplete_and_prune_keeps_last(tmp_path):
    for step in (5, 10, 15):
        path = checkpoint.checkpoint_dir(tmp_path, step)
        path.mkdir(parents=True)
        (path / checkpoint.COMPLETE).write_text("x")
    checkpoint.checkpoint_dir(tmp_path, 20).mkdir()                  # killed before its marker
    (tmp_path / "checkpoints" / ".step_000025.tmp").mkdir()           # killed while writing
    assert checkpoint.latest_checkpoint(tmp_path).name == "step_000015"
    checkpoint._prune(tmp_path, keep_last=2)
    assert [s for s, _ in checkpoint.list_checkpoints(tmp_path)] == [10, 15]
    assert not (tmp_path / "checkpoints" / ".step_000025.tmp").exists()


def test_fresh_run_refuses_a_dir_with_checkpoints(tmp_path):
    path = checkpoint.checkpoint_dir(tmp_path, 5)
    path.mkdir(parents=True)
    (path / checkpoint.COMPLETE).write_text("5")
    with pytest.raises(ValueError, match="--resume"):
        train(get_recipe("tiny-vae"), tmp_path)


def test_resuming_another_recipes_checkpoint_is_a_clear_error(tmp_path, capsys):
    from nexusgen.cli import main

    train(apply_overrides(get_recipe("tiny-vae"), ["max_steps=1", "save_every=1", "progress=false"]), tmp_path)
    capsys.readouterr()
    config_json = (tmp_path / "config.json").read_text()
    argv = ["train", "tiny-ar", "--out", str(tmp_path), "--set", "max_steps=2", "--resume"]
    assert main(argv) == 2  # was a RuntimeError traceback from load_state_dict
    err = capsys.readouterr().err.strip()
    # the stored config.json catches it first (stage.name differs) ...
    assert len(err.splitlines()) == 1 and "different config" in err and "stage.name" in err
    assert (tmp_path / "config.json").read_text() == config_json  # the run's record is untouched
    # ... and without it, the checkpoint itself does not fit the model
    (tmp_path / "config.json").unlink()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does not match this run's model" in err


def test_sigkill_then_resume_is_bitwise_identical(tmp_path):
    config = apply_overrides(get_recipe("tiny-vae"), OVERRIDES)
    straight = tmp_path / "straight"
    train(config, straight)

    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "nexusgen", "train", "tiny-vae", "--out", str(killed)]
    cmd += [a for o in OVERRIDES for a in ("--set", o)]
    # Same intra-op thread count as the in-process run: a different one changes reduction order (bits).
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    marker = checkpoint.checkpoint_dir(killed, 10) / checkpoint.COMPLETE
    deadline = time.monotonic() + 300  # start-up alone can take a minute on a loaded 2-core machine
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert marker.exists() and not (killed / "final").exists(), "the run must die mid-way"
    resumed_from = checkpoint.latest_checkpoint(killed)
    assert 10 <= int(resumed_from.name.split("_")[1]) < 30

    summary = train(config, killed, resume=True)
    assert summary["resumed_from"] >= 10
    a, b = _vae_weights(straight), _vae_weights(killed)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"
    # metrics.jsonl reads as one run: every step once, same losses
    ma, mb = read_metrics(straight / "metrics.jsonl"), read_metrics(killed / "metrics.jsonl")
    assert [r["step"] for r in mb] == list(range(1, 31))
    assert [r["loss"] for r in ma] == [r["loss"] for r in mb]
    assert len(checkpoint.list_checkpoints(killed)) == config.checkpoint.keep_last
