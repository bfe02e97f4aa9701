"""Bundle a trained shapes-mini run as the package's default model, stored in fp16.

    python scripts/bundle_shapes_mini.py RUN/final [--out nexusgen/assets/models/shapes-mini] \
        [--num-steps N] [--edit-num-steps N] [--guidance G] [--edit-guidance G]

RUN/final is what `nexusgen train shapes-mini --out RUN` leaves (a complete model folder). The weights
are stored in fp16 (halves the repository size; they load back as fp32 on CPU, and fp16 keeps 11 bits of
mantissa, far below the model's own error); the sampling defaults travel with the folder: a training
export carries the `shapes-mini` preset's, which are the bundled model's, and the options here override
them (e.g. after a `nexusgen eval shapes --steps/--guidance` sweep; then update the preset to match).
"""

import argparse
import dataclasses
from pathlib import Path

import torch

from nexusgen.config import NexusGenConfig
from nexusgen.loading.folder import BUNDLED, CONFIG_FILE, load_model_folder, save_model_folder

LIMIT_BYTES = 60 * 1024 * 1024  # the bound for a committed model


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="a trained model folder, e.g. RUN/final")
    parser.add_argument("--out", type=Path, default=BUNDLED["shapes-mini"])
    parser.add_argument("--preset", default="shapes-mini", help="model-level settings of a training export")
    parser.add_argument("--num-steps", type=int, help="default denoising steps")
    parser.add_argument("--edit-num-steps", type=int, help="default denoising steps of the editing decoder")
    parser.add_argument("--guidance", type=float, dest="guidance_scale", help="default generation guidance")
    parser.add_argument("--edit-guidance", type=float, dest="edit_guidance_scale", help="default editing guidance")
    args = parser.parse_args()
    parts = load_model_folder(args.source, device="cpu", dtype=torch.float16)
    if not (args.source / CONFIG_FILE).exists():  # a training export: the preset's model-level settings,
        # else the editing reference falls back to the input size, not the grid the decoder was trained at
        preset = NexusGenConfig.from_preset(args.preset)
        parts.config = dataclasses.replace(parts.config, reference_image_px=preset.reference_image_px)
    chosen = {k: getattr(args, k) for k in ("num_steps", "edit_num_steps", "guidance_scale", "edit_guidance_scale")}
    parts.config.sampling = dataclasses.replace(parts.config.sampling,
                                                **{k: v for k, v in chosen.items() if v is not None})
    save_model_folder(args.out, parts)
    size = folder_bytes(args.out)
    print(f"{args.out}: {size / 2**20:.1f} MiB, sampling {parts.config.sampling}")
    if size > LIMIT_BYTES:
        raise SystemExit(f"{size / 2**20:.1f} MiB is over the {LIMIT_BYTES / 2**20:.0f} MiB limit")


if __name__ == "__main__":
    main()
