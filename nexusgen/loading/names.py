"""The model names nexusgen knows without loading anything: the bundled models and the random ones.

`check_model_name` answers "unknown model" before torch loads, so a mistyped `--model` costs milliseconds;
`nexusgen.loading.folder.resolve_model` uses the same names and the same message.
"""

from __future__ import annotations

import os
from pathlib import Path

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "models"
BUNDLED = {"shapes-mini": ASSETS / "shapes-mini"}
RANDOM = ("tiny",)


def check_model_name(name: str | os.PathLike) -> str:
    """`name` if it is a bundled or random model, or an existing path; else ValueError ("unknown model")."""
    name = str(name)
    if name in BUNDLED or name in RANDOM or Path(name).expanduser().exists():
        return name
    known = ", ".join([*BUNDLED, *RANDOM])
    raise ValueError(f"unknown model {name!r}: not a bundled model ({known}) and no such path")
