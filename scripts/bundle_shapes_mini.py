"""Bundle a trained shapes-mini run as the package's default model, stored in fp16.

    python scripts/bundle_shapes_mini.py RUN/final [--out nexusgen/assets/models/shapes-mini]

RUN/final is what `nexusgen train shapes-mini --out RUN` leaves (a complete model folder). The weights
are stored in fp16 (halves the repository size; they load back as fp32 on CPU, and fp16 keeps 11 bits of
mantissa, far below the model's own error); the sampling defaults travel with the folder.
"""

import argparse
from pathlib import Path

import torch

from nexusgen.loading.folder import BUNDLED, load_model_folder, save_model_folder

LIMIT_BYTES = 60 * 1024 * 1024  # the bound for a committed model


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="a trained model folder, e.g. RUN/final")
    parser.add_argument("--out", type=Path, default=BUNDLED["shapes-mini"])
    args = parser.parse_args()
    parts = load_model_folder(args.source, device="cpu", dtype=torch.float16)
    save_model_folder(args.out, parts)
    size = folder_bytes(args.out)
    print(f"{args.out}: {size / 2**20:.1f} MiB")
    if size > LIMIT_BYTES:
        raise SystemExit(f"{size / 2**20:.1f} MiB is over the {LIMIT_BYTES / 2**20:.0f} MiB limit")


if __name__ == "__main__":
    main()
