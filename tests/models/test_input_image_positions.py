"""`ARConfig.input_image_positions`: place features checked by hand, a zero start that changes no output,
places that reach input images only (not generated ones), every inference path, and save / load."""

import copy
import math

import pytest
import torch
from PIL import Image

from nexusgen.data.collate import collate_ar
from nexusgen.loading.autoregressive import build_autoregressive, load_autoregressive, save_autoregressive
from nexusgen.models.image_positions import NUM_FREQUENCIES, place_features
from nexusgen.processing import ImageOnlyProcessor


def _edit_and_generate():
    blue = Image.new("RGB", (64, 64), (20, 20, 220))
    noise = Image.fromarray((torch.rand(48, 80, 3, generator=torch.Generator().manual_seed(0)) * 255)
                            .byte().numpy())
    return [
        {"messages": [{"role": "user", "content": "<image> Make it blue."},
                      {"role": "assistant", "content": "Here is the image: <image>"}], "images": [noise, blue]},
        {"messages": [{"role": "user", "content": "Generate an image according to the following description: "
                                                  "a blue square"},
                      {"role": "assistant", "content": "Here is an image based on the description: <image>"}],
         "images": [blue]},
    ]


@pytest.fixture(scope="module")
def pair():
    """(model without places, the same weights with them, tokenizer, image processor)."""
    plain, tokenizer, image_processor = build_autoregressive("tiny", seed=0)
    placed = copy.deepcopy(plain)
    placed.add_input_image_positions()
    return plain.eval(), placed.eval(), tokenizer, image_processor


def test_place_features_by_hand():
    grids = torch.tensor([[1, 4, 6], [2, 2, 2]])  # merge 2: a 2x3-token image, then 2 frames of 1 token
    feats = place_features(grids, merge_size=2)
    assert feats.shape == (6 + 2, 4 * NUM_FREQUENCIES)
    k = torch.arange(NUM_FREQUENCIES)
    y, x = 1.5 / 2, 2.5 / 3  # token (row 1, column 2) = raster index 5: its centre
    angles = torch.cat([math.pi * 2.0**k * y, math.pi * 2.0**k * x])
    assert torch.allclose(feats[5], torch.cat([angles.sin(), angles.cos()]), atol=1e-6)
    assert torch.equal(feats[6], feats[7])  # every frame of a video shares the places
    eight = place_features(torch.tensor([[1, 16, 16]]), merge_size=2)
    assert torch.unique(eight, dim=0).shape[0] == 64  # every token of an 8x8 grid has its own place
    # normalised places: the top-left token of a 2x2 grid is centred at (0.25, 0.25)
    angles = torch.cat([math.pi * 2.0**k * 0.25] * 2)
    assert torch.allclose(place_features(torch.tensor([[1, 4, 4]]), 2)[0], torch.cat([angles.sin(), angles.cos()]),
                          atol=1e-6)


def test_zero_start_changes_nothing(pair):
    plain, placed, tokenizer, image_processor = pair
    assert placed.config.input_image_positions and not plain.config.input_image_positions
    batch = collate_ar(_edit_and_generate(), tokenizer, image_processor, plain.config)
    with torch.no_grad():
        assert torch.equal(plain.training_loss(batch)["loss"], placed.training_loss(batch)["loss"])


def test_places_reach_input_images_only(pair):
    plain, placed, tokenizer, image_processor = pair
    model = copy.deepcopy(placed)
    with torch.no_grad():
        model.input_image_positions.proj.weight.normal_(std=0.5)
    edit, generate = (collate_ar([s], tokenizer, image_processor, plain.config) for s in _edit_and_generate())
    with torch.no_grad():
        assert not torch.allclose(model.training_loss(edit)["loss"], plain.training_loss(edit)["loss"])
        # a generation sample has no input image: its target's positions are fed the prefill table
        assert torch.equal(model.training_loss(generate)["loss"], plain.training_loss(generate)["loss"])
    model.train()
    model.training_loss(edit)["loss"].backward()
    assert model.input_image_positions.proj.weight.grad.abs().sum() > 0


