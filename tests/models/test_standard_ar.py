"""The standard-AR ablation model (`image_feed="predicted"`): trained on ground-truth embeddings, its own
predictions fed back one token at a time at inference; saved with the model and set from a parent."""

import dataclasses

import pytest
import torch
from PIL import Image

from nexusgen.data.collate import collate_ar
from nexusgen.loading.autoregressive import build_autoregressive, load_autoregressive, save_autoregressive
from nexusgen.models.ar_generation import predict_image_embeds_sequential
from nexusgen.models.autoregressive import ARConfig
from nexusgen.processing import NexusGenProcessor


@pytest.fixture(scope="module")
def standard():
    model, tokenizer, image_processor = build_autoregressive("tiny", seed=0)
    model.config = dataclasses.replace(model.config, image_feed="predicted")
    return model.eval(), tokenizer, image_processor


def test_config_rejects_an_unknown_feed():
    with pytest.raises(ValueError, match="image_feed"):
        ARConfig.from_preset("tiny", image_feed="targets")


def test_inference_feeds_predictions_back(standard):
    model, tokenizer, image_processor = standard
    batch = NexusGenProcessor(tokenizer, image_processor, model.config).image_prompt_inputs(
        ["a red circle", "two blue squares"])
    got = model.predict_image_embeds(batch["input_ids"], batch["attention_mask"])
    fed_back = predict_image_embeds_sequential(model, batch["input_ids"], batch["attention_mask"], feed="predicted")
    prefilled = predict_image_embeds_sequential(model, batch["input_ids"], batch["attention_mask"], feed="prefill")
    torch.testing.assert_close(got, fed_back)
    assert not torch.allclose(got[:, 1:], prefilled[:, 1:])  # token 0 is read before any image input


def test_training_feeds_the_targets(standard):
    model, tokenizer, image_processor = standard
    sample = {"messages": [{"role": "user", "content": "draw"}, {"role": "assistant", "content": "<image>"}],
              "images": [Image.new("RGB", (64, 64), "red")]}
    batch = collate_ar([sample], tokenizer, image_processor, model.config)
    default = model.training_loss(batch)["image_loss"]
    torch.testing.assert_close(default, model.training_loss(batch, feed_targets=True)["image_loss"])
    assert not torch.allclose(default, model.training_loss(batch, feed_targets=False)["image_loss"])


def test_chat_refuses_a_standard_ar_model(standard):
    model, tokenizer, image_processor = standard
    chat = NexusGenProcessor(tokenizer, image_processor, model.config).chat_inputs(
        [[{"role": "user", "content": "hi"}]])
    with pytest.raises(ValueError, match="standard-AR"):
        model.generate_interleaved(chat["input_ids"], chat["attention_mask"], max_new_tokens=2)


def test_a_standard_ar_model_answers_in_text_as_its_prefilled_twin(standard):
    """Understanding (max_images=0) never reads an image feed, so the ablation model is scored on it too."""
    model, tokenizer, image_processor = standard
    twin = build_autoregressive("tiny", seed=0)[0].eval()
    chat = NexusGenProcessor(tokenizer, image_processor, model.config).chat_inputs(
        [[{"role": "user", "content": "<image>What is this?"}]], [[Image.new("RGB", (64, 64), "red")]])
    args = (chat["input_ids"], chat["attention_mask"], chat["pixel_values"], chat["image_grid_thw"])
    got = model.generate_interleaved(*args, max_new_tokens=4, max_images=0)
    want = twin.generate_interleaved(*args, max_new_tokens=4, max_images=0)
    assert len(got.sequences[0]) > 0
    assert all(torch.equal(a, b) for a, b in zip(got.sequences, want.sequences, strict=True))


def test_the_feed_is_saved_and_set_on_a_parent(standard, tmp_path):
    model, tokenizer, image_processor = standard
    save_autoregressive(tmp_path / "autoregressive", model, tokenizer, image_processor)
    assert load_autoregressive(tmp_path / "autoregressive")[0].config.image_feed == "predicted"

    from nexusgen.recipes import get_recipe
    from nexusgen.train.config import apply_overrides
    from nexusgen.train.stages.parts import build_autoregressive as build_stage_model

    overrides = [f"stage.parent={tmp_path}", 'stage.model={"image_feed": "prefill"}']
    loaded, _ = build_stage_model(apply_overrides(get_recipe("tiny-ar"), overrides), for_training=True)
    assert loaded.config.image_feed == "prefill"
    with pytest.raises(ValueError, match="unknown StageModelConfig fields: \\['num_output_tokens'\\]"):
        apply_overrides(get_recipe("tiny-ar"), [f"stage.parent={tmp_path}", 'stage.model={"num_output_tokens": 4}'])
