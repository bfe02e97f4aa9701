"""`nexusgen export-checkpoint`: a run's checkpoint as the model folder its final export would be."""

import torch
from safetensors.torch import load_file

from nexusgen.cli import main

TRAIN = ["--set", "max_steps=3", "--set", "save_every=1", "--set", "batch_size=2", "--set", "progress=false",
         "--set", "stage.ema_decay=0.5", "--set", "checkpoint.keep_last=3"]


def _dit(folder):
    files = sorted((folder / "generation_decoder" / "transformer").glob("*.safetensors"))
    return {k: v for f in files for k, v in load_file(str(f)).items()}


def test_checkpoint_exports_as_the_final_folder_with_ema_weights(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "tiny-generation_decoder", "--out", str(run), *TRAIN]) == 0
    assert main(["export-checkpoint", str(run), "--out", str(tmp_path / "last")]) == 0  # newest = step 3
    assert main(["export-checkpoint", str(run), "--out", str(tmp_path / "two"), "--step", "2"]) == 0
    final, last, two = _dit(run / "final"), _dit(tmp_path / "last"), _dit(tmp_path / "two")
    assert final.keys() == last.keys() and all(torch.equal(final[k], last[k]) for k in final)
    assert any(not torch.equal(final[k], two[k]) for k in final)  # another step, other weights
    assert (tmp_path / "two" / "vae").is_dir() and (tmp_path / "two" / "autoregressive").is_dir()
    assert (tmp_path / "two" / "nexusgen.json").is_file()  # loads without inferred settings
    assert main(["export-checkpoint", str(run), "--out", str(tmp_path / "live"), "--no-ema"]) == 0
    trained = load_file(str(run / "checkpoints/step_000003/model.safetensors"))
    live = _dit(tmp_path / "live")
    assert all(torch.equal(live[k], trained[f"decoder.transformer.{k}"]) for k in live)
    assert any(not torch.equal(live[k], final[k]) for k in final)  # EMA 0.5 differs from the weights
    capsys.readouterr()


def test_missing_step_and_existing_folder_are_one_line_errors(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "tiny-generation_decoder", "--out", str(run), *TRAIN, "--set", "max_steps=1"]) == 0
    capsys.readouterr()
    assert main(["export-checkpoint", str(run), "--out", str(tmp_path / "x"), "--step", "7"]) == 2
    err = capsys.readouterr().err
    assert "no checkpoint at step 7 (steps: 1)" in err and "Traceback" not in err
    assert main(["export-checkpoint", str(run), "--out", str(run)]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["export-checkpoint", str(tmp_path), "--out", str(tmp_path / "y")]) == 2
    assert "not a training run" in capsys.readouterr().err and not (tmp_path / "x").exists()
