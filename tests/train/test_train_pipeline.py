"""Multi-stage recipes: overrides per stage, stage chaining through exported folders, resume skips."""

import json
import re
import warnings

import pytest

from nexusgen.cli import main
from nexusgen.recipes import PIPELINES, RECIPES, get_recipe
from nexusgen.train.pipeline import split_overrides, stage_configs
from nexusgen.train.stages.common import generated_messages


def test_split_overrides_by_stage_prefix():
    common, per_stage = split_overrides(["lr=0.1", "vae.max_steps=3", "stage.ema_decay=0.5", "ar.seed=4"],
                                        ["vae", "ar"])
    assert common == ["lr=0.1", "stage.ema_decay=0.5"]  # "stage" is a field, not a stage name
    assert per_stage == {"vae": ["max_steps=3"], "ar": ["seed=4"]}


def test_stage_configs_apply_common_and_stage_overrides():
    configs = stage_configs(PIPELINES["tiny"], ["lr=0.01", "vlm.max_steps=7"])
    assert all(c.lr == 0.01 for c in configs.values())
    assert configs["vlm"].max_steps == 7 and configs["ar"].max_steps != 7
    with pytest.raises(ValueError):
        stage_configs(PIPELINES["tiny"], ["vae.no_such_field=1"])


def test_tiny_pipeline_chains_stages_into_one_complete_folder_and_resume_skips(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "tiny", "--out", str(run), "--set", "max_steps=2", "--set", "save_every=2",
            "--set", "progress=false"]
    assert main(args) == 0
    for stage in PIPELINES["tiny"]:
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
    assert capsys.readouterr().err.count(", skipped") == len(PIPELINES["tiny"])


