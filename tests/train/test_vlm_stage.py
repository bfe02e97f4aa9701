"""Stage `vlm`: the per-token pixel target is the token's own cell, the pixel term trains the ViT, and
the export holds the AR model without the training-only head."""

import numpy as np
import pytest
import torch
from PIL import Image

from nexusgen.data.collate import collate_ar
from nexusgen.loading.autoregressive import build_autoregressive
from nexusgen.recipes import get_recipe
from nexusgen.train.config import apply_overrides
from nexusgen.train.loop import train
from nexusgen.train.stages.vlm import DEFAULT_LOSS_WEIGHTS, VLMTrainModule, token_pixels


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model, tokenizer, image_processor = build_autoregressive("tiny")
    return model, tokenizer, image_processor


def _normalized(image: Image.Image, image_processor) -> np.ndarray:
    """(C, H, W) pixels as the processor normalises them, computed independently."""
    array = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0
    mean = np.asarray(image_processor.image_mean, dtype=np.float32)[:, None, None]
    std = np.asarray(image_processor.image_std, dtype=np.float32)[:, None, None]
    return (array - mean) / std


def test_token_pixels_are_each_tokens_own_cell(tiny):
    model, _, image_processor = tiny
    vision = model.vlm.config.vision_config
    patch, merge, temporal = vision.patch_size, vision.spatial_merge_size, vision.temporal_patch_size
    cell = patch * merge
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (3 * cell, 2 * cell, 3), dtype=np.uint8))  # 3 x 2 tokens
    out = image_processor(images=[image], do_resize=False, return_tensors="pt")
    rows = token_pixels(out["pixel_values"], vision)
    assert rows.shape == (6, merge * merge * 3 * temporal * patch * patch)
    expected = _normalized(image, image_processor)
    for token in range(6):
        ty, tx = divmod(token, 2)  # raster order over the 3 x 2 token grid
        patches = rows[token].view(merge, merge, 3, temporal, patch, patch)
        for dy in range(merge):
            for dx in range(merge):
                y, x = ty * cell + dy * patch, tx * cell + dx * patch
                want = expected[:, y:y + patch, x:x + patch]
                for t in range(temporal):  # a still image is repeated over the temporal patch
                    np.testing.assert_allclose(patches[dy, dx, :, t].numpy(), want, atol=1e-5)


def test_token_pixels_rejects_a_partial_token(tiny):
    vision = tiny[0].vlm.config.vision_config
    with pytest.raises(ValueError, match="do not split"):
        token_pixels(torch.zeros(6, 12), vision)


def _batch(tiny):
    model, tokenizer, image_processor = tiny
    images = [Image.new("RGB", (64, 64), c) for c in ("red", "blue")]
    samples = [{"messages": [{"role": "user", "content": "<image>\nWhat color?"},
                             {"role": "assistant", "content": name}], "images": [im]}
               for name, im in zip(("red", "blue"), images)]
    return collate_ar(samples, tokenizer, image_processor, model.config)


def test_loss_is_ce_plus_weighted_pixel_term_and_the_pixel_term_trains_the_vit(tiny):
    model = tiny[0]
    batch = _batch(tiny)
    module = VLMTrainModule(model, {**DEFAULT_LOSS_WEIGHTS, "pixels": 2.5})
    out = module(batch)
    ce = model.training_loss(batch, image_weight=0.0)["ce"]
    torch.testing.assert_close(out["ce"], ce)
    torch.testing.assert_close(out["loss"].detach(), ce + 2.5 * out["pixel_mse"])
    model.zero_grad(set_to_none=True)
    only_pixels = VLMTrainModule(model, {"token": 0.0, "image": 0.0, "pixels": 1.0, "semantic": 0.0})
    only_pixels(batch)["loss"].backward()
    patch_embed = model.vlm.model.visual.patch_embed.proj.weight
    assert patch_embed.grad is not None and patch_embed.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)


def test_vlm_run_lowers_the_pixel_loss_and_exports_without_the_head(tmp_path):
    config = apply_overrides(get_recipe("tiny-vlm"), ["max_steps=30", "save_every=0", "progress=false",
                                                      "log_every=1", "lr=3e-3", 'stage.loss_weights={"token": 0.0}'])
    train(config, tmp_path)
    from nexusgen.train.metrics import read_metrics

    records = read_metrics(tmp_path / "metrics.jsonl")
    first, last = np.mean([r["pixel_mse"] for r in records[:3]]), np.mean([r["pixel_mse"] for r in records[-3:]])
    assert last < 0.5 * first
    from safetensors import safe_open

    with safe_open(str(tmp_path / "final/autoregressive/model.safetensors"), "pt") as f:
        assert not any("pixel_head" in key for key in f.keys())


