"""Contract: the reader's sample dicts feed `collate_ar` and the AR model's training loss unchanged."""

import torch

import nexusgen.recipes.worlds  # noqa: F401 (registers ShapesWorld as "shapes")
from nexusgen.data.collate import collate_ar
from nexusgen.data.messages import MessageDataset
from nexusgen.data.worlds import WorldSource
from nexusgen.loading.autoregressive import build_autoregressive


def test_official_and_shapesworld_samples_train_the_tiny_model(official_examples):
    model, tokenizer, image_processor = build_autoregressive("tiny", seed=0)
    official = MessageDataset(official_examples / "assets/example_datasets/llm_dataset.jsonl",
                              image_root=official_examples)
    shapes = WorldSource("shapes", 3, seed=0, image_size=32)
    samples = [official[i] for i in range(len(official))] + [shapes[i] for i in range(3)]
    batch = collate_ar(samples, tokenizer, image_processor, model.config)
    # Targets: official gen x2 + edit x2, ShapesWorld gen + edit -> 6 target images of N = 16 tokens.
    assert int(batch["image_is_target"].sum()) == 6
    assert int((batch["labels"] == model.image_token_id).sum()) == 6 * model.num_output_tokens
    out = model.training_loss(batch)
    assert torch.isfinite(out["loss"]) and float(out["image_loss"]) > 0 and float(out["ce"]) > 0
