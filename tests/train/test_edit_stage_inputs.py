"""The editing_decoder stage's inputs: mixed EN/ZH answer prefixes in one batch, and the reference size."""

import pytest
import torch

import nexusgen.recipes.worlds  # noqa: F401 (registers ShapesWorld as "shapes")
from nexusgen.data.worlds import WorldSource
from nexusgen.loading.autoregressive import build_autoregressive
from nexusgen.processing.processor import NexusGenProcessor
from nexusgen.train.stages.editing_decoder import EditDecoderTrainModule, make_collate


def _edit_samples(n):
    source = WorldSource("shapes", 200, seed=3, tasks=("edit",), zh_fraction=0.5)
    samples = [dict(source[i], position=i) for i in range(n)]
    prefixes = {s["messages"][-1]["content"] for s in samples}
    assert len(prefixes) == 2, "need both languages in the batch"
    return samples


def _tiny_ar():
    """A random tiny AR model (eval mode) and its processor."""
    torch.manual_seed(0)
    model, tokenizer, image_processor = build_autoregressive("tiny")
    return model.eval(), NexusGenProcessor(tokenizer, image_processor, model.config)


def _module(model, **kwargs):
    return EditDecoderTrainModule(torch.nn.Linear(1, 1), torch.nn.Linear(1, 1), model, seed=0, loss_weight=1.0,
                                  cond_dropout_prob=0.0, **kwargs)


def test_mixed_language_batch_equals_per_sample_predictions_and_reference_is_resized():
    model, processor = _tiny_ar()
    samples = _edit_samples(6)
    module = _module(model)
    collate = make_collate(32, processor, reference_px=128)
    batch = collate(samples)
    # 128-px references: 16x16 patches of 8 px -> an 8x8 token grid for every source
    assert batch["source_grid_thw"].tolist() == [[1, 16, 16]] * 6
    targets = module._embed(batch, "target")
    singles = torch.cat([module._embed(collate([s]), "target") for s in samples])
    assert targets.shape == (6, model.config.num_output_tokens, model.config.hidden_size)
    assert torch.allclose(targets, singles, atol=1e-5)
    assert module.condition_kwargs(batch, targets)["reference_grid"] == (8, 8)


def test_a_fresh_editing_decoder_starts_from_the_parents_generation_dit(tmp_path):
    from nexusgen.loading.decoders import load_generation_decoder
    from nexusgen.recipes import get_recipe
    from nexusgen.train.config import apply_overrides
    from nexusgen.train.loop import train
    from nexusgen.train.stages.parts import build_decoder

    train(apply_overrides(get_recipe("tiny-generation_decoder"), ["max_steps=2", "save_every=0", "progress=false"]),
          tmp_path / "gen")
    generation = load_generation_decoder(tmp_path / "gen/final/generation_decoder")
    config = apply_overrides(get_recipe("tiny-editing_decoder"), [f"stage.parent={tmp_path / 'gen'}"])
    editing = build_decoder(config, "editing")
    want, got = generation.transformer.state_dict(), editing.transformer.state_dict()
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    from_preset = build_decoder(apply_overrides(get_recipe("tiny-editing_decoder"), ["stage.parent=null"]), "editing")
    assert not torch.equal(from_preset.transformer.state_dict()["proj_out.weight"], want["proj_out.weight"])


def test_reference_dropout_is_removed_and_refused_only_when_turned_on(tmp_path):
    """stage.reference_dropout_prob did not help and was removed: a stored config that leaves it at 0 still
    loads, one that turns it on (or an override that sets it) is one line naming it."""
    import json

    from nexusgen.recipes import get_recipe
    from nexusgen.train.config import apply_overrides, config_to_dict, load_config

    stored = config_to_dict(get_recipe("tiny-editing_decoder"))
    stored["stage"]["reference_dropout_prob"] = 0.0
    (tmp_path / "old.json").write_text(json.dumps(stored))
    assert load_config(tmp_path / "old.json").stage == get_recipe("tiny-editing_decoder").stage
    stored["stage"]["reference_dropout_prob"] = 0.5
    (tmp_path / "on.json").write_text(json.dumps(stored))
    with pytest.raises(ValueError, match="reference_dropout_prob .* was removed"):
        load_config(tmp_path / "on.json")
    with pytest.raises(ValueError, match="reference_dropout_prob .* was removed"):
        apply_overrides(get_recipe("tiny-editing_decoder"), ["stage.reference_dropout_prob=0.3"])


def test_true_targets_replace_whole_predictions_reproducibly():
    model, processor = _tiny_ar()
    batch = make_collate(32, processor, reference_px=128, true_targets=True)(_edit_samples(16))

    def targets(prob):
        return _module(model, true_target_prob=prob)._embed(batch, "target")

    predicted = targets(0.0)
    true = torch.stack(list(model.encode_images(batch["true_target_pixel_values"], batch["true_target_grid_thw"])))
    assert torch.equal(targets(1.0), true) and not torch.allclose(true, predicted)
    mixed = targets(0.5)
    is_true = (mixed == true).flatten(1).all(1)
    assert bool((is_true ^ (mixed == predicted).flatten(1).all(1)).all())  # whole samples, one or the other
    assert 0 < int(is_true.sum()) < 16 and torch.equal(targets(0.5), mixed)  # same seed, same draws


def test_all_true_targets_skip_the_ar_prediction(monkeypatch):
    model, processor = _tiny_ar()
    batch = make_collate(32, processor, reference_px=128, true_targets=True)(_edit_samples(4))
    monkeypatch.setattr(model, "predict_image_embeds", lambda *a, **k: pytest.fail("AR ran for p=1"))
    true = torch.stack(list(model.encode_images(batch["true_target_pixel_values"], batch["true_target_grid_thw"])))
    assert torch.equal(_module(model, true_target_prob=1.0)._embed(batch, "target"), true)
    without_prompts = make_collate(32, processor, reference_px=128, true_targets=True, predictions=False)
    lean = without_prompts(_edit_samples(4))
    assert "ar_inputs" not in lean and torch.equal(_module(model, true_target_prob=1.0)._embed(lean, "target"), true)


def test_true_target_prob_is_validated_and_reaches_the_edit_stage_module():
    from nexusgen.recipes import get_recipe
    from nexusgen.train.config import apply_overrides
    from nexusgen.train.parallel import DistInfo
    from nexusgen.train.stages import editing_decoder

    with pytest.raises(ValueError, match="true_target_prob"):
        apply_overrides(get_recipe("tiny-editing_decoder"), ["stage.true_target_prob=1.5"])
    with pytest.raises(ValueError, match="for stage editing_decoder"):
        apply_overrides(get_recipe("tiny-generation_decoder"), ["stage.true_target_prob=0.5"])
    config = apply_overrides(get_recipe("tiny-editing_decoder"), ["stage.true_target_prob=0.5"])
    stage = editing_decoder.build(config, DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu")))
    assert stage.module.true_target_prob == 0.5
    batch = stage.collate(_edit_samples(2))
    assert "true_target_pixel_values" in batch and "ar_inputs" in batch  # half the samples still predict
    config = apply_overrides(get_recipe("tiny-editing_decoder"), ["stage.true_target_prob=1"])
    stage = editing_decoder.build(config, DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu")))
    assert "ar_inputs" not in stage.collate(_edit_samples(2))  # p=1 never predicts: no AR prompts built