def test_evaluation_reports_the_loss_with_images_rolled(tiny):
    model, tokenizer, image_processor = tiny
    module = VLMTrainModule(model, DEFAULT_LOSS_WEIGHTS)
    batch = _batch(tiny)  # a red and a blue image
    assert "ce_images_rolled" not in module(batch)  # training forward: no extra pass
    with torch.no_grad():
        out = module(batch)
    rolled = dict(batch, pixel_values=torch.cat(list(batch["pixel_values"].chunk(2))[::-1]))
    expected = model.training_loss(rolled, image_weight=0.0)["ce"]
    torch.testing.assert_close(out["ce_images_rolled"], expected)
    assert not torch.allclose(out["ce_images_rolled"], out["ce"])
    same = collate_ar([{"messages": [{"role": "user", "content": "<image>\nWhat color?"},
                                     {"role": "assistant", "content": c}], "images": [Image.new("RGB", (64, 64))]}
                       for c in ("a", "b")], tokenizer, image_processor, model.config)
    with torch.no_grad():
        out = module(same)
    torch.testing.assert_close(out["ce_images_rolled"], out["ce"])  # identical images: rolling changes nothing


def test_semantic_term_classifies_each_tokens_cell(tiny):
    import torch.nn.functional as F

    from nexusgen.data.worlds import WorldSource
    from nexusgen.processing.processor import NexusGenProcessor
    from nexusgen.recipes.worlds import SHAPES_WORLD
    from nexusgen.train.stages.vlm import make_vlm_collate

    model, tokenizer, image_processor = tiny
    source = WorldSource("shapes", 4, seed=1, image_size=64, tasks=("understand",))
    labels = SHAPES_WORLD.scene_labels
    collate = make_vlm_collate(NexusGenProcessor(tokenizer, image_processor, model.config), labels)
    batch = collate([dict(source[i], position=i) for i in range(2)])
    token_labels = batch["token_labels"]
    assert token_labels.shape == (32, 2) and (token_labels >= 0).all()
    module = VLMTrainModule(model, {**DEFAULT_LOSS_WEIGHTS, "semantic": 0.5}, label_classes=labels.num_classes)
    out = module(batch)
    tokens = torch.cat(model.encode_images(batch["pixel_values"], batch["image_grid_thw"]))
    want = F.cross_entropy(module.shape_head(tokens), token_labels[:, 0]) + F.cross_entropy(
        module.color_head(tokens), token_labels[:, 1])
    torch.testing.assert_close(out["semantic_ce"], want.detach())
    torch.testing.assert_close(out["loss"].detach(), out["ce"] + out["pixel_mse"] + 0.5 * want.detach())
    unlabelled = module(_batch(tiny))  # no scene graphs: the term is zero, the heads stay in the graph
    assert unlabelled["semantic_ce"] == 0


def test_sample_mean_weighs_every_sample_equally():
    from nexusgen.models.autoregressive import sample_mean

    values = torch.tensor([1.0, 2.0, 3.0, 4.0, 10.0])
    owner = torch.tensor([0, 0, 0, 0, 2])  # sample 0 has four tokens, sample 1 none, sample 2 one
    torch.testing.assert_close(sample_mean(values, owner, 3), torch.tensor((2.5 + 10.0) / 2))


def test_per_sample_ce_is_the_mean_of_each_answers_own_ce(tiny):
    model, tokenizer, image_processor = tiny
    images = [Image.new("RGB", (64, 64), c) for c in ("red", "blue")]
    answers = ("yes", "a large blue circle at the top and a small red square on the left")
    samples = [{"messages": [{"role": "user", "content": "<image>\nDescribe."},
                             {"role": "assistant", "content": a}], "images": [im]}
               for a, im in zip(answers, images)]
    batch = collate_ar(samples, tokenizer, image_processor, model.config)
    with torch.no_grad():
        token = model.training_loss(batch, image_weight=0.0)["ce"]
        sample = model.training_loss(batch, image_weight=0.0, ce_reduction="sample")["ce"]
        alone = [model.training_loss(collate_ar([s], tokenizer, image_processor, model.config),
                                     image_weight=0.0)["ce"] for s in samples]
    torch.testing.assert_close(sample, (alone[0] + alone[1]) / 2, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(sample, token)  # the long answer dominates the token mean
    module = VLMTrainModule(model, DEFAULT_LOSS_WEIGHTS, ce_reduction="sample")
    with torch.no_grad():
        torch.testing.assert_close(module(batch)["ce"], sample)
