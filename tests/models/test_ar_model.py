"""NexusGenARModel at the tiny preset: shapes, presets, the teacher-forced loss (checked by hand against
stock transformers), one-pass == the official sequential loop, and parity with transformers' own 3-D
position logic."""

import math

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from nexusgen.data.collate import collate_ar
from nexusgen.loading.autoregressive import build_autoregressive
from nexusgen.models.autoregressive import AR_PRESETS, ARConfig, NexusGenARModel
from nexusgen.processing import NexusGenProcessor


@pytest.fixture(scope="module")
def tiny():
    model, tokenizer, image_processor = build_autoregressive("tiny", seed=0)
    processor = NexusGenProcessor(tokenizer, image_processor, model.config)
    return model.eval(), tokenizer, image_processor, processor


def _samples():
    red, blue = Image.new("RGB", (90, 60), (220, 20, 20)), Image.new("RGB", (64, 64), (20, 20, 220))
    noise = Image.fromarray((torch.rand(50, 70, 3) * 255).byte().numpy())
    return [
        {"messages": [{"role": "user", "content": "<image>\nWhat colour is it?"},
                      {"role": "assistant", "content": "Red."}], "images": [red]},
        {"messages": [{"role": "user", "content": "Generate an image according to the following description: "
                                                  "a blue square"},
                      {"role": "assistant", "content": "Here is an image based on the description: <image>"}],
         "images": [blue]},
        {"messages": [{"role": "user", "content": "<image> Make it blue."},
                      {"role": "assistant", "content": "Here is the image: <image>"}],
         "images": [noise, blue]},
    ]


def test_presets_are_consistent():
    for name in AR_PRESETS:
        config = ARConfig.from_preset(name)
        rows, cols = config.output_grid
        assert config.num_output_tokens == rows * cols
    tiny = ARConfig.from_preset("tiny")
    assert (tiny.token_px, tiny.output_grid, tiny.output_grid_thw) == (16, (4, 4), (1, 8, 8))
    with pytest.raises(ValueError, match="num_output_tokens"):
        ARConfig.from_preset("tiny", num_output_tokens=81)
    with pytest.raises(ValueError, match="multiples"):
        ARConfig.from_preset("tiny", output_image_px=(60, 64))
    assert ARConfig.from_dict(tiny.to_dict()) == tiny


def test_mid_preset_size():
    with torch.device("meta"):
        model = NexusGenARModel(ARConfig.from_preset("mid"))
    assert 3e6 < sum(p.numel() for p in model.parameters()) < 8e6


def test_real_dimensions_on_meta_device():
    with torch.device("meta"):
        model = NexusGenARModel(ARConfig.from_preset("nexus-gen-v2"))
    assert model.vision_head.weight.shape == (3584, 3584) and model.vision_head.bias is None
    assert model.image_prefill_embeds.weight.shape == (81, 3584)
    total = sum(p.numel() for p in model.parameters())
    assert 8.2e9 < total < 8.4e9  # Qwen2.5-VL-7B (8.29 B) + vision head (12.8 M) + table (0.29 M)
    assert model.config.output_grid_thw == (1, 18, 18)


def test_shapes(tiny):
    model, _, _, processor = tiny
    batch = processor.image_prompt_inputs(["a red circle", "two blue squares"])
    assert model.predict_image_embeds(batch["input_ids"], batch["attention_mask"]).shape == (2, 16, 64)
    vision = processor.process_images([Image.new("RGB", (64, 64)), Image.new("RGB", (96, 32))], [True, False])
    embeds = model.encode_images(vision["pixel_values"], vision["image_grid_thw"])
    assert [tuple(e.shape) for e in embeds] == [(16, 64), (12, 64)]
    losses = model.training_loss(collate_ar(_samples(), processor.tokenizer, processor.image_processor,
                                            model.config))
    assert set(losses) == {"loss", "ce", "image_loss", "image_mse", "image_cos"}
    assert all(v.shape == () for v in losses.values()) and losses["loss"].requires_grad


