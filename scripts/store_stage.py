"""Store a finished stage's model folder in the repository (fp16), so a later session can go on from it.

    python scripts/store_stage.py RUN/vlm/final training/shapes-mini/after-vlm [--add RUN/vae/final/vae]

CPU recipes take longer than one machine lives, and a run directory does not outlive its machine; the
next session starts from the stored folder (`nexusgen train shapes-mini --start-at ar --set
ar.stage.parent=FOLDER`). Float tensors are stored in fp16 (half the bytes; the stages load them back as
fp32 master weights); configs and tokenizers are copied as they are. `--add` copies further part folders
in (a stage trained without a parent exports only its own part).
"""

import argparse
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

from nexusgen.files import atomic_folder


def store(source: Path, target: Path) -> None:
    """Copy `source` to `target`, every safetensors file with its float tensors cast to fp16."""
    target.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.rglob("*")):
        out = target / path.relative_to(source)
        if path.is_dir():
            out.mkdir(parents=True, exist_ok=True)
        elif path.suffix == ".safetensors":
            tensors = {k: v.half() if v.is_floating_point() else v for k, v in load_file(path).items()}
            save_file(tensors, out, metadata={"format": "pt"})
        else:
            shutil.copy2(path, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="a stage's exported folder, e.g. RUN/vlm/final")
    parser.add_argument("target", type=Path, help="where to store it (replaced)")
    parser.add_argument("--add", type=Path, action="append", default=[], help="a part folder to add")
    args = parser.parse_args()
    with atomic_folder(args.target) as tmp:  # replaces the target only once all is written
        store(args.source, tmp)
        for part in args.add:
            store(part, tmp / part.name)
    size = sum(p.stat().st_size for p in args.target.rglob("*") if p.is_file())
    print(f"{args.target}: {size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