def test_every_inference_path_reads_the_places(pair):
    """predict_image_embeds (one pass), the official sequential loop and generate_interleaved all read the
    input image with its places: with non-zero weights they agree with each other and differ from the
    model without places."""
    plain, placed, tokenizer, image_processor = pair
    model = copy.deepcopy(placed)
    with torch.no_grad():
        model.input_image_positions.proj.weight.normal_(std=0.5)
    processor = ImageOnlyProcessor(tokenizer, image_processor, model.config)
    source = _edit_and_generate()[0]["images"][0]
    chat = processor.chat_inputs([[{"role": "user", "content": "<image> Make it blue."}]], [[source]],
                                 assistant_prefix="Here is the image: <image>")
    args = (chat["input_ids"], chat["attention_mask"], chat["pixel_values"], chat["image_grid_thw"])
    one_pass = model.predict_image_embeds(*args)
    assert torch.allclose(one_pass, model.predict_image_embeds_sequential(*args), atol=1e-5)
    interleaved = model.generate_interleaved(*args, max_new_tokens=model.num_output_tokens + 2, max_images=1)
    assert torch.allclose(interleaved.image_embeds[0][0], one_pass[0], atol=1e-5)
    assert not torch.allclose(one_pass, plain.predict_image_embeds(*args), atol=1e-3)
    assert torch.equal(placed.predict_image_embeds(*args), plain.predict_image_embeds(*args))


def test_save_and_load_keep_the_places(pair, tmp_path):
    _, placed, tokenizer, image_processor = pair
    model = copy.deepcopy(placed)
    with torch.no_grad():
        model.input_image_positions.proj.weight.normal_()
    save_autoregressive(tmp_path / "ar", model, tokenizer, image_processor)
    loaded = load_autoregressive(tmp_path / "ar", device="cpu")[0]
    assert loaded.config.input_image_positions
    assert torch.equal(loaded.input_image_positions.proj.weight, model.input_image_positions.proj.weight)
    plain_folder = tmp_path / "plain"
    save_autoregressive(plain_folder, pair[0], tokenizer, image_processor)
    assert load_autoregressive(plain_folder, device="cpu")[0].input_image_positions is None
    # a config that asks for places, over weights without them: the missing tensor is named
    config_file = plain_folder / "nexusgen_ar.json"
    config_file.write_text(config_file.read_text().replace('"input_image_positions": false',
                                                           '"input_image_positions": true'))
    with pytest.raises(ValueError, match="missing tensor 'input_image_positions.proj.weight'"):
        load_autoregressive(plain_folder, device="cpu")


def test_places_are_in_units_of_each_tokens_rms(pair):
    """embeds + proj(features) * RMS(embeds): a ViT token of RMS ~3 and one of RMS ~0.03 get places of the
    same size relative to themselves."""
    _, placed, _, _ = pair
    model = copy.deepcopy(placed)
    with torch.no_grad():
        model.input_image_positions.proj.weight.normal_()
    grids = torch.tensor([[1, 4, 4]])  # 2x2 tokens
    embeds = torch.randn(4, model.config.hidden_size) * torch.tensor([3.0, 3.0, 0.03, 0.03])[:, None]
    with torch.no_grad():
        got = model.with_input_positions(embeds, grids)
        places = place_features(grids, model.config.merge_size) @ model.input_image_positions.proj.weight.T
    rms = embeds.pow(2).mean(-1, keepdim=True).sqrt()
    assert torch.allclose(got, embeds + places * rms, atol=1e-5)
    relative = (got - embeds).norm(dim=-1) / embeds.norm(dim=-1)
    assert torch.allclose(relative, places.norm(dim=-1) / math.sqrt(model.config.hidden_size), rtol=1e-4)
