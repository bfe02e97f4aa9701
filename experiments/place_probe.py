"""Is an image token's place in the LLM's hidden states? Linear probes, layer by layer.

    python experiments/place_probe.py MODEL [--scenes 600]

For ShapesWorld scenes of 2-4 objects (64 px, one 4x4 grid of LLM image tokens), the hidden state of every
image token an object covers, at the LLM's input (the ViT's output) and after each layer, is fitted with a
linear softmax probe (on two thirds of the scenes, scored on the rest) for: the token's own grid column and
row, the column and row of the covering object's cell, and, as a control, the object's colour and shape.
Prints JSON: held-out probe accuracy per target and layer, and each target's chance (the majority class).
(docs/training-log.md, twelfth session.)
"""

import argparse
import json

import numpy as np
import torch
import torch.nn.functional as F

from nexusgen import NexusGen
from nexusgen.pipelines.understand import understanding_messages
from nexusgen.worlds.shapes import make_understanding, render_scene
from nexusgen.worlds.shapes.render import shape_coverage
from nexusgen.worlds.shapes.scene import COLORS, SHAPES

GRID, PX = 4, 64
TARGETS = ("token_col", "token_row", "cell_col", "cell_row", "color", "shape")


def _covering(scene) -> list[tuple[int, object]]:
    """(token index, object) for each token an object covers most of (at least 10% of the token)."""
    cover = np.stack([shape_coverage(o.shape, o.x * PX, o.y * PX, o.half * PX, PX, PX, supersample=2)
                      .reshape(GRID, PX // GRID, GRID, PX // GRID).mean(axis=(1, 3)).ravel() for o in scene.objects])
    return [(t, scene.objects[int(cover[:, t].argmax())]) for t in range(GRID * GRID) if cover[:, t].max() >= 0.1]


@torch.no_grad()
def image_token_states(model, scenes) -> list[torch.Tensor]:
    """Per scene, the (layers + 1, 16, D) hidden states at its image tokens."""
    ar, processor = model.parts.ar_model, model.processor
    states = []
    for scene in scenes:
        batch = processor.chat_inputs([understanding_messages("Describe the image.", 1)], [[render_scene(scene, PX)]])
        ids, mask = batch["input_ids"], batch["attention_mask"]
        embeds = ar.splice_images(ids, ar.embed_tokens(ids), torch.cat(ar.encode_images(
            batch["pixel_values"], batch["image_grid_thw"])), mask)
        positions = ar.compute_positions(ids, mask, batch["image_grid_thw"])
        out = ar.vlm.model.language_model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                                          output_hidden_states=True)
        where = (ids[0] == ar.image_token_id).nonzero().squeeze(1)
        states.append(torch.stack([h[0, where] for h in out.hidden_states]).float())
    return states


def _labels(token: int, obj) -> list[int]:
    return [token % GRID, token // GRID, obj.col, obj.row, list(COLORS).index(obj.color), SHAPES.index(obj.shape)]


def probe(x_train, y_train, x_test, y_test, steps: int = 300) -> float:
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    head = torch.nn.Linear(x_train.shape[1], int(y_train.max()) + 1)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2, weight_decay=1e-4)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(head(x_train), y_train).backward()
        opt.step()
    return float((head(x_test).argmax(1) == y_test).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a model folder or name")
    parser.add_argument("--scenes", type=int, default=600)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = NexusGen.from_pretrained(args.model)
    scenes = [make_understanding(np.random.default_rng([780, i]), "relation").scene for i in range(args.scenes)]
    states = image_token_states(model, scenes)
    rows = [(s, t, _labels(t, obj)) for s, scene in enumerate(scenes) for t, obj in _covering(scene)]
    x = torch.stack([states[s][:, t] for s, t, _ in rows], dim=1)  # (layers + 1, N, D)
    y = torch.tensor([labels for *_, labels in rows])
    train = torch.tensor([s < 2 * args.scenes // 3 for s, *_ in rows])
    out = {"tokens": len(rows), "chance": {}, "layers": x.shape[0] - 1}
    for k, name in enumerate(TARGETS):
        out["chance"][name] = round(float(y[~train, k].bincount().max() / (~train).sum()), 3)
        out[name] = [round(probe(x[layer][train], y[train, k], x[layer][~train], y[~train, k]), 3)
                     for layer in range(x.shape[0])]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
