"""Stage `editing_decoder` (Nexus-Gen phase 3, docs/upstream.md §3.3): embedding merger + DiT generate the edited image
from (AR-predicted target embeddings, source-image embeddings).

Embeddings come from a precomputed editing dataset (files whose records name them, `EditEmbedDataset`,
`nexusgen prepare-embeds --kind edit`), or on the fly from the frozen AR model: the source image's
`encode_images` and the AR model's teacher-forced prediction of the target
(`predict_image_embeds` on the sample's own user turn and answer prefix: the N target positions
only see prefill vectors, so this equals upstream's teacher-forced preparation). Grids are square
(81 -> 9x9, 324 -> 18x18 upstream). Loss and noise seeding as in generation_decoder.

`stage.true_target_prob` (ours, 0 = upstream) conditions some samples on the true edited image's embeddings
instead of the prediction. Trained on predictions, the shapes-mini editing decoder learnt that the source is
the safer thing to follow (0.08 of ShapesWorld edits exact); trained on true targets it follows the target
(0.27 from the same predictions), and the bundled one is trained so.
"""

from __future__ import annotations

import functools
import math

import torch

from nexusgen.train.config import TrainConfig
from nexusgen.train.parallel import DistInfo
from nexusgen.train.stages import parts
from nexusgen.train.stages.common import Stage, per_sample_rand, sample_generators
from nexusgen.train.stages.generation_decoder import (
    DecoderTrainModule,
    build_decoder_stage,
    pil_to_unit,
    precomputed_embeddings,
    target_image,
)

# Salt of the true-target draws, so they do not repeat the micro-batch's conditioning-dropout ones.
_TRUE_TARGET_SALT = 130_363


def square_grid(num_tokens: int) -> tuple[int, int]:
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise ValueError(f"{num_tokens} embeddings do not form a square grid")
    return side, side


