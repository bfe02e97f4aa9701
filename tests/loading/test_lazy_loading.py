"""Lean loading: a model folder's parts are read when a task first needs them, in the dtype asked for, and
equal to an eager load."""

import pytest
import torch

from nexusgen.api import NexusGen
from nexusgen.loading.folder import build_random_model, load_model_folder, save_model_folder

PARTS = ("autoregressive", "generation_decoder", "editing_decoder", "vae")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("lazy") / "model"
    save_model_folder(path, build_random_model("tiny", seed=0))
    return path


def _loaded(model):
    return {name for name in PARTS if model.parts.is_loaded(name)}


def test_each_task_loads_only_its_parts(folder):
    from PIL import Image

    model = NexusGen.from_pretrained(folder, progress=False)
    assert _loaded(model) == set() and model.config.parts == list(PARTS)  # configs only
    image = Image.new("RGB", (64, 64), (200, 10, 10))
    model.understand(image, "what?", max_new_tokens=2)
    assert _loaded(model) == {"autoregressive"}
    model.generate("a red circle", num_steps=1)
    assert _loaded(model) == {"autoregressive", "generation_decoder", "vae"}
    model.edit(image, "make it blue", num_steps=1)
    assert _loaded(model) == set(PARTS)


def test_lazy_parts_equal_an_eager_load_in_the_dtype_asked_for(folder):
    lazy = load_model_folder(folder, device="cpu", dtype=torch.bfloat16)
    eager = load_model_folder(folder, device="cpu", dtype=torch.float32, lazy=False)
    assert all(eager.is_loaded(name) for name in PARTS) and not any(lazy.is_loaded(name) for name in PARTS)
    reference = build_random_model("tiny", seed=0)
    for name in PARTS:
        module, expected = lazy.get(name), reference.get(name)
        assert lazy.is_loaded(name)
        for key, value in expected.state_dict().items():
            loaded = module.state_dict()[key]
            assert loaded.dtype == torch.bfloat16, (name, key)
            assert torch.equal(loaded, value.to(torch.bfloat16)), (name, key)
            assert torch.equal(eager.get(name).state_dict()[key], value), (name, key)
        for key, buffer in module.named_buffers():
            if key.endswith("inv_freq"):
                assert buffer.dtype == torch.float32, (name, key)  # rotary frequencies stay fp32
