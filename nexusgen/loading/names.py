"""The model names nexusgen knows without loading anything: the bundled models and the random ones.

`check_model_name` answers "unknown model" (or "not a model folder") before torch loads, so a mistyped
`--model` costs milliseconds; `nexusgen.loading.folder.resolve_model` uses the same names, the same folder
tests and the same messages.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "models"
BUNDLED = {"shapes-mini": ASSETS / "shapes-mini"}
RANDOM = ("tiny",)
CONFIG_FILE = "nexusgen.json"


def check_model_name(name: str | os.PathLike) -> str:
    """`name` if it is a bundled or random model, or a path to a model folder (`is_model_folder`,
    `is_official_folder`); else ValueError ("unknown model", "not a model folder")."""
    name = str(name)
    if name in BUNDLED or name in RANDOM:
        return name
    path = Path(name).expanduser()
    if not path.exists():
        known = ", ".join([*BUNDLED, *RANDOM])
        raise ValueError(f"unknown model {name!r}: not a bundled model ({known}) and no such path")
    if not (is_model_folder(path) or is_official_folder(path)):
        raise ValueError(f"{path}: not a model folder (expected {CONFIG_FILE} or autoregressive/, or an official "
                         "Nexus-Gen folder with a Qwen2.5-VL config.json)")
    return name


def is_model_folder(folder: Path) -> bool:
    """True for a nexusgen model folder (ours, a training export or a converted official folder)."""
    return folder.is_dir() and ((folder / CONFIG_FILE).is_file() or (folder / "autoregressive").is_dir())


def is_official_folder(folder: Path) -> bool:
    """True for an official Nexus-Gen folder: a Qwen2.5-VL config.json at the top level."""
    path = folder / "config.json"
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("model_type") == "qwen2_5_vl"
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False
