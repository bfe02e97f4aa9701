"""A random-weight tiny NexusGen shared by the pipeline tests (built once, about 0.5 s)."""

import numpy as np
import pytest
from PIL import Image

from nexusgen.api import NexusGen
from nexusgen.loading.folder import build_random_model


@pytest.fixture(scope="session")
def tiny():
    return NexusGen(build_random_model("tiny", seed=0), name="tiny", progress=False)


@pytest.fixture(scope="session")
def pictures():
    """Two deterministic RGB test images: 64x64 and 96x64 (different aspect ratios)."""
    rng = np.random.default_rng(0)
    square = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    wide = Image.fromarray(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8))
    return square, wide


@pytest.fixture
def boost():
    """`boost(ar_model, schedule)` -> hook handle (see `_boost`)."""
    return _boost


def _boost(ar_model, schedule):
    """Forward hook on the LM head: at call k, make token `schedule[k]` the argmax (None: leave it)."""
    calls = {"k": 0}

    def hook(module, inputs, output):
        k = calls["k"]
        calls["k"] += 1
        token = schedule[k] if k < len(schedule) else schedule[-1]
        if token is None:
            return output
        output = output.clone()
        output[..., token] += 1e4
        return output

    return ar_model.vlm.lm_head.register_forward_hook(hook)
