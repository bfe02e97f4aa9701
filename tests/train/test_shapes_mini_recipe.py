"""The shapes-mini recipe is what produced the bundled model, and the two cannot drift apart:

- every run of the recipe has the config stored when it ran (training/shapes-mini/provenance/), apart
  from its parent and checkpoint interval, with each deliberate difference listed here with its reason;
- the model-level settings its last run exports (`nexusgen.json`: sampling, N, grids, reference size,
  templates) and the part configs equal the bundled model's.
"""

import json
import re
from pathlib import Path

import pytest

from nexusgen.loading.folder import BUNDLED
from nexusgen.recipes import MULTI_STAGE_RECIPES, get_recipe
from nexusgen.recipes.shapes_mini import STAGES, TABLE
from nexusgen.train.config import TrainConfig, config_from_dict, config_to_dict
from nexusgen.train.stages.common import generated_messages

PROVENANCE = Path(__file__).resolve().parents[2] / "training" / "shapes-mini" / "provenance"
BUNDLE = BUNDLED["shapes-mini"]

# Provenance files keep the names their runs were stored under (pilots that became stages, the decoder
# stages' old names). provenance/edit_decoder.* is the editing decoder of bundles v1-v5, trained on predicted
# targets as upstream does: not a stage any more.
STORED_AS = {
    "vlm_answers": "vlm2", "ar": "ar2",
    "ar_where_only": "where_plain_pilot", "ar_where_relations": "where_then_relation_pilot",
    "ar_relations_only": "relations_only_pilot", "ar_counts_only": "counts_only_pilot",
    "ar_captions_only": "captions_only_pilot", "ar_relations_only2": "relations_only_again_pilot",
    "ar_alike_only": "alike_relations_only_pilot",
    "generation_decoder": "gen_decoder", "generation_decoder_more": "gen_decoder_more",
    "editing_decoder": "edit_decoder_true_targets", "editing_decoder_more": "edit_decoder_more",
    "editing_decoder_more2": "edit_decoder_more2", "editing_decoder_more3": "edit_decoder_more3",
}
# Fields added after some runs were stored, with the value that does what the code did before they existed.
ADDED_LATER = {"ema_warmup": False, "true_target_prob": 0.0, "ce_reduction": "token"}
# Where a run's row differs from its stored config on purpose, and why.
DEVIATIONS = {
    ("generation_decoder", "stage.model"):
        "the stored run left the context ids to the shapes-mini decoder preset, which then gave upstream's zero "
        "ids; the preset now gives grid ids, so the row asks for zero ids, as the bundled decoder was trained",
    ("generation_decoder_more", "stage.model"):
        "the stored run's parent had grid context ids written into its generation_decoder/config.json by hand "
        "(a stage could not set them yet); the row sets them",
    ("generation_decoder_more", "stage.ema_decay"):
        "the bundle took the run's trained weights at its last step (export-checkpoint --no-ema), which a run "
        "without an EMA exports; the stored run kept a 0.999 EMA the bundle did not use",
}
IGNORED = ("stage.parent", "save_every")


def _stored(name: str) -> TrainConfig:
    data = json.loads((PROVENANCE / f"{STORED_AS.get(name, name)}.config.json").read_text())
    data["stage"] = {**ADDED_LATER, **data["stage"]}
    return config_from_dict(TrainConfig, data)  # old stage names and untyped stage.model read as today's


def _flat(data: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict) and key not in ("world_options", "loss_weights"):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _differences(recipe: TrainConfig, stored: TrainConfig) -> set[str]:
    a, b = (_flat(json.loads(json.dumps(config_to_dict(c)))) for c in (recipe, stored))
    # A run without an EMA does nothing with its warm-up (an EMA missing on one side shows in ema_decay).
    ignored = (*IGNORED, "stage.ema_warmup") if not recipe.stage.ema_decay else IGNORED
    return {key.rsplit(".", 1)[0] if key.startswith("stage.model.") else key
            for key in a.keys() | b.keys() if a.get(key) != b.get(key) and key not in ignored}


@pytest.mark.parametrize("name", list(STAGES))
def test_each_run_has_the_config_it_was_trained_with(name):
    differences = _differences(get_recipe(f"shapes-mini-{name}"), _stored(name))
    unexplained = {key for key in differences if (name, key) not in DEVIATIONS}
    assert not unexplained, f"{name}: the recipe differs from provenance in {sorted(unexplained)}"
    assert {key for (run, key) in DEVIATIONS if run == name} == differences  # no stale explanation


def test_the_comparison_catches_a_changed_setting():
    stored = _stored("ar_anneal")
    assert _differences(get_recipe("shapes-mini-ar_anneal"), stored) == set()
    changed = get_recipe("shapes-mini-ar_anneal")
    changed.lr, changed.data.world_options["und_types"] = 3e-4, ["count"]
    assert _differences(changed, stored) == {"lr", "data.world_options"}


