"""collate_ar: one right-padded batch from understanding, generation and editing samples, with the
label masking of docs/upstream.md §3.1 checked token by token."""

import pytest
from PIL import Image

from nexusgen.data.collate import collate_ar
from nexusgen.loading.autoregressive import image_processor_for
from nexusgen.models.autoregressive import ARConfig
from nexusgen.processing import build_byte_tokenizer, special_token_ids


@pytest.fixture(scope="module")
def parts():
    config = ARConfig.from_preset("tiny")
    tokenizer = build_byte_tokenizer()
    return tokenizer, image_processor_for(config), config, special_token_ids(tokenizer)


def _samples():
    src, dst = Image.new("RGB", (120, 80), "red"), Image.new("RGB", (100, 100), "green")
    return [
        {"id": "und", "messages": [{"role": "user", "content": "<image>\nColour?"},
                                   {"role": "assistant", "content": "Red."}], "images": [src]},
        {"id": "gen", "messages": [
            {"role": "user", "content": "Generate an image according to the following description: a square"},
            {"role": "assistant", "content": "Here is an image based on the description: <image>"}],
         "images": [dst]},
        {"id": "edit", "messages": [{"role": "user", "content": "<image> Make it green."},
                                    {"role": "assistant", "content": "Here is the image: <image>"}],
         "images": [src, dst]},
    ]


def test_mixed_batch_layout(parts):
    tokenizer, image_processor, config, ids = parts
    batch = collate_ar(_samples(), tokenizer, image_processor, config)
    lengths = batch["attention_mask"].sum(1)
    assert batch["input_ids"].shape == (3, int(lengths.max()))
    assert bool((batch["attention_mask"].cummin(1).values == batch["attention_mask"]).all())  # right padding
    assert batch["image_is_target"].tolist() == [False, True, False, True]
    # inputs: bounded (120x80 -> 128x80 px, 8x5 tokens); targets: the output grid (64 px -> 4x4 tokens)
    assert batch["image_grid_thw"].tolist() == [[1, 10, 16], [1, 8, 8], [1, 10, 16], [1, 8, 8]]
    assert batch["pixel_values"].shape == (160 + 64 + 160 + 64, 3 * 2 * 8 * 8)
    assert batch["mm_token_type_ids"].sum(1).tolist() == [40, 16, 56]
    assert bool((batch["mm_token_type_ids"].bool() == (batch["input_ids"] == ids["image_pad"])).all())


def test_label_masking(parts):
    tokenizer, image_processor, config, ids = parts
    batch = collate_ar(_samples(), tokenizer, image_processor, config)
    labels, input_ids = batch["labels"], batch["input_ids"]
    trained = labels != -100
    assert bool((labels[trained] == input_ids[trained]).all())
    texts = [tokenizer.decode(input_ids[row][trained[row]]) for row in range(3)]
    assert texts[0] == "Red.<|im_end|>"
    span = "<|vision_start|>" + "<|image_pad|>" * 16 + "<|vision_end|>"
    assert texts[1] == "Here is an image based on the description: " + span + "<|im_end|>"
    assert texts[2] == "Here is the image: " + span + "<|im_end|>"
    # user images are never targets; assistant image tokens keep the image id (regression, not CE)
    user_image = (input_ids == ids["image_pad"]) & ~trained
    assert int(user_image.sum()) == 40 + 40
    assert int((labels == ids["image_pad"]).sum()) == 2 * config.num_output_tokens


def test_errors_name_the_sample(parts):
    tokenizer, image_processor, config, _ = parts
    bad = {"id": "broken", "messages": [{"role": "user", "content": "<image> x"}], "images": []}
    with pytest.raises(ValueError, match="sample broken:.*placeholders"):
        collate_ar([bad], tokenizer, image_processor, config)
    with pytest.raises(ValueError, match="max_length"):
        collate_ar(_samples()[:1], tokenizer, image_processor, config, max_length=10)
    with pytest.raises(ValueError, match="empty batch"):
        collate_ar([], tokenizer, image_processor, config)


def test_official_examples_collate(parts, official_examples):
    """Samples of upstream's llm_dataset.jsonl layout (large PNGs, a JPEG, Chinese text) go through collate_ar."""
    import json

    path = official_examples / "assets/example_datasets/llm_dataset.jsonl"
    tokenizer, image_processor, config, ids = parts
    samples = []
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        images = [Image.open(official_examples / p).convert("RGB") for p in record["images"]]
        samples.append({"id": record["id"], "messages": record["messages"], "images": images})
    batch = collate_ar(samples, tokenizer, image_processor, config)
    assert batch["image_is_target"].tolist() == [False, True, True, False, True, False, True]
    targets = batch["image_grid_thw"][batch["image_is_target"]]
    assert targets.tolist() == [list(config.output_grid_thw)] * 4
    assert batch["pixel_values"].shape[0] == int(batch["image_grid_thw"].prod(-1).sum())
    zh = tokenizer.decode(batch["input_ids"][2][batch["labels"][2] != -100])
    assert zh.startswith("这是根据您的描述生成的图像：<|vision_start|>")
    assert int((batch["labels"] == ids["image_pad"]).sum()) == 4 * config.num_output_tokens