class EditDecoderTrainModule(DecoderTrainModule):
    """Adds the reference (source image) embeddings and both grids to the decoder's condition."""

    def __init__(self, *args, true_target_prob: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.true_target_prob = true_target_prob

    @torch.no_grad()
    def _embed(self, batch: dict, prefix: str) -> torch.Tensor:
        if f"{prefix}_embeds" in batch:
            return batch[f"{prefix}_embeds"]
        if prefix == "target":
            return self._mix_true_targets(batch) if self.true_target_prob else self._predicted_targets(batch)
        per_image = self.helpers[1].encode_images(batch["source_pixel_values"], batch["source_grid_thw"])
        return torch.stack(list(per_image))                                   # (B, M, D)

    def _predicted_targets(self, batch: dict) -> torch.Tensor:
        """(B, N, D): the AR model's own prediction on the sample's text, as upstream prepares it."""
        groups = []
        for rows, inputs in batch["ar_inputs"]:  # one group per answer prefix (EN / ZH)
            groups.append((rows, self.helpers[1].predict_image_embeds(
                inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"], inputs["image_grid_thw"])))
        first = groups[0][1]
        out = first.new_empty((sum(len(r) for r, _ in groups), *first.shape[1:]))   # (B, N, D)
        for rows, embeds in groups:
            out[rows] = embeds
        return out

    def _mix_true_targets(self, batch: dict) -> torch.Tensor:
        """(B, N, D): the true edited image's embeddings for a `true_target_prob` share of the samples
        (drawn per sample from the seed and stream position, so a resumed or re-split run draws the same),
        the prediction for the rest. The AR model runs only when some sample needs its prediction."""
        if "true_target_pixel_values" not in batch:
            raise ValueError("stage.true_target_prob needs batches from make_collate(..., true_targets=True)")
        true = torch.stack(list(self.helpers[1].encode_images(batch["true_target_pixel_values"],
                                                              batch["true_target_grid_thw"])))  # (B, N, D)
        generators = sample_generators(batch["position"].tolist(), self.seed + _TRUE_TARGET_SALT)
        use_true = per_sample_rand(generators, device=true.device) < self.true_target_prob  # (B,)
        if use_true.all():
            return true
        return torch.where(use_true[:, None, None], true, self._predicted_targets(batch))

    def condition_kwargs(self, batch: dict, target_embeds: torch.Tensor) -> dict:
        reference = self._embed(batch, "source").float()                      # (B, M, D)
        return {"reference_embeds": reference,
                "reference_grid": batch.get("reference_grid") or square_grid(reference.shape[1]),
                "target_grid": batch.get("target_grid") or square_grid(target_embeds.shape[1])}


def one_grid(grids: list[tuple[int, int]], samples: list[dict]) -> tuple[int, int]:
    """The token grid every sample of a micro-batch shares (their embeddings are stacked).

    Raises:
        ValueError: two grids differ (sources of different shapes at the bounded input size).
    """
    if len(set(grids)) > 1:
        first = next(i for i, g in enumerate(grids) if g != grids[0])
        raise ValueError(f"edit samples {samples[0].get('id')!r} and {samples[first].get('id')!r} give reference "
                         f"grids {grids[0]} and {grids[first]}: set data.reference_image_px to the model's "
                         "reference size (upstream 504) so that every source is resized to one square")
    return grids[0]


def edit_prompt_inputs(samples: list[dict], processor) -> list[tuple[torch.Tensor, dict]]:
    """The AR inputs that end each edit sample at its target's `<|vision_start|>`: user turn(s) plus
    the assistant text up to the `<image>` (left-padded, for `predict_image_embeds`).

    Returns:
        [(batch rows, inputs)], one entry per distinct answer prefix ("Here is the image: <image>", the
        Chinese one, ...): `chat_inputs` takes one prefix per call.
    """
    from nexusgen.processing.templates import IMAGE_PLACEHOLDER

    groups: dict[str, list[int]] = {}
    for row, sample in enumerate(samples):
        answer = sample["messages"][-1]
        if answer["role"] != "assistant" or IMAGE_PLACEHOLDER not in answer["content"]:
            raise ValueError(f"edit sample {sample.get('id')}: the last turn must be an assistant image")
        groups.setdefault(answer["content"].split(IMAGE_PLACEHOLDER)[0] + IMAGE_PLACEHOLDER, []).append(row)
    return [(torch.tensor(rows), processor.chat_inputs([samples[r]["messages"][:-1] for r in rows],
                                                       [samples[r]["images"][:-1] for r in rows],
                                                       assistant_prefix=prefix))
            for prefix, rows in groups.items()]


def make_collate(size: int, processor, reference_px: int = 0, true_targets: bool = False,
                 predictions: bool = True):
    """Batches of target pixels plus precomputed embeddings, or the AR inputs to compute them; sources
    are encoded at `reference_px` square (0: the bounded input size), as the pipelines do. `true_targets`
    adds the targets' own AR vision inputs (for `stage.true_target_prob`); `predictions=False` leaves out
    the AR prompts, which only the predicted targets need (`true_target_prob=1` never predicts)."""
    reference_hw = (reference_px, reference_px) if reference_px else None

    def collate(samples: list[dict]) -> dict:
        targets = [target_image(s) for s in samples]
        batch = {"target_pixels": pil_to_unit(targets, size),
                 "position": torch.tensor([s["position"] for s in samples])}
        if "target_embeds" in samples[0]:
            batch["target_embeds"] = torch.stack([s["target_embeds"].float() for s in samples])
            batch["source_embeds"] = torch.stack([s["source_embeds"].float() for s in samples])
            batch["reference_grid"] = one_grid([tuple(s["source_grid"]) for s in samples], samples)
            batch["target_grid"] = one_grid([tuple(s["target_grid"]) for s in samples], samples)
            return batch
        sources = [s["source_image"] if "source_image" in s else s["images"][0] for s in samples]
        vision = processor.process_references(sources, reference_hw)
        batch["source_pixel_values"] = vision["pixel_values"]
        batch["source_grid_thw"] = vision["image_grid_thw"]
        merge = processor.image_processor.merge_size
        batch["reference_grid"] = one_grid([(int(h) // merge, int(w) // merge)
                                            for _, h, w in vision["image_grid_thw"].tolist()], samples)
        if predictions:
            batch["ar_inputs"] = edit_prompt_inputs(samples, processor)
        if true_targets:
            vision = processor.process_images(targets, [True] * len(targets))
            batch["true_target_pixel_values"] = vision["pixel_values"]
            batch["true_target_grid_thw"] = vision["image_grid_thw"]
        return batch

    return collate


def check_reference_size(reference_px: int, ar_config) -> None:
    """`data.reference_image_px` must be whole image tokens of the AR model that encodes the sources (the
    model's size comes from its parent: 504 suits 28-px tokens, not 16-px ones). A ValueError before step 1.
    """
    vision = ar_config.qwen_config.vision_config
    token_px = vision.patch_size * vision.spatial_merge_size
    if reference_px % token_px:
        raise ValueError(f"data.reference_image_px={reference_px} is not a multiple of the AR model's {token_px}-px "
                         f"image tokens: set a multiple of {token_px} (or 0: the bounded input size)")


def build(config: TrainConfig, info: DistInfo) -> Stage:
    stage = config.stage
    precomputed = precomputed_embeddings(config, "editing")
    if stage.true_target_prob and precomputed:
        raise ValueError("stage.true_target_prob needs the AR model on the fly (data.source 'generated' or "
                         "'jsonl'): precomputed editing embeddings hold only the predictions")
    if not precomputed:
        check_reference_size(config.data.reference_image_px, parts.ar_config_of_parent(config))
    source = parts.ar_parent(config)
    if stage.true_target_prob < 1 and not precomputed and source is not None and source.kind == "stock_qwen":
        raise ValueError(f"stage editing_decoder predicts its targets with the AR model's vision head, which "
                         f"{source.description} does not have trained: set stage.ar_parent to the ar stage's "
                         "run, or train on precomputed embeddings (`nexusgen prepare-embeds --kind edit`)")
    module_cls = functools.partial(EditDecoderTrainModule, true_target_prob=stage.true_target_prob)
    return build_decoder_stage(
        config, info, "editing", module_cls,
        lambda processor: make_collate(config.data.image_size_px, processor, config.data.reference_image_px,
                                       true_targets=bool(stage.true_target_prob),
                                       predictions=stage.true_target_prob < 1.0))
