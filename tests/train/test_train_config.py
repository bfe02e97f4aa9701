"""TrainConfig: overrides by dotted path, typed parsing, clear errors; recipes resolve; schedules."""

import json
import math

import pytest

from nexusgen.cli import main
from nexusgen.recipes import RECIPES, get_recipe, resolve_recipe
from nexusgen.train.config import TrainConfig, apply_overrides, config_from_dict, config_to_dict
from nexusgen.train.optim import LRLambda


def test_top_level_names_exist_in_every_recipe():
    for name in RECIPES:
        config = get_recipe(name)
        for field in ("max_steps", "save_every", "batch_size", "lr", "seed"):
            assert hasattr(config, field), (name, field)
        stage = name.rsplit("-", 1)[1]  # "ar", or a variant of it: "ar_more", "vlm_answers"
        assert stage == config.stage.name or stage.startswith(f"{config.stage.name}_"), (name, config.stage.name)
        config.micro_batch_size(1)  # the batch splits over accumulation steps
    assert {f"tiny-{s}" for s in ("vae", "vlm", "ar", "generation_decoder", "editing_decoder")} <= set(RECIPES)


def test_old_decoder_stage_names_are_aliases_for_one_release():
    """gen_decoder / edit_decoder, the stages' names before they took their parts' names, still work in
    recipe names and stage.name, and resolve to generation_decoder / editing_decoder."""
    assert get_recipe("tiny-gen_decoder") == get_recipe("tiny-generation_decoder")
    assert get_recipe("nexus-gen-v2-edit_decoder").stage.name == "editing_decoder"
    assert get_recipe("shapes-mini-edit_decoder_more2") == get_recipe("shapes-mini-editing_decoder_more2")
    assert apply_overrides(get_recipe("tiny-vae"), ["stage.name=gen_decoder"]).stage.name == "generation_decoder"
    with pytest.raises(ValueError, match="unknown recipe 'tiny-gen_decoderz'"):
        get_recipe("tiny-gen_decoderz")


def test_recipe_without_its_data_files_is_a_clear_error(tmp_path, capsys):
    code = main(["train", "nexus-gen-v2-generation_decoder", "--out", str(tmp_path / "r"),
                 "--set", "stage.preset=tiny", "--set", "precision=fp32"])
    err = capsys.readouterr().err
    assert code == 2 and "data.paths" in err and "Traceback" not in err


def test_overrides_are_parsed_by_field_type():
    config = apply_overrides(get_recipe("tiny-vae"), [
        "max_steps=7", "lr=3e-4", "optim.grad_clip=0.5", "optim.betas=[0.8, 0.9]", "deterministic=false",
        "dist.strategy=fsdp", "stage.parent=none", "stage.loss_weights.kl=0.01", "data.paths=[\"a.jsonl\"]"])
    assert config.max_steps == 7 and isinstance(config.max_steps, int)
    assert config.lr == 3e-4 and config.optim.grad_clip == 0.5
    assert config.optim.betas == (0.8, 0.9) and config.deterministic is False
    assert config.dist.strategy == "fsdp" and config.stage.parent is None
    assert config.stage.loss_weights["kl"] == 0.01 and config.data.paths == ["a.jsonl"]


@pytest.mark.parametrize("assignment, message", [
    ("max_stepz=3", "no field 'max_stepz'"),
    ("optim.nope=1", "no field 'nope'"),
    ("stage.loss_weights.klx=1", "no key 'klx'"),
    ("max_steps=abc", "invalid literal"),
    ("dist.strategy=zero3", "not one of"),
    ("max_steps", "key=value"),
    ("batch_size=0", "batch_size must be >= 1"),
    ("data.tasks=xyz", "not JSON; a list is written like"),
    ("stage.ce_reduction=mean", "must be .token. or .sample."),
])
def test_bad_override_is_a_clear_error(assignment, message):
    with pytest.raises(ValueError, match=message):
        resolve_recipe("tiny-vae", [assignment])


def test_cli_unknown_field_exits_2_with_one_line(tmp_path, capsys):
    code = main(["train", "tiny-vae", "--out", str(tmp_path / "run"), "--set", "optim.learning_rate=1"])
    err = capsys.readouterr().err
    assert code == 2 and "no field 'learning_rate'" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # nothing written for a rejected config


def test_unknown_recipe_is_an_error():
    with pytest.raises(ValueError, match="unknown recipe 'tiny-foo'.*tiny-vae"):
        get_recipe("tiny-foo")


def test_config_json_round_trip():
    config = apply_overrides(get_recipe("tiny-ar"), ["optim.betas=[0.5, 0.6]", "seed=3"])
    again = config_from_dict(TrainConfig, json.loads(json.dumps(config_to_dict(config))))
    assert again == config


def test_global_batch_must_split_over_ranks_and_accumulation():
    config = apply_overrides(get_recipe("tiny-vae"), ["batch_size=6", "optim.grad_accum_steps=2"])
    assert config.micro_batch_size(1) == 3
    with pytest.raises(ValueError, match="not divisible"):
        config.micro_batch_size(2)


def test_schedule_warmup_then_cosine_analytic():
    f = LRLambda("cosine", warmup_steps=4, max_steps=104, min_ratio=0.1)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == pytest.approx(1.0)
    assert f(54) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(104) == pytest.approx(0.1) and f(500) == pytest.approx(0.1)
    g = LRLambda("constant", warmup_steps=0, max_steps=10, min_ratio=0.1)
    assert g(0) == g(9) == 1.0
