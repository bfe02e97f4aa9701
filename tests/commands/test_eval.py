"""`nexusgen eval shapes` on the command line: task subsets, ground-truth embeddings, sampling overrides."""

import json

import nexusgen.commands.eval as eval_command
from nexusgen.cli import main


def test_cli_tasks_and_ground_truth_embeds(tmp_path, capsys, tiny_model, monkeypatch):
    monkeypatch.setattr(eval_command, "load_model", lambda name: tiny_model)
    assert main(["eval", "shapes", "--out", str(tmp_path), "--model", "tiny", "--num", "4",
                 "--tasks", "generation", "--embeds", "ground-truth"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert "generation" in printed and "understanding" not in printed and "editing" not in printed
    assert printed["model"] == "tiny (ground-truth embeddings)" and printed["generation"]["n"] > 0
    assert printed["num_steps"] == tiny_model.config.sampling.num_steps
    monkeypatch.setattr(tiny_model.config, "sampling", tiny_model.config.sampling)  # restored after the test
    assert main(["eval", "shapes", "--out", str(tmp_path / "s3"), "--model", "tiny", "--num", "2",
                 "--tasks", "generation", "--steps", "3"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["num_steps"] == printed["edit_num_steps"] == 3  # --steps sets every decoder's count
    assert main(["eval", "shapes", "--out", str(tmp_path), "--tasks", "drawing"]) == 2  # one clear line
    # tiny has no negative branch: guidance other than 1 is refused in one line, nothing is generated
    assert main(["eval", "shapes", "--out", str(tmp_path / "g"), "--model", "tiny", "--guidance", "2"]) == 2
    assert "guidance" in capsys.readouterr().err and not (tmp_path / "g").exists()


def test_cli_guidance_reaches_the_sampler(tmp_path, capsys, tiny_model, monkeypatch):
    import dataclasses

    monkeypatch.setattr(eval_command, "load_model", lambda name: tiny_model)
    monkeypatch.setattr(tiny_model.config, "sampling", dataclasses.replace(tiny_model.config.sampling, negative="null"))
    images = {}
    for scale in ("1", "4"):
        out = tmp_path / scale
        assert main(["eval", "shapes", "--out", str(out), "--model", "tiny", "--num", "2", "--tasks", "generation",
                     "--guidance", scale, "--edit-guidance", "1.5"]) == 0
        printed = json.loads(capsys.readouterr().out)
        assert (printed["guidance_scale"], printed["edit_guidance_scale"]) == (float(scale), 1.5)
        images[scale] = sorted(p.read_bytes() for p in out.rglob("*.png") if p.name != "failures.png")
    assert images["1"] and len(images["1"]) == len(images["4"]) and images["1"] != images["4"]
