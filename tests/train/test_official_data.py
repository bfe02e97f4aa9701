"""The official data as-is: the three stages train on files in the official layout (paths relative to the
repository root, `--image-root`); `data.paths` switches a recipe to the files or is an error, never ignored;
`--resume` needs something to resume; decoder stages check embedding widths before step 1."""

import json

import pytest
import torch

from nexusgen.cli import main
from nexusgen.recipes import get_recipe
from nexusgen.train.config import apply_overrides
from nexusgen.train.loop import train
from nexusgen.train.metrics import read_metrics
from nexusgen.train.parallel import DistInfo
from nexusgen.train.stages import build_stage

SINGLE = DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
QUICK = ["max_steps=2", "save_every=0", "batch_size=2", "progress=false"]


@pytest.fixture(scope="module")
def official(official_examples):
    """(the folder upstream's paths start from, {"llm" / "gen_decoder" / "edit_decoder": dataset file})."""
    datasets = official_examples / "assets/example_datasets"
    return official_examples, {name: datasets / f"{name}_dataset.jsonl" for name in ("llm", "gen_decoder",
                                                                                       "edit_decoder")}


def _cli_train(recipe: str, out, overrides: list[str], *extra: str) -> int:
    return main(["train", recipe, "--out", str(out), *[a for o in overrides for a in ("--set", o)], *extra])


@pytest.mark.parametrize("recipe,data", [("tiny-ar", "llm"), ("tiny-generation_decoder", "gen_decoder"),
                                         ("tiny-editing_decoder", "edit_decoder")])
def test_each_stage_trains_on_the_official_files_unchanged(official, tmp_path, recipe, data):
    root, files = official
    overrides = [*QUICK, f"data.paths=[\"{files[data]}\"]"]
    assert _cli_train(recipe, tmp_path / "run", overrides, "--image-root", str(root)) == 0
    records = read_metrics(tmp_path / "run/metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2] and all(r["loss"] > 0 for r in records)
    stored = json.loads((tmp_path / "run/config.json").read_text())["data"]
    assert stored["paths"] == [str(files[data])] and stored["image_root"] == str(root)
    # the stream draws from those files, every record of them (nothing generated)
    stage = build_stage(apply_overrides(get_recipe(recipe), [*overrides, f"data.image_root={root}"]), SINGLE)
    (source,) = stage.stream.sampler.sources
    assert source.path == files[data] and len(source) == len(files[data].read_text().splitlines())


def test_without_the_image_root_the_error_names_it(official, tmp_path, capsys):
    root, files = official
    assert _cli_train("tiny-ar", tmp_path / "run", [*QUICK, f"data.paths=[\"{files['llm']}\"]"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "image_root" in error and str(root) in error
    assert not (tmp_path / "run").exists()  # nothing written before the data was checked


@pytest.mark.parametrize("overrides,message", [
    (["data.source=generated", "data.paths=[\"x.jsonl\"]"], "data.paths is set but this recipe trains on generated"),
    (["data.image_root=/tmp"], "data.image_root is set but data.paths is empty"),
])
def test_files_the_recipe_cannot_use_are_an_error(overrides, message):
    with pytest.raises(ValueError, match=message):
        apply_overrides(get_recipe("tiny-ar"), overrides)
    with pytest.raises(ValueError, match="data.paths is set but this recipe trains on generated"):
        apply_overrides(get_recipe("shapes-mini-ar"), ["data.paths=[\"x.jsonl\"]"])


def test_decoder_stages_refuse_records_without_a_generated_image_and_mixed_kinds(official, tmp_path):
    root, files = official
    base = [*QUICK, f"data.image_root={root}"]
    understand_only = tmp_path / "understand.jsonl"
    understand_only.write_text(files["llm"].read_text(encoding="utf-8").splitlines()[0] + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="wrong_task.*'understand' record"):
        build_stage(apply_overrides(get_recipe("tiny-generation_decoder"),
                                    [*base, f"data.paths=[\"{understand_only}\"]"]), SINGLE)
    embeds = tmp_path / "embeds.jsonl"
    record = {**json.loads(files["gen_decoder"].read_text().splitlines()[0]), "embed_path": "embeds/Ours_1.pt"}
    embeds.write_text(json.dumps(record) + "\n")
    with pytest.raises(ValueError, match="mixes generation-embedding files"):
        build_stage(apply_overrides(get_recipe("tiny-generation_decoder"),
                                    [*base, f"data.paths=[\"{embeds}\", \"{files['gen_decoder']}\"]"]), SINGLE)
    with pytest.raises(ValueError, match="embed_missing"):  # upstream does not ship the .pt files it names
        build_stage(apply_overrides(get_recipe("tiny-generation_decoder"), [*base, f"data.paths=[\"{embeds}\"]"]),
                    SINGLE)
    with pytest.raises(ValueError, match="names no generation embeddings"):
        build_stage(apply_overrides(get_recipe("tiny-generation_decoder"),
                                    [*base, "data.source=embeds", f"data.paths=[\"{files['gen_decoder']}\"]"]),
                    SINGLE)
    with pytest.raises(ValueError, match="precomputed embeddings .data.source=embeds. are for the decoder"):
        build_stage(apply_overrides(get_recipe("tiny-ar"), [*base, "data.source=embeds",
                                                            f"data.paths=[\"{embeds}\"]"]), SINGLE)


def test_embedding_widths_are_checked_before_the_first_step(official, tmp_path, monkeypatch):
    import dataclasses

    from nexusgen.data.embeds import save_embeds
    from nexusgen.models.decoder import DECODER_PRESETS

    root, files = official
    # a decoder preset narrower than the tiny AR model (stage.model takes no sizes: presets are data)
    narrow = dataclasses.replace(DECODER_PRESETS["tiny"], embed_dim=32, merger=None)
    monkeypatch.setitem(DECODER_PRESETS, "tiny", narrow)
    with pytest.raises(ValueError, match="takes 32-wide embeddings but the AR model .* gives 64"):
        train(apply_overrides(get_recipe("tiny-generation_decoder"), QUICK), tmp_path / "run")
    monkeypatch.undo()
    assert not (tmp_path / "run").exists()
    save_embeds(tmp_path / "Ours_1.safetensors", torch.zeros(16, 48))  # an absolute embed_path: no root needed
    embeds = tmp_path / "embeds.jsonl"
    record = {**json.loads(files["gen_decoder"].read_text().splitlines()[0]),
              "embed_path": str(tmp_path / "Ours_1.safetensors")}
    embeds.write_text(json.dumps(record) + "\n")
    with pytest.raises(ValueError, match="expected dim 64"):
        train(apply_overrides(get_recipe("tiny-generation_decoder"), [*QUICK, f"data.paths=[\"{embeds}\"]",
                                                               f"data.image_root={root}"]), tmp_path / "run")


def test_resume_with_nothing_to_resume_is_an_error(tmp_path, capsys):
    assert _cli_train("tiny-vae", tmp_path / "run", QUICK, "--resume") == 2
    assert "nothing to resume from" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    assert _cli_train("tiny-vae", tmp_path / "run", QUICK, "--resume-if-possible") == 0
    assert _cli_train("tiny-vae", tmp_path / "run", QUICK, "--resume") == 2  # finished, no checkpoint
    assert "a finished run without checkpoints" in capsys.readouterr().err
    assert _cli_train("tiny", tmp_path / "pipeline", ["max_steps=1"], "--resume") == 2
    assert "no stage of" in capsys.readouterr().err
