"""Stage `generation_decoder` (Nexus-Gen phase 2, docs/upstream.md §3.2): adapter + DiT reconstruct an image from its
ground-truth ViT embeddings.

Conditioning embeddings come either from a precomputed embedding dataset (files whose records name them,
`GenEmbedDataset`: `nexusgen prepare-embeds --kind gen`) or are computed on the fly by the frozen AR
model's `encode_images` on the target image (generated or message-JSONL data). The target image is
VAE-encoded by the frozen VAE (posterior mean, as upstream). Loss: the weighted rectified-flow loss
of `nexusgen.flow.loss.decoder_training_loss`, a mean over the global batch's samples, with each
sample's dropout, t and noise drawn from its own generator seeded by (seed, its global position): the
same whichever rank and micro-batch the sample lands in, and after a resume. (Upstream draws one t per
batch; one per sample is what makes the loss independent of how the batch is split.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from nexusgen.train.config import TrainConfig
from nexusgen.train.parallel import DistInfo
from nexusgen.train.stages import parts
from nexusgen.train.stages.common import (
    SampleStream,
    Stage,
    generated_messages,
    message_files,
    sample_generators,
    samples_units,
    total,
)

DEFAULT_LOSS_WEIGHTS = {"flow": 1.0}


def pil_to_unit(images, size: int) -> torch.Tensor:
    """PIL images -> (B, 3, size, size) float32 in [0, 1] (plain resize, as upstream's targets)."""
    from nexusgen.processing.images import resize_fixed

    arrays = [np.asarray(resize_fixed(im.convert("RGB"), (size, size)), dtype=np.float32) for im in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 255.0


class DecoderTrainModule(torch.nn.Module):
    """Shared by generation_decoder and editing_decoder: forward(batch) -> {"loss", "flow", "mse"}.

    The frozen VAE and AR encoder are kept out of the module tree (not in checkpoints, not wrapped by
    DDP / FSDP): only `decoder` is a registered sub-module.
    """

    def __init__(self, decoder, vae, encoder, *, seed: int, loss_weight: float, cond_dropout_prob: float):
        super().__init__()
        self.decoder = decoder
        self.helpers = (parts.frozen(vae), parts.frozen(encoder) if encoder is not None else None)
        self.seed, self.loss_weight, self.cond_dropout_prob = seed, loss_weight, cond_dropout_prob

    @torch.no_grad()
    def _embed(self, batch: dict, prefix: str) -> torch.Tensor:
        """(B, N, D) embeddings: precomputed, or the frozen AR model's `encode_images`."""
        if f"{prefix}_embeds" in batch:
            return batch[f"{prefix}_embeds"]
        encoder = self.helpers[1]
        per_image = encoder.encode_images(batch[f"{prefix}_pixel_values"], batch[f"{prefix}_grid_thw"])
        return torch.stack(list(per_image))                                   # (B, N, D)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        from nexusgen.flow.loss import decoder_training_loss
        from nexusgen.models.vae import images_to_latents

        with torch.no_grad():
            latents = images_to_latents(self.helpers[0], batch["target_pixels"])  # (B, c, H/8, W/8)
        image_embeds = self._embed(batch, "target")
        condition = self.condition_kwargs(batch, image_embeds)
        out = decoder_training_loss(self.decoder, latents, image_embeds.float(),
                                    generator=sample_generators(batch["position"].tolist(), self.seed),
                                    cond_dropout_prob=self.cond_dropout_prob, **condition)
        samples = total(batch, "samples", latents.shape[0])
        flow = out["sample_loss"].sum() / samples
        return {"loss": self.loss_weight * flow, "flow": flow.detach(), "mse": out["sample_mse"].sum() / samples}

    def condition_kwargs(self, batch: dict, target_embeds: torch.Tensor) -> dict:
        """Decoder inputs besides the (B, N, D) target embeddings (none for generation)."""
        return {}


def target_image(sample: dict):
    """The image to reconstruct: the embedding dataset's target, else the sample's last image."""
    return sample["target_image"] if "target_image" in sample else sample["images"][-1]


def make_collate(size: int, processor):
    """samples -> {"target_pixels", "position", and "target_embeds" or the AR image inputs}."""

    def collate(samples: list[dict]) -> dict:
        targets = [target_image(s) for s in samples]
        batch = {"target_pixels": pil_to_unit(targets, size),
                 "position": torch.tensor([s["position"] for s in samples])}
        if "image_embeds" in samples[0]:
            batch["target_embeds"] = torch.stack([s["image_embeds"].float() for s in samples])
        else:
            vision = processor.process_images(targets, [True] * len(targets))
            batch["target_pixel_values"], batch["target_grid_thw"] = (vision["pixel_values"],
                                                                      vision["image_grid_thw"])
        return batch

    return collate


# The records a decoder stage can learn from: a generated image to reconstruct (and, for editing, its source).
DECODER_TASKS = {"generation": ("generate", "edit"), "editing": ("edit",)}


def precomputed_embeddings(config: TrainConfig, kind: str) -> bool:
    """Whether the stage reads precomputed embeddings: every file of `data.paths` names them (source
    'jsonl' or 'auto'), or source 'embeds' (which requires it). Plain message files get their embeddings
    from the frozen AR model on the fly.

    Raises:
        ValueError: source 'embeds' and a file without them, or files of both kinds mixed.
    """
    d = config.data
    if not d.uses_files:
        return False
    from nexusgen.data.embeds import embedding_kind

    kinds = {path: embedding_kind(path) for path in d.files(config.stage.name)}
    named = [path for path, found in kinds.items() if found == kind]
    if d.source == "embeds" and len(named) != len(kinds):
        path = next(p for p in kinds if p not in named)
        keys = "embed_path" if kind == "generation" else "embed_source and embed_target"
        raise ValueError(f"data.source=embeds but {path} names no {kind} embeddings ({keys}); "
                         f"`nexusgen prepare-embeds` writes them, or set data.source=jsonl")
    if named and len(named) != len(kinds):
        raise ValueError(f"data.paths mixes {kind}-embedding files ({named[0]}) with plain message files "
                         f"({next(p for p in kinds if p not in named)}): use one kind per run")
    return bool(named)


def decoder_sources(config: TrainConfig, kind: str) -> tuple[list, bool]:
    """(sources, precomputed): embedding datasets, message JSONL (`data.image_root` applies to both) or
    in-memory synthetic samples; precomputed says whether the samples carry their embeddings."""
    d = config.data
    if not d.uses_files:
        return generated_messages(config), False
    if precomputed_embeddings(config, kind):
        from nexusgen.data.embeds import EditEmbedDataset, GenEmbedDataset

        cls = GenEmbedDataset if kind == "generation" else EditEmbedDataset
        return [cls(p, image_root=d.image_root, skip_bad=d.skip_bad) for p in d.paths], True
    return message_files(config, tasks=DECODER_TASKS[kind]), False


def build_decoder_stage(config: TrainConfig, info: DistInfo, kind: str, module_cls, make_stage_collate) -> Stage:
    """The generation_decoder / editing_decoder stage (kind "generation" / "editing"): decoder trainable; VAE and
    (unless embeddings are precomputed) the AR model frozen helpers.

    Args:
        module_cls: `DecoderTrainModule` or its editing subclass.
        make_stage_collate: (processor or None) -> collate function.
    """
    weights = {**DEFAULT_LOSS_WEIGHTS, **config.stage.loss_weights}
    if set(weights) != set(DEFAULT_LOSS_WEIGHTS):
        raise ValueError(f"{config.stage.name} loss terms are {sorted(DEFAULT_LOSS_WEIGHTS)}, got {sorted(weights)}")
    sources, precomputed = decoder_sources(config, kind)  # before the models: fail fast on a data error
    decoder = parts.build_decoder(config, kind)
    vae = parts.build_vae(config)
    encoder, processor = None, None
    if not precomputed:  # embeddings on the fly from the frozen AR model
        encoder, processor = parts.build_autoregressive(config, for_training=False)
    check_embedding_widths(decoder.config.embed_dim, kind, encoder, sources if precomputed else [])
    if config.stage.gradient_checkpointing:
        decoder.transformer.enable_gradient_checkpointing()
    module = module_cls(decoder, vae, encoder, seed=config.seed, loss_weight=weights["flow"],
                        cond_dropout_prob=config.stage.cond_dropout_prob).to(info.device)
    for helper in module.helpers:
        if helper is not None:
            helper.to(info.device)

    def export(trained: DecoderTrainModule, out_dir) -> None:
        parts.save_decoder(trained.decoder, kind, Path(out_dir))
        _export_helpers(config, trained, Path(out_dir), f"{kind}_decoder", processor)

    stream = SampleStream(sources, config.data.weights, seed=config.seed)
    return Stage(module=module, stream=stream, collate=make_stage_collate(processor), export=export,
                 loss_units=samples_units, shard_units=_dit_blocks(decoder),
                 count=lambda b: {"samples": len(b["position"]), "images": len(b["position"])})


def check_embedding_widths(width: int, kind: str, encoder, embedding_datasets: list) -> None:
    """The decoder takes embeddings `width` wide: so must the AR model that computes them, or the
    precomputed files (the first record of each is loaded now, the others as they are loaded). A ValueError
    before step 1, not a shape error inside it."""
    if encoder is not None and encoder.config.hidden_size != width:
        raise ValueError(f"the {kind} decoder takes {width}-wide embeddings but the AR model that computes them "
                         f"gives {encoder.config.hidden_size}: the decoder and the AR model come from different "
                         "models (stage.parent / stage.preset)")
    for dataset in embedding_datasets:
        dataset.embed_dim = width  # every record is checked as it is loaded: a bad record names file:line
        dataset[0]


def build(config: TrainConfig, info: DistInfo) -> Stage:
    return build_decoder_stage(config, info, "generation", DecoderTrainModule,
                               lambda processor: make_collate(config.data.image_size_px, processor))


def _dit_blocks(decoder) -> list[torch.nn.Module]:
    t = decoder.transformer
    return [*t.transformer_blocks, *t.single_transformer_blocks]


def _export_helpers(config: TrainConfig, module, out_dir: Path, trained_part: str, processor) -> None:
    """Complete the folder: the parent's untouched parts, and the frozen VAE / AR model the stage used
    where the parent has none (they came from the presets)."""
    from nexusgen.loading.decoders import save_vae

    parts.copy_untouched_parts(config, out_dir, {trained_part})
    vae, encoder = module.helpers
    if not (out_dir / "vae").exists():
        save_vae(vae, out_dir / "vae")
    if encoder is not None and not (out_dir / "autoregressive").exists():
        parts.save_autoregressive(encoder, processor, out_dir)
