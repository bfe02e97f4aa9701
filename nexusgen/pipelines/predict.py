"""The steps the image pipelines share: AR prediction of image embeddings, reference embeddings of a
source image, and the decoders' negative-branch arguments.

Shape legend: B batch, N output tokens, M reference tokens, D embedding width.
"""

from __future__ import annotations

import torch
from PIL import Image

from nexusgen.models.batch_invariance import items_apart
from nexusgen.pipelines.inputs import fit_context, image_request_inputs, same_shape_groups, to_device


@torch.no_grad()
def predict_embeds(ar_model, processor, runtime, prompts: list[str], task: str,
                   images: list[Image.Image] | None = None, prefetch: tuple = ()) -> torch.Tensor:
    """Encode canonical requests and predict every image's N embeddings, one AR forward pass per shape.

    Requests of equal length (and equal source-image grids) share a pass; a request's embeddings are
    therefore the ones it gets alone (no padding moves its tokens; `same_shape_groups`).

    Args:
        ar_model: `NexusGenARModel`.
        processor: its `NexusGenProcessor`.
        runtime: the pipelines' `Runtime` (the AR model is made resident).
        prompts: descriptions ("generate") or instructions ("edit"), languages detected per prompt.
        task: "generate" or "edit".
        images: source images for "edit", one per prompt.
        prefetch: parts the request needs next (decoder, VAE): their transfer to the device starts while the
            AR model runs, where they fit next to it (`Runtime.prefetch`).

    Returns:
        (B, N, D) predicted embeddings on the device, in the compute dtype.

    Raises:
        ValueError: a prompt that, with the answer image's N positions, does not fit the model's context.
    """
    samples = [image_request_inputs(processor, [prompt], task, images[i:i + 1] if images else None)
               for i, prompt in enumerate(prompts)]  # encode
    groups = same_shape_groups(samples)
    for members, batch in groups:
        fit_context(processor, batch["attention_mask"], 0, reserve=ar_model.config.num_output_tokens, indices=members)
    model = runtime.activate(ar_model)  # AR
    for part in prefetch:
        runtime.prefetch(part)
    embeds: list[torch.Tensor | None] = [None] * len(prompts)
    for members, batch in groups:
        inputs = to_device(batch, runtime.device)
        with items_apart([model], len(members), skip=[model.vlm.model.visual]):
            predicted = model.predict_image_embeds(inputs["input_ids"], inputs["attention_mask"],
                                                   inputs["pixel_values"].to(runtime.dtype), inputs["image_grid_thw"])
        for row, index in enumerate(members):
            embeds[index] = predicted[row]
    return torch.stack(embeds)


@torch.no_grad()
def reference_embeds(ar_model, processor, config, runtime,
                     images: list[Image.Image]) -> list[tuple[torch.Tensor, tuple[int, int]]]:
    """The editing decoder's reference: ViT + merger embeddings of each source image.

    At `config.reference_image_px` (centre-crop + resize, the fixed-slot rule) when set, else at the
    bounded input size the AR model sees.

    Returns:
        per image, ((M, D) embeddings on the device, (rows, cols) token grid).
    """
    out = processor.process_references(images, config.reference_image_px)
    pixels, grids = out["pixel_values"], out["image_grid_thw"]
    model = runtime.activate(ar_model)
    embeds = model.encode_images(pixels.to(runtime.device, runtime.dtype), grids.to(runtime.device))
    merge = processor.merge_size
    return [(e, (int(g[1]) // merge, int(g[2]) // merge)) for e, g in zip(embeds, grids, strict=True)]


def negative_kwargs(config, negative: dict | None, guidance_scale: float, hint: str = "") -> dict:
    """Keyword arguments for `generate_latents` / `edit_latents` that select the negative CFG branch.

    Raises:
        ValueError: guidance_scale != 1 on a model whose negative branch is "none", or "t5" without the
            stored T5 embeddings of the negative prompt.
    """
    kind = config.sampling.negative
    if guidance_scale == 1.0 or kind == "null":
        return {}  # scale 1 never evaluates a negative branch; "null" is the sampler's default branch
    if kind == "none":
        raise ValueError(f"guidance_scale {guidance_scale}: this model has no negative branch "
                         "(sampling.negative 'none'), use guidance_scale 1")
    if negative is None:
        raise ValueError(f"guidance_scale {guidance_scale}: this model's negative branch is T5 embeddings "
                         "of the negative prompt, which its folder does not hold (negative.safetensors); use "
                         "guidance_scale 1" + (f" ({hint})" if hint else ""))
    return {"negative_embeds": negative["prompt_embeds"], "negative_pooled": negative.get("pooled")}
