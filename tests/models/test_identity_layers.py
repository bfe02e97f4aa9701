"""`NexusGenARModel.add_identity_layers` (block expansion): where the copies go, a start that changes no
output on any path, new layers that train and change the outputs, the KV cache over the deeper stack,
save / load, and bad counts."""

import copy

import pytest
import torch
from PIL import Image

from nexusgen.data.collate import collate_ar
from nexusgen.loading.autoregressive import build_autoregressive, load_autoregressive, save_autoregressive
from nexusgen.processing import ImageOnlyProcessor


def _samples():
    blue = Image.new("RGB", (64, 64), (20, 20, 220))
    return [{"messages": [{"role": "user", "content": "<image> What colour is it?"},
                          {"role": "assistant", "content": "Blue."}], "images": [blue]},
            {"messages": [{"role": "user", "content": "<image> Make it red."},
                          {"role": "assistant", "content": "Here is the image: <image>"}],
             "images": [blue, Image.new("RGB", (64, 64), (220, 20, 20))]}]


@pytest.fixture(scope="module")
def pair():
    """(the tiny model, the same model deepened by one copy per layer, tokenizer, image processor)."""
    plain, tokenizer, image_processor = build_autoregressive("tiny", seed=0)
    deep = copy.deepcopy(plain)
    deep.add_identity_layers(len(plain.vlm.model.language_model.layers))
    return plain.eval(), deep.eval(), tokenizer, image_processor


def _edit_inputs(model, tokenizer, image_processor):
    """predict_image_embeds' arguments for an edit of the blue image."""
    processor = ImageOnlyProcessor(tokenizer, image_processor, model.config)
    source = _samples()[0]["images"][0]
    chat = processor.chat_inputs([[{"role": "user", "content": "<image> Make it red."}]], [[source]],
                                 assistant_prefix="Here is the image: <image>")
    return chat["input_ids"], chat["attention_mask"], chat["pixel_values"], chat["image_grid_thw"]


def _layers(model):
    return model.vlm.model.language_model.layers


def test_each_copy_follows_its_layer(pair):
    plain, deep, _, _ = pair
    n = len(_layers(plain))
    assert len(_layers(deep)) == 2 * n
    assert deep.vlm.config.text_config.num_hidden_layers == 2 * n
    assert deep.config.qwen_config.text_config.num_hidden_layers == 2 * n
    assert len(deep.vlm.config.text_config.layer_types) == 2 * n
    assert [layer.self_attn.layer_idx for layer in _layers(deep)] == list(range(2 * n))
    for i in range(n):
        original, new = _layers(deep)[2 * i], _layers(deep)[2 * i + 1]
        assert torch.equal(original.mlp.down_proj.weight, _layers(plain)[i].mlp.down_proj.weight)
        assert torch.equal(new.self_attn.q_proj.weight, original.self_attn.q_proj.weight)
        assert not new.self_attn.o_proj.weight.any() and not new.mlp.down_proj.weight.any()


def test_fewer_copies_are_spread_over_the_stack():
    model = build_autoregressive("tiny", seed=0)[0]  # 2 layers
    first, second = _layers(model)
    model.add_identity_layers(1)  # one copy: of the first layer
    assert list(_layers(model))[::2] == [first, second]
    copy_of_first = _layers(model)[1]
    model.add_identity_layers(2)  # 3 layers, two copies: the first's and the last's
    grown = list(_layers(model))
    assert len(grown) == 5 and grown[0] is first and grown[2] is copy_of_first and grown[3] is second
    assert not grown[1].mlp.down_proj.weight.any() and not grown[4].mlp.down_proj.weight.any()


def test_the_start_changes_no_output(pair):
    plain, deep, tokenizer, image_processor = pair
    batch = collate_ar(_samples(), tokenizer, image_processor, plain.config)
    with torch.no_grad():
        assert torch.allclose(deep.training_loss(batch)["loss"], plain.training_loss(batch)["loss"], atol=1e-6)
    args = _edit_inputs(plain, tokenizer, image_processor)
    assert torch.allclose(deep.predict_image_embeds(*args), plain.predict_image_embeds(*args), atol=1e-5)


def test_new_layers_train_and_the_kv_cache_covers_them(pair):
    plain, deep, tokenizer, image_processor = pair
    model = copy.deepcopy(deep).train()
    batch = collate_ar(_samples(), tokenizer, image_processor, plain.config)
    model.training_loss(batch)["loss"].backward()
    new = _layers(model)[1]
    assert new.self_attn.o_proj.weight.grad.abs().sum() > 0 and new.mlp.down_proj.weight.grad.abs().sum() > 0
    with torch.no_grad():
        for layer in list(_layers(model))[1::2]:
            layer.self_attn.o_proj.weight.normal_(std=0.05)
            layer.mlp.down_proj.weight.normal_(std=0.05)
    model.eval()
    args = _edit_inputs(model, tokenizer, image_processor)
    one_pass = model.predict_image_embeds(*args)
    assert not torch.allclose(one_pass, plain.predict_image_embeds(*args), atol=1e-3)
    # the sequential loop and the interleaved generator run on the KV cache, layer by layer
    assert torch.allclose(one_pass, model.predict_image_embeds_sequential(*args), atol=1e-5)
    interleaved = model.generate_interleaved(*args, max_new_tokens=model.num_output_tokens + 2, max_images=1)
    assert torch.allclose(interleaved.image_embeds[0][0], one_pass[0], atol=1e-5)


def test_save_and_load_keep_the_depth(pair, tmp_path):
    _, deep, tokenizer, image_processor = pair
    save_autoregressive(tmp_path / "ar", deep, tokenizer, image_processor)
    loaded = load_autoregressive(tmp_path / "ar", device="cpu")[0]
    assert len(_layers(loaded)) == len(_layers(deep))
    state, want = loaded.state_dict(), deep.state_dict()
    assert state.keys() == want.keys() and all(torch.equal(state[k], want[k]) for k in want)


@pytest.mark.parametrize("count", [0, -1, 99, 1.5, True])
def test_bad_counts_are_refused(count):
    model = build_autoregressive("tiny", seed=0)[0]
    with pytest.raises(ValueError, match="add_layers must be"):
        model.add_identity_layers(count)
