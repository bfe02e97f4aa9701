"""nexusgen as an lmms-eval model: `lmms-eval --model nexusgen --model_args pretrained=MODEL ...`.

Installed with `pip install "nexusgen[eval]"`, which registers `manifest` under lmms-eval's entry-point group
`lmms_eval.models`; lmms-eval then imports this module (it is never imported by nexusgen itself).

Model arguments (`--model_args key=value,...`):
    pretrained      a bundled model name, a nexusgen model folder or an official Nexus-GenV2 folder
    mode            understand (default; "understanding" is accepted) | generate | edit: what a request asks
                    for; generation and editing tasks (lmms-eval's imgedit, gedit_bench, ...) read
                    {"text", "images": [path]}
    batch_size      requests per model call (lmms-eval's --batch_size also sets it)
    device, dtype   as `NexusGen.from_pretrained`
    output_dir      where generate / edit write `<task>_<doc_id>.png` (default ./logs/nexusgen_images)
    seed            noise seed of every generated or edited image (default 0)
    decoder         editing (default) | generation, for mode=edit

Requests run through the public, batched `NexusGen.understand / generate / edit`: the same pipelines as
the command line.
"""

from __future__ import annotations

import json
from pathlib import Path

from lmms_eval.api.model import lmms
from PIL import Image

from nexusgen.api import NexusGen
from nexusgen.files import atomic_save_image
from nexusgen.tasks import TASKS, UNDERSTAND

from .harness import batched, check_outputs

MODES = TASKS
"""What the model is asked to do: understand (answer), generate or edit; "understanding" is accepted too."""
DEFAULT_MAX_NEW_TOKENS = 256


def manifest():
    """lmms-eval's registration payload (entry point `lmms_eval.models: nexusgen`)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id="nexusgen", simple_class_path="nexusgen.eval.lmms_adapter.NexusGenLMMS")


class NexusGenLMMS(lmms):
    """lmms-eval's `lmms` interface over `NexusGen` (generate_until only: no log-likelihood tasks)."""

    is_simple = True

    def __init__(self, pretrained: str = "shapes-mini", mode: str = UNDERSTAND, batch_size=1,
                 device: str | None = None, dtype: str | None = None, output_dir: str = "./logs/nexusgen_images",
                 seed: int = 0, decoder: str = "editing", **unused) -> None:
        super().__init__()
        mode = {"understanding": UNDERSTAND}.get(mode, mode)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if unused:
            raise ValueError(f"unknown nexusgen model_args: {', '.join(sorted(unused))}")
        self.mode, self.seed, self.decoder = mode, int(seed), decoder
        self.batch_size = int(batch_size)
        self.output_dir = Path(output_dir)
        self.model = NexusGen.from_pretrained(str(pretrained), device=device, dtype=dtype)

    def generate_until(self, requests) -> list[str]:
        from tqdm import tqdm

        results: list[str] = []
        with tqdm(total=len(requests), desc="nexusgen", disable=self.rank != 0) as bar:
            for _, batch in batched(requests, self.batch_size):
                results += self._run([r.args for r in batch])
                bar.update(len(batch))
        return results

    def _run(self, args: list[tuple]) -> list[str]:
        contexts = [context.replace("<image>", "").strip() for context, *_ in args]
        visuals = [doc_to_visual(self.task_dict[task][split][doc_id])
                   for _, _, doc_to_visual, doc_id, task, split in args]
        if self.mode == UNDERSTAND:
            gen_kwargs = args[0][1] or {}
            entries = [_images(v) or None for v in visuals]
            entries = [e[0] if e and len(e) == 1 else e for e in entries]
            texts = check_outputs(self.model.understand(entries, contexts, max_new_tokens=int(
                gen_kwargs.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS))), len(args), str, "understand")
            return [_cut(text, (a[1] or {}).get("until")) for text, a in zip(texts, args)]
        if self.mode == "generate":
            images = self.model.generate(contexts, seed=[self.seed] * len(args))
        else:
            sources = [(_images(v) or [None])[0] for v in visuals]
            if any(s is None for s in sources):
                raise ValueError("mode=edit needs one input image per request")
            images = self.model.edit(sources, contexts, decoder=self.decoder, seed=[self.seed] * len(args))
        images = check_outputs(images, len(args), Image.Image, self.mode)
        out = []
        for image, (_, _, _, doc_id, task, _) in zip(images, args):
            path = self.output_dir / f"{task}_{doc_id}.png"
            atomic_save_image(image.convert("RGB"), path)
            out.append(json.dumps({"text": "", "images": [str(path)]}, ensure_ascii=False))
        return out

    def loglikelihood(self, requests):
        raise NotImplementedError("nexusgen answers generate_until tasks only (no log-likelihood scoring)")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("nexusgen does not implement multi-round lmms-eval tasks")


def _images(visual) -> list[Image.Image]:
    """The PIL images of a document's visuals (paths are opened; other media are not supported)."""
    out = []
    for v in visual or []:
        if isinstance(v, Image.Image):
            out.append(v.convert("RGB"))
        elif isinstance(v, (str, Path)) and Path(v).is_file():
            with Image.open(v) as im:
                out.append(im.convert("RGB"))
        else:
            raise ValueError(f"nexusgen takes images only, got {type(v).__name__}")
    return out


def _cut(text: str, until) -> str:
    """The text up to the first stop string (lmms-eval's `until`)."""
    for stop in [until] if isinstance(until, str) else (until or []):
        if stop and stop in text:
            text = text.split(stop)[0]
    return text