def test_shapes_mini_recipes_resolve_and_train_on_shapesworld(tmp_path):
    for stage in PIPELINES["shapes-mini"]:
        config = get_recipe(f"shapes-mini-{stage}")
        assert config.stage.preset == "shapes-mini" and config.data.world == "shapes"
    rounds = [f"ar_edit{n}" for n in range(2, 19)]
    focused = ["ar_where_only", "ar_where_relations", "ar_relations_only", "ar_relations_round", "ar_captions_round",
               "ar_counts_only", "ar_counts_round", "ar_captions_only", "ar_counts_round2", "ar_counts_round3",
               "ar_relations_only2", "ar_counts_round4", "ar_anneal", "ar_alike_only", "ar_alike_round",
               "ar_alike_anneal"]
    assert list(PIPELINES["shapes-mini"]) == ["vae", "vlm", "vlm_answers", "ar", "ar_more", "ar_edit", *rounds,
                                              *focused, "gen_decoder", "gen_decoder_more", "edit_decoder",
                                              "edit_decoder_more", "edit_decoder_more2", "edit_decoder_more3"]
    decoder_more = get_recipe("shapes-mini-gen_decoder_more")
    assert decoder_more.stage.name == "gen_decoder" and decoder_more.stage.model["generation_context_ids"] == "grid"
    more = get_recipe("shapes-mini-ar_more")
    assert more.stage.name == "ar" and "reasoned_answers" not in more.data.world_options
    edits = get_recipe("shapes-mini-ar_edit")
    seeds = [get_recipe(f"shapes-mini-{name}").seed for name in rounds]
    assert seeds == [8, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27]
    assert edits.seed == 7
    assert edits.stage.name == "ar" and edits.data.tasks.count("edit") * 2 == len(edits.data.tasks)
    assert edits.stage.loss_weights == more.stage.loss_weights and edits.lr == more.lr
    # the focused stages ask one or two question types alone; the rounds after them are ar_edit's mix
    alone = ("ar_where_only", "ar_where_relations", "ar_relations_only", "ar_counts_only", "ar_captions_only",
             "ar_relations_only2", "ar_alike_only")
    singles = [get_recipe(f"shapes-mini-{name}") for name in alone]
    where, where_rel, rel, counts, captions, rel2, alike = singles
    assert all(c.data.tasks == ["understand"] for c in singles)
    assert [c.data.world_options["und_types"] for c in singles] == [
        ["where"], ["where", "relation"], ["relation"], ["count"], ["caption"], ["relation"], ["alike_relation"]]
    assert not any("reasoning_steps" in c.data.world_options for c in (where, counts, captions))
    assert {c.data.world_options["reasoning_steps"] for c in (where_rel, rel, rel2, alike)} == {"ordered"}
    assert [c.max_steps for c in singles] == [1800, 600, 1800, 1800, 1800, 1800, 1800]
    mixed = [get_recipe(f"shapes-mini-{name}") for name in focused if name not in alone]
    relations_round, captions_round, *counts_rounds = mixed
    assert all(c.data.tasks == edits.data.tasks for c in mixed)
    assert captions_round.data.world_options["und_types"].count("caption") == 3
    assert relations_round.data.world_options["und_types"].count("caption") == 1
    assert all(c.data.world_options == captions_round.data.world_options for c in counts_rounds)
    assert [get_recipe(f"shapes-mini-{name}").seed for name in focused] == [*range(31, 43), 44, 48, 49, 50]
    *full_lr, anneal, alike_round, alike_anneal = counts_rounds  # the low-LR rounds at a third of the others
    assert [c.lr for c in (*full_lr, alike_round)] == [pytest.approx(3 * anneal.lr)] * 5
    assert alike_anneal.lr == anneal.lr
    edit_decoder = get_recipe("shapes-mini-edit_decoder")
    assert edit_decoder.stage.reference_dropout_prob == 0.0 and edit_decoder.stage.true_target_prob == 1.0
    assert get_recipe("shapes-mini-edit_decoder_predicted_targets").stage.true_target_prob == 0.0  # upstream's
    decoder_rounds = [get_recipe(f"shapes-mini-edit_decoder_more{n}") for n in (2, 3)]
    assert [c.seed for c in decoder_rounds] == [24, 25]
    assert all(c.stage == get_recipe("shapes-mini-edit_decoder_more").stage for c in decoder_rounds)
    dropout = get_recipe("shapes-mini-edit_decoder_reference_dropout")  # an experiment
    assert dropout.stage.name == "edit_decoder" and dropout.stage.reference_dropout_prob == 0.5
    assert dropout.stage.true_target_prob == 0.0
    rope = get_recipe("shapes-mini-ar_rope_theta")  # an experiment
    assert rope.stage.model == {"rope_theta": 100.0} and rope.data.tasks == edits.data.tasks
    places = get_recipe("shapes-mini-ar_input_places")  # an experiment
    assert places.stage.model == {"input_image_positions": True} and places.data.tasks == edits.data.tasks
    where = get_recipe("shapes-mini-ar_where")  # an experiment
    assert where.data.world_options["und_types"][-1] == "where" and where.data.tasks == edits.data.tasks
    asked = [generated_messages(where)[0][i] for i in range(96)]
    assert any(r["source"].endswith("/where") for r in asked)
    ordered = get_recipe("shapes-mini-ar_ordered_relations")  # an experiment
    assert ordered.data.tasks == edits.data.tasks and ordered.data.world_options["reasoning_steps"] == "ordered"
    source = generated_messages(ordered)[0]
    said = [source[i] for i in range(96) if source[i]["source"].endswith("/relation")]
    assert len(said) > 4 and all(re.search(r"(column|row) \d, so (yes|no)\.$|第\d[列行]，所以[是否]。$",
                                           r["messages"][1]["content"]) for r in said)
    listed = get_recipe("shapes-mini-ar_listed_relations")  # an experiment
    assert listed.data.tasks == edits.data.tasks and listed.data.world_options["reasoning_steps"] == "listed"
    source = generated_messages(listed)[0]
    said = [source[i] for i in range(96) if source[i]["source"].endswith("/relation")]
    assert len(said) > 4 and all(re.search(r"(column|row) \d[.。].+(column|row) \d, so (yes|no)\.$|"
                                           r"第\d[列行]。.+第\d[列行]，所以[是否]。$",
                                           r["messages"][1]["content"]) for r in said)
    counts = get_recipe("shapes-mini-ar_listed_counts")  # an experiment
    assert counts.data.tasks == edits.data.tasks and counts.data.world_options["reasoned_types"] == ["count"]
    source = generated_messages(counts)[0]
    said = [source[i]["messages"][1]["content"] for i in range(160) if source[i]["source"].endswith("/count")]
    assert any(re.search(r"\w, so \d\.$|所以\d。$", a) for a in said) and any(a.isdigit() for a in said)
    assert not any(source[i]["source"].endswith("/relation") and len(source[i]["messages"][1]["content"]) > 3
                   for i in range(160))  # relations answered directly
    answers = get_recipe("shapes-mini-vlm_answers")
    assert answers.stage.name == "vlm" and answers.stage.ce_reduction == "sample"
    reasoning = get_recipe("shapes-mini-ar_reasoning")  # an experiment: a recipe, not a pipeline stage
    assert reasoning.stage.name == "ar" and set(reasoning.data.tasks) == {"understand", "generate", "edit"}
    source = generated_messages(reasoning)[0]
    said = [source[i] for i in range(64) if source[i]["source"].endswith("/relation")]
    assert len(said) > 5  # a third of the questions; each answered with its reasoning
    assert all(re.search(r"\S+ so (yes|no)\.$|\S+所以[是否]。$", r["messages"][1]["content"]) for r in said)
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


def test_shapes_mini_generation_prompts_name_one_image():
    """The recipe draws short generation prompts with canonical scenes (tasks.canonical_scene)."""
    for stage in ("ar", "gen_decoder"):
        assert get_recipe(f"shapes-mini-{stage}").data.world_options["short_layout"] == "canonical"
