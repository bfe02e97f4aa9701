"""Multi-stage recipes: overrides per stage, stage chaining through exported folders, resume skips."""

import json
import warnings

import pytest

from nexusgen.cli import main
from nexusgen.recipes import MULTI_STAGE_RECIPES, RECIPES, get_recipe
from nexusgen.train.multistage import split_overrides, stage_configs


def test_split_overrides_by_stage_prefix():
    common, per_stage = split_overrides(["lr=0.1", "vae.max_steps=3", "stage.ema_decay=0.5", "ar.seed=4"],
                                        ["vae", "ar"])
    assert common == ["lr=0.1", "stage.ema_decay=0.5"]  # "stage" is a field, not a stage name
    assert per_stage == {"vae": ["max_steps=3"], "ar": ["seed=4"]}
    # the decoder stages' old names still name them, for one release
    common, per_stage = split_overrides(["gen_decoder.seed=1", "edit_decoder_more2.lr=0.1"],
                                        ["generation_decoder", "editing_decoder_more2"])
    assert common == [] and per_stage == {"generation_decoder": ["seed=1"], "editing_decoder_more2": ["lr=0.1"]}


def test_stage_configs_apply_common_and_stage_overrides():
    configs = stage_configs(MULTI_STAGE_RECIPES["tiny"], ["lr=0.01", "vlm.max_steps=7"])
    assert all(c.lr == 0.01 for c in configs.values())
    assert configs["vlm"].max_steps == 7 and configs["ar"].max_steps != 7
    with pytest.raises(ValueError):
        stage_configs(MULTI_STAGE_RECIPES["tiny"], ["vae.no_such_field=1"])


def test_tiny_multistage_recipe_chains_stages_into_one_complete_folder_and_resume_skips(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "tiny", "--out", str(run), "--set", "max_steps=2", "--set", "save_every=2",
            "--set", "progress=false"]
    assert main(args) == 0
    for stage in MULTI_STAGE_RECIPES["tiny"]:
        assert (run / stage / "final").is_dir()
    # each stage started from the previous stage's export
    assert json.loads((run / "ar" / "config.json").read_text())["stage"]["parent"] == str(run / "vlm")
    for part in ("vae", "autoregressive", "generation_decoder", "editing_decoder"):
        assert (run / "final" / part).is_dir(), part
    from nexusgen.api import NexusGen  # the export is a complete model folder with its nexusgen.json

    assert (run / "final" / "nexusgen.json").is_file()
    model = NexusGen.from_pretrained(str(run / "final"))
    assert model.predict_image_embeds("a red circle").shape == (1, 16, 64)
    capsys.readouterr()
    assert main([*args, "--resume"]) == 0
    assert capsys.readouterr().err.count(", skipped") == len(MULTI_STAGE_RECIPES["tiny"])


def test_a_shapes_mini_stage_trains_on_shapesworld_and_exports_the_presets_settings(tmp_path):
    for stage in MULTI_STAGE_RECIPES["shapes-mini"]:
        config = get_recipe(f"shapes-mini-{stage}")
        assert config.stage.preset == "shapes-mini" and config.data.world == "shapes"
    assert "shapes-mini-ar" in RECIPES
    run = tmp_path / "vlm"
    assert main(["train", "shapes-mini-vlm", "--out", str(run), "--set", "max_steps=1", "--set", "batch_size=2",
                 "--set", "progress=false", "--set", "save_every=0"]) == 0
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert record["step"] == 1 and record["loss"] > 0
    assert (run / "final" / "autoregressive").is_dir()
    # a single stage's export records the preset's model-level settings for the parts it holds, so it
    # loads as trained (editing reference on the 128-px grid) instead of with inferred settings
    written = json.loads((run / "final" / "nexusgen.json").read_text())
    assert written["parts"] == ["autoregressive"] and written["reference_image_px"] == [128, 128]
    from nexusgen.loading.autoregressive import read_ar_config
    from nexusgen.loading.folder import read_folder_config

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an inferred config warns
        config = read_folder_config(run / "final", ar=read_ar_config(run / "final" / "autoregressive"))
    assert config.reference_grid == (8, 8) and config.sampling.height == 64