def _reference_loss(model, batch, w_tok, w_img):
    """The docs/upstream.md §3.1 loss written out position by position on top of stock transformers."""
    vlm, img_id = model.vlm, model.image_token_id
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    embeds = vlm.model.get_input_embeddings()(ids).clone()
    features = torch.cat(vlm.model.get_image_features(batch["pixel_values"], batch["image_grid_thw"],
                                                      return_dict=True).pooler_output)
    counts = (batch["image_grid_thw"].prod(-1) // 4).tolist()
    targets, cursor, image = [], 0, 0
    for b in range(ids.shape[0]):  # walk image tokens in row-major order
        for t in range(ids.shape[1]):
            if ids[b, t] == img_id and mask[b, t]:
                k = cursor - sum(counts[:image])
                if batch["image_is_target"][image]:
                    targets.append(features[cursor])
                    embeds[b, t] = model.image_prefill_embeds.weight[k]
                else:
                    embeds[b, t] = features[cursor]
                cursor += 1
                if cursor == sum(counts[:image + 1]):
                    image += 1
    mm = ((ids == img_id) & mask.bool()).int()
    positions, _ = vlm.model.get_rope_index(ids, mm, image_grid_thw=batch["image_grid_thw"],
                                            attention_mask=mask)
    hidden = vlm.model.language_model(inputs_embeds=embeds, attention_mask=mask,
                                      position_ids=positions).last_hidden_state
    ce_terms, preds = [], []
    for b in range(ids.shape[0]):
        for t in range(ids.shape[1] - 1):
            label = int(labels[b, t + 1])
            if label == img_id:
                preds.append(model.vision_head(hidden[b, t]))
            elif label != -100:
                ce_terms.append(-F.log_softmax(vlm.lm_head(hidden[b, t]), -1)[label])
    ce = torch.stack(ce_terms).mean()
    pred, target = torch.stack(preds), torch.stack(targets)
    mse = ((pred - target) ** 2).mean()
    cos = torch.stack([1 - (p @ y) / (p.norm() * y.norm()) for p, y in zip(pred, target)]).mean()
    return w_tok * ce + w_img * (0.5 * mse + 0.5 * cos), ce, mse, cos


def test_training_loss_matches_hand_computation(tiny):
    model, tokenizer, image_processor, _ = tiny
    batch = collate_ar(_samples(), tokenizer, image_processor, model.config)
    with torch.no_grad():
        got = model.training_loss(batch, token_weight=0.3, image_weight=2.0)
        loss, ce, mse, cos = _reference_loss(model, batch, 0.3, 2.0)
    assert torch.allclose(got["loss"], loss, atol=1e-5) and torch.allclose(got["ce"], ce, atol=1e-5)
    assert torch.allclose(got["image_mse"], mse, atol=1e-6)
    assert torch.allclose(got["image_cos"], cos, atol=1e-6)
    assert math.isclose(got["image_loss"].item(), 0.5 * mse.item() + 0.5 * cos.item(), rel_tol=1e-5)


def test_loss_without_targets_is_finite_and_touches_new_parameters(tiny):
    model, tokenizer, image_processor, _ = tiny
    batch = collate_ar(_samples()[:1], tokenizer, image_processor, model.config)
    losses = model.training_loss(batch)
    assert losses["image_loss"].item() == 0.0 and torch.isfinite(losses["loss"])
    model.zero_grad()
    losses["loss"].backward()
    assert model.vision_head.weight.grad is not None and model.image_prefill_embeds.weight.grad is not None
    model.zero_grad()


def test_training_reduces_the_loss():
    model, tokenizer, image_processor = build_autoregressive("tiny", seed=1)
    batch = collate_ar(_samples(), tokenizer, image_processor, model.config)
    for p in model.vlm.model.visual.parameters():  # the ViT is frozen in the AR stage
        p.requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    first = None
    for _ in range(8):
        losses = model(batch)
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
        first = first if first is not None else losses
    assert losses["ce"] < 0.7 * first["ce"] and losses["image_loss"] < 0.7 * first["image_loss"]


@pytest.mark.parametrize("task", ["generate", "edit"])
def test_one_pass_equals_sequential_loop(tiny, task):
    model, _, _, processor = tiny
    prompts = ["a red circle left of a blue square", "stars"]
    images = None
    if task == "edit":
        images = [Image.new("RGB", (90, 60), "red"), Image.new("RGB", (40, 100), "blue")]
    batch = processor.image_prompt_inputs(prompts, images, task=task)
    args = (batch["input_ids"], batch["attention_mask"], batch["pixel_values"], batch["image_grid_thw"])
    one_pass = model.predict_image_embeds(**batch)  # the builder returns exactly the model's inputs
    sequential = model.predict_image_embeds_sequential(*args)
    assert torch.allclose(one_pass, sequential, atol=1e-5)
    standard = model.predict_image_embeds_sequential(*args, feed="predicted")
    assert torch.allclose(standard[:, 0], one_pass[:, 0], atol=1e-5)  # same until the first fed-back input
    assert (standard[:, 1:] - one_pass[:, 1:]).abs().max() > 1e-3
    alone = processor.image_prompt_inputs(prompts[1:], images[1:] if images else None, task=task)
    single = model.predict_image_embeds(alone["input_ids"], alone["attention_mask"], alone["pixel_values"],
                                        alone["image_grid_thw"])
    assert torch.allclose(single[0], one_pass[1], atol=1e-5)  # padding in a batch changes nothing


def test_one_pass_matches_transformers_position_logic(tiny):
    """Independent check of positions and inputs: transformers' own forward (compute_3d_position_ids from
    input_ids + mm_token_type_ids + the grid list) on the hand-built sequence."""
    model, _, _, processor = tiny
    batch = processor.image_prompt_inputs(["a green triangle"])
    n = model.num_output_tokens
    ids = torch.cat([batch["input_ids"], torch.full((1, n), model.image_token_id)], 1)
    embeds = model.embed_tokens(ids).clone()
    embeds[0, -n:] = model.image_prefill_embeds.weight
    model.vlm.model.rope_deltas = None
    with torch.no_grad():
        hidden = model.vlm.model(input_ids=ids, inputs_embeds=embeds, attention_mask=torch.ones_like(ids),
                                 mm_token_type_ids=(ids == model.image_token_id).int(),
                                 image_grid_thw=torch.tensor([model.config.output_grid_thw])).last_hidden_state
        reference = model.vision_head(hidden[:, -n - 1:-1])
        got = model.predict_image_embeds(batch["input_ids"])
    assert torch.allclose(got, reference, atol=1e-6)


def test_prompt_must_open_an_image(tiny):
    model, _, _, processor = tiny
    batch = processor.image_prompt_inputs("x")
    with pytest.raises(ValueError, match="vision_start"):
        model.predict_image_embeds(batch["input_ids"][:, :-1])