def test_the_table_runs_every_row_in_order_each_from_the_run_before():
    names = list(MULTI_STAGE_RECIPES["shapes-mini"])
    assert names == [run for row in TABLE for run in row.run_names]
    assert len(names) == 45 and names[-1] == "editing_decoder_more3" and len(set(names)) == len(names)
    previous = None
    for row in TABLE:
        assert row.after == previous, f"{row.name} says it runs after {row.after}, not {previous}"
        previous = row.run_names[-1]
    ar_edit = next(row for row in TABLE if row.name == "ar_edit")
    assert ar_edit.run_names == ["ar_edit", *(f"ar_edit{n}" for n in range(2, 19))]
    assert [get_recipe(f"shapes-mini-{n}").seed for n in ar_edit.run_names] == list(ar_edit.seeds)
    assert [get_recipe(f"shapes-mini-editing_decoder_more{n}").seed for n in ("", 2, 3)] == [15, 24, 25]


def test_ordered_relation_rows_answer_relations_with_the_comparison():
    """Rows with ordered relations train "B is in column 1 and A is in column 3, so yes." answers."""
    config = get_recipe("shapes-mini-ar_relations_only")
    source = generated_messages(config)[0]
    said = [source[i]["messages"][1]["content"] for i in range(24)]
    assert all(re.search(r"(column|row) \d, so (yes|no)\.$|第\d[列行]，所以[是否]。$", a) for a in said), said
    plain = generated_messages(get_recipe("shapes-mini-ar_where_only"))[0]
    assert all(plain[i]["source"].endswith("/where") for i in range(8))


def _exported_folder(tmp_path) -> Path:
    """What the recipe's last run leaves in RUN/final: its parts (configs are what matters here) and the
    nexusgen.json that `nexusgen train shapes-mini` writes there (train/multistage.py)."""
    from nexusgen.loading.autoregressive import build_autoregressive, save_autoregressive
    from nexusgen.models.autoregressive import ARConfig
    from nexusgen.train.stages.parts import write_preset_config

    final = get_recipe(f"shapes-mini-{list(STAGES)[-1]}")
    ar_rows = [get_recipe(f"shapes-mini-{n}") for n in STAGES if get_recipe(f"shapes-mini-{n}").stage.name == "ar"]
    settings = {k: v for c in ar_rows for k, v in c.stage.model.chosen().items()}
    folder = tmp_path / "final"
    model, tokenizer, image_processor = build_autoregressive(ARConfig.from_preset(final.stage.preset, **settings))
    save_autoregressive(folder / "autoregressive", model, tokenizer, image_processor)
    for part in ("generation_decoder", "editing_decoder", "vae"):
        (folder / part).mkdir()
    assert write_preset_config(folder, final.stage.preset, overwrite=True)
    return folder


def test_the_recipes_final_model_settings_equal_the_bundled_nexusgen_json(tmp_path):
    exported = json.loads((_exported_folder(tmp_path) / "nexusgen.json").read_text())
    bundled = json.loads((BUNDLE / "nexusgen.json").read_text())
    # Training exports fp32 master weights; the bundle stores them in fp16 (scripts/bundle_shapes_mini.py).
    assert (exported.pop("dtype"), bundled.pop("dtype")) == ("float32", "float16")
    assert exported == bundled
    assert bundled["sampling"]["num_steps"] == 6 and bundled["sampling"]["edit_guidance_scale"] == 2.0


def test_the_recipes_part_configs_equal_the_bundled_ones():
    """The AR model, both decoders and the VAE of the last run are the bundle's, setting for setting."""
    import dataclasses

    from nexusgen.loading.autoregressive import read_ar_config
    from nexusgen.models.autoregressive import ARConfig
    from nexusgen.models.decoder import DECODER_PRESETS, DecoderConfig
    from nexusgen.models.vae import VAE_PRESETS
    from nexusgen.processing.templates import model_templates

    bundled_ar = read_ar_config(BUNDLE / "autoregressive")
    recipe_ar = ARConfig.from_preset("shapes-mini")

    def fields(config):
        qwen = config.qwen_config.to_dict()
        for part in ("text_config", "vision_config"):
            qwen[part].pop("dtype", None)  # the storage dtype
        system_prompt, answer_prefixes = model_templates(config)  # a preset's None: the canonical text
        return {**config.to_dict(), "qwen": qwen, "system_prompt": system_prompt, "answer_prefixes": answer_prefixes}

    assert fields(bundled_ar) == fields(recipe_ar)
    generation = get_recipe("shapes-mini-generation_decoder_more").stage.model.chosen()
    for part, settings in (("generation_decoder", generation), ("editing_decoder", {})):
        bundled = DecoderConfig(**json.loads((BUNDLE / part / "config.json").read_text()))
        assert bundled == dataclasses.replace(DECODER_PRESETS["shapes-mini"], **settings), part
    vae = json.loads((BUNDLE / "vae" / "config.json").read_text())
    preset = dataclasses.asdict(VAE_PRESETS["shapes-mini"])
    assert {k: tuple(v) if isinstance(v, list) else v for k, v in vae.items() if k in preset} == preset