def test_export_keeps_the_config_it_has_and_skips_folders_without_an_ar_model(tmp_path):
    from nexusgen.train.stages.parts import write_preset_config

    assert not write_preset_config(tmp_path, "shapes-mini", overwrite=True)  # no autoregressive/
    (tmp_path / "autoregressive").mkdir()
    assert not write_preset_config(tmp_path, "no-such-preset", overwrite=True)
    (tmp_path / "nexusgen.json").write_text("{}")
    assert not write_preset_config(tmp_path, "shapes-mini", overwrite=False)
    assert (tmp_path / "nexusgen.json").read_text() == "{}"


def test_a_finished_run_without_checkpoints_is_not_overwritten(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "tiny-vae", "--out", str(run), "--set", "max_steps=2", "--set", "save_every=0",
            "--set", "progress=false"]
    assert main(args) == 0 and (run / "final").is_dir()
    before = (run / "metrics.jsonl").read_text()
    capsys.readouterr()
    assert main(args) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (run / "metrics.jsonl").read_text() == before


def test_resume_refuses_a_changed_config_but_may_extend_the_run(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "tiny-vae", "--out", str(run), "--set", "max_steps=2", "--set", "save_every=2",
            "--set", "progress=false"]
    assert main(args) == 0
    stored = (run / "config.json").read_text()
    capsys.readouterr()
    assert main([*args, "--set", "lr=0.5", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "lr: 0.001 -> 0.5" in err and len(err.strip().splitlines()) == 1
    assert (run / "config.json").read_text() == stored  # a refused resume changes nothing
    assert main([*args, "--set", "max_steps=3", "--resume"]) == 0
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 3


def test_start_at_continues_from_a_stored_folder_and_needs_one(tmp_path, capsys):
    first = tmp_path / "first"
    base = ["--set", "max_steps=1", "--set", "save_every=0", "--set", "progress=false"]
    assert main(["train", "tiny", "--out", str(first), *base]) == 0
    stored = first / "vlm" / "final"  # what an earlier session committed: vae/ + autoregressive/
    later = tmp_path / "later"
    assert main(["train", "tiny", "--out", str(later), "--start-at", "ar", "--set", f"ar.stage.parent={stored}",
                 *base]) == 0
    assert not (later / "vae").exists() and not (later / "vlm").exists()  # earlier stages not retrained
    assert json.loads((later / "ar" / "config.json").read_text())["stage"]["parent"] == str(stored)
    assert (later / "final" / "editing_decoder").is_dir() and (later / "final" / "vae").is_dir()
    capsys.readouterr()
    assert main(["train", "tiny", "--out", str(tmp_path / "x"), "--start-at", "ar", *base]) == 2
    assert "--set ar.stage.parent=FOLDER" in capsys.readouterr().err
    assert main(["train", "tiny", "--out", str(tmp_path / "y"), "--start-at", "nope", *base]) == 2
    assert "not a stage of this recipe" in capsys.readouterr().err
    assert main(["train", "tiny-ar", "--out", str(tmp_path / "z"), "--start-at", "ar", *base]) == 2
    assert "multi-stage recipes" in capsys.readouterr().err
    # the decoder stages' old names still name them, for one release
    assert main(["train", "tiny", "--out", str(tmp_path / "w"), "--start-at", "gen_decoder", *base]) == 2
    assert "--set generation_decoder.stage.parent=FOLDER" in capsys.readouterr().err


def test_shapes_mini_generation_prompts_name_one_image():
    """The recipe draws short generation prompts with canonical scenes (tasks.canonical_scene)."""
    for stage in ("ar", "generation_decoder"):
        assert get_recipe(f"shapes-mini-{stage}").data.world_options["short_layout"] == "canonical"
