"""`NexusGen`: the Python API over the pipelines (docs/architecture.md §3).

    from nexusgen import NexusGen
    ng = NexusGen.from_pretrained("shapes-mini")           # or "tiny", a model folder, an official folder
    ng.understand(image, "How many shapes are there?")    # -> str
    ng.generate("a red circle left of a blue square", seed=0)        # -> PIL.Image
    ng.edit(image, "make the circle green", decoder="editing")       # -> PIL.Image
    ng.chat([{"role": "user", "content": "Draw a blue square"}])     # -> ChatReply
    ng.predict_image_embeds("a red circle")                          # -> (1, N, D)
    ng.encode_images(image)                # -> (1, N, D): what a perfect AR model would predict
    ng.decode(embeds, seed=0)              # -> list of PIL images (the second half of generate)

A single item in gives a single item out; a list in gives a list out (one batched call). Images may be
PIL images or paths (read with the pixel limit of `nexusgen.processing.images.load_image`). The eval
harness relies on `name`, `image_size` and the list forms of understand / generate / edit.
"""

from __future__ import annotations

import os
import warnings

import torch
from PIL import Image

from nexusgen.config import resolve_device, resolve_dtype
from nexusgen.loading.folder import ModelParts, resolve_model
from nexusgen.pipelines import (
    ChatPipeline,
    ChatReply,
    EditPipeline,
    GeneratePipeline,
    Runtime,
    UnderstandPipeline,
)
from nexusgen.pipelines.inputs import as_batch
from nexusgen.pipelines.predict import predict_embeds
from nexusgen.pipelines.residency import check_policy
from nexusgen.pipelines.understand import DEFAULT_MAX_NEW_TOKENS
from nexusgen.processing.images import load_image
from nexusgen.processing.processor import NexusGenProcessor
from nexusgen.validation import check_prompts

ImageLike = Image.Image | str | os.PathLike


class NexusGen:
    """Understanding, generation and editing with one model.

    Args:
        parts: the built parts (`nexusgen.loading.folder.ModelParts`).
        device: compute device (default cuda if available, else cpu).
        dtype: compute dtype (default bf16 on cuda, fp32 on cpu).
        name: the model's name in reports (default: where the parts came from).
        progress: progress bars while denoising (default: only when stderr is a terminal).
    """

    def __init__(self, parts: ModelParts, *, device=None, dtype=None, name: str | None = None,
                 progress: bool | None = None, offload: str = "auto", fp8: bool = False):
        self.parts = parts
        self.config = parts.config
        self.name = name or parts.source
        self.runtime = Runtime(device, dtype, progress, offload)
        parts.to(dtype=self.runtime.dtype)  # loaded parts now, waiting ones when they load; rotary stays fp32
        if fp8:
            parts.use_fp8()  # after the cast: the fp8 storage is not a float dtype, nothing casts it back
        if parts.negative is not None:
            parts.negative = {k: v.to(self.runtime.device) for k, v in parts.negative.items()}
        self._disable_unusable_guidance()
        ar, negative, vae = parts.handle("autoregressive"), parts.negative, parts.handle("vae")
        self.processor = NexusGenProcessor(parts.tokenizer, parts.image_processor, ar.config)
        self._understand = UnderstandPipeline(ar, self.processor, self.runtime)
        self._generate = None
        if parts.has("generation_decoder") and vae is not None:
            self._generate = GeneratePipeline(ar, self.processor, parts.handle("generation_decoder"), vae,
                                              self.config, self.runtime, negative)
        self._edit = EditPipeline(ar, self.processor, parts.handle("editing_decoder"), vae, self.config,
                                  self.runtime, self._generate, negative)
        self._chat = ChatPipeline(ar, self.processor, self.runtime, self._generate, self.config, negative)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, device=None, dtype=None, *, offload: str = "auto",
                        fp8: bool = False, **kwargs) -> NexusGen:
        """Load a bundled model ("shapes-mini"), "tiny" (random weights), a model folder or an official one.

        Only configs, tokenizer and image processor are read now; each part's weights are read when a task
        first needs it (memory-mapped), so `understand` never reads a decoder.

        Args:
            name_or_path: model name or folder.
            device: compute device (default cuda if available, else cpu).
            dtype: compute dtype (default bf16 on cuda, fp32 on cpu).
            offload: residency of the parts on the device: "auto" (keep every part in use while they fit,
                else move whole models), "none" (never move one out) or "model" (one big part at a time).
            fp8: store the decoders' DiT Linear weights in fp8 (halves the DiT; up-cast per layer).

        Raises:
            ValueError: unknown name or path, a folder that is not a model, a missing bundled model, or an
                unknown offload policy.
        """
        check_policy(offload)
        device = resolve_device(device)  # the bad-option errors before the folder is read, as Runtime raises them
        dtype = resolve_dtype(dtype, device)
        parts = resolve_model(name_or_path, device="cpu", dtype=dtype)
        return cls(parts, device=device, dtype=dtype, name=str(name_or_path), offload=offload, fp8=fp8, **kwargs)

    # -- attributes the eval harness uses ----------------------------------------------------------
    @property
    def image_size(self) -> int:
        """The pixel side the model works at (its default output size)."""
        return int(self.config.image_size)

    def __repr__(self) -> str:
        return (f"NexusGen({self.name!r}, parts={self.config.parts}, device={self.runtime.device}, "
                f"dtype={self.runtime.dtype}, offload={self.runtime.residency.policy!r})")

    # -- tasks ---------------------------------------------------------------------------------------
    def understand(self, image, prompt: str | list[str], max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, *,
                   temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                   seed: int | list[int] = 0) -> str | list[str]:
        """Answer questions about images, or text-only questions.

        Args:
            image: one image (or a list of images, or None) for a single prompt; a list with one such entry
                per prompt for a list of prompts. Images are PIL images or paths.
            prompt: a question or a list of questions; "" with an image asks for a description.
            max_new_tokens: generation budget per answer (official 1024).
            temperature: 0 decodes greedily (default); above 0 samples.
            top_k, top_p: sampling filters (0 / 1: off).
            seed: sampling seed; answer b of a list uses seed + b, or seed[b] for a list of seeds.

        Returns:
            str for a single prompt, list[str] for a list.
        """
        single = isinstance(prompt, str)
        entries = [image] if single else image
        if isinstance(entries, (list, tuple)):
            entries = [_load_entry(e) for e in entries]
        out = self._understand(image=entries if not single else entries[0], prompt=prompt,
                               max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                               seed=seed)
        return out.texts[0] if single else out.texts

    def generate(self, prompt: str | list[str], seed: int | list[int] = 0, *, height: int | None = None,
                 width: int | None = None, num_steps: int | None = None, guidance_scale: float | None = None,
                 progress: bool | None = None) -> Image.Image | list[Image.Image]:
        """Text-to-image: one image per prompt; image b of a list uses seed + b, or seed[b] for a list of seeds
        (see `GeneratePipeline`)."""
        out = self._require(self._generate, "generation")(
            prompt=prompt, height=height, width=width, num_steps=num_steps, guidance_scale=guidance_scale,
            seed=seed, progress=progress)
        return out.images[0] if isinstance(prompt, str) else out.images

    def edit(self, image: ImageLike | list[ImageLike], prompt: str | list[str], decoder: str = "editing",
             seed: int | list[int] = 0, *, height: int | None = None, width: int | None = None,
             num_steps: int | None = None, guidance_scale: float | None = None,
             progress: bool | None = None) -> Image.Image | list[Image.Image]:
        """Instruction-based editing with the editing (default) or generation decoder; seeds as `generate`
        (see `EditPipeline`)."""
        if decoder == "editing":
            self._require(self.parts.handle("editing_decoder"), "editing")
        images = [_load(im) for im in as_batch(image, "image", (Image.Image, str, os.PathLike))[0]]
        out = self._edit(image=images, prompt=prompt, decoder=decoder, height=height, width=width,
                         num_steps=num_steps, guidance_scale=guidance_scale, seed=seed, progress=progress)
        return out.images[0] if isinstance(prompt, str) else out.images

    def chat(self, messages: list, *, max_new_tokens: int = 256, seed: int | list[int] = 0,
             height: int | None = None, width: int | None = None, num_steps: int | None = None,
             guidance_scale: float | None = None, image_output: bool = True, temperature: float = 0.0,
             top_p: float = 1.0, progress: bool | None = None) -> ChatReply | list[ChatReply]:
        """Multi-turn chat, interleaved text and images in and out (see `ChatPipeline`).

        Args:
            messages: a conversation (list of {"role", "content"} with content a string or a list of strings
                and PIL images) or a list of conversations.
            seed: conversation b uses seed + b (or seed[b] for a list): its image noise and, when sampling,
                its token stream.
            image_output: False answers in text only.
            temperature, top_p: 0 (default) decodes greedily; > 0 samples (top_p: nucleus mass).

        Returns:
            a ChatReply for one conversation, a list for a list of conversations.
        """
        single = bool(messages) and isinstance(messages[0], dict)
        out = self._chat(messages=messages, max_new_tokens=max_new_tokens, height=height, width=width,
                         num_steps=num_steps, guidance_scale=guidance_scale, seed=seed,
                         image_output=image_output, temperature=temperature, top_p=top_p, progress=progress)
        return out.replies[0] if single else out.replies

    @torch.inference_mode()
    def predict_image_embeds(self, prompt: str | list[str],
                             image: ImageLike | list[ImageLike] | None = None) -> torch.Tensor:
        """Predicted image embeddings (canonical templates, one AR forward pass).

        Args:
            prompt: description(s) (generation template) or instruction(s) when `image` is given (editing).
            image: source image(s), one per prompt, or None.

        Returns:
            (B, N, D) float32 CPU tensor; B = 1 for a single prompt.
        """
        prompts = check_prompts(as_batch(prompt, "prompt", (str,))[0])
        images = None
        if image is not None:
            images = [_load(im) for im in as_batch(image, "image", (Image.Image, str, os.PathLike))[0]]
            if len(images) != len(prompts):
                raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        task = "edit" if images is not None else "generate"
        embeds = predict_embeds(self.parts.handle("autoregressive"), self.processor, self.runtime, prompts, task,
                                images)
        return embeds.float().cpu()

    @torch.inference_mode()
    def encode_images(self, image: ImageLike | list[ImageLike]) -> torch.Tensor:
        """Images in the space the AR model predicts: ViT + merger embeddings at the output grid
        (centre-cropped and resized exactly as training targets are).

        Returns:
            (B, N, D) float32 CPU tensor; B = 1 for a single image.
        """
        images = [_load(im) for im in as_batch(image, "image", (Image.Image, str, os.PathLike))[0]]
        vision = self.processor.process_images(images, [True] * len(images))
        model = self.runtime.activate(self.parts.handle("autoregressive"))
        embeds = model.encode_images(vision["pixel_values"].to(self.runtime.device, self.runtime.dtype),
                                     vision["image_grid_thw"].to(self.runtime.device))
        return torch.stack(embeds).float().cpu()

    def decode(self, image_embeds: torch.Tensor, seed: int | list[int] = 0, *,
               source: ImageLike | list[ImageLike] | None = None, height: int | None = None,
               width: int | None = None, num_steps: int | None = None, guidance_scale: float | None = None,
               progress: bool | None = None) -> list[Image.Image]:
        """(B, N, D) image embeddings -> B images (image b: seed + b, or seed[b] for a list); e.g. the output
        of `predict_image_embeds` or `encode_images` (a reconstruction: the decoder's ceiling).

        Without `source`, the generation decoder. With B source images, the editing decoder conditioned on
        [embeddings ; each source's reference embeddings], as `edit` does with the AR model's prediction."""
        if source is None:
            pipeline = self._require(self._generate, "generation")
            return pipeline.decode_images(image_embeds, height=height, width=width, num_steps=num_steps,
                                          guidance_scale=guidance_scale, seed=seed, progress=progress)
        self._require(self.parts.handle("editing_decoder"), "editing")
        images = [_load(im) for im in as_batch(source, "source", (Image.Image, str, os.PathLike))[0]]
        return self._edit.decode_edits(image_embeds, images, height=height, width=width, num_steps=num_steps,
                                       guidance_scale=guidance_scale, seed=seed, progress=progress)

    # -- helpers ------------------------------------------------------------------------------------
    def _require(self, part, what: str):
        """`part` (a pipeline or a part's handle, not loaded by this); ValueError naming the model when None."""
        if part is None:
            hint = f"; {self.parts.hint}" if self.parts.hint else ""
            raise ValueError(f"model {self.name!r} has no {what} decoder (parts: {self.config.parts}){hint}")
        return part

    def _disable_unusable_guidance(self) -> None:
        """An official model's negative branch needs stored T5 embeddings; without them CFG is off."""
        sampling = self.config.sampling
        if sampling.negative == "t5" and self.parts.negative is None and (
                sampling.guidance_scale != 1.0 or sampling.edit_guidance_scale != 1.0):
            warnings.warn(f"{self.name}: no T5 negative embeddings (negative.safetensors), so classifier-"
                          f"free guidance is off by default (scale 1, not {sampling.guidance_scale})",
                          UserWarning, stacklevel=3)
            sampling.guidance_scale = sampling.edit_guidance_scale = 1.0


def _load(image: ImageLike) -> Image.Image:
    return load_image(image) if isinstance(image, (str, os.PathLike)) else image


def _load_entry(entry):
    if entry is None:
        return None
    if isinstance(entry, (list, tuple)):
        return [_load(e) for e in entry]
    return _load(entry)


__all__ = ["NexusGen"]
