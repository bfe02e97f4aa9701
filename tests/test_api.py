"""NexusGen API and model folders: single/list forms, save -> from_pretrained round trip equals the
in-memory model, nexusgen.json checks, name resolution and its errors, official folders, the T5 negative
branch, and the eval harness driving the API end to end."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from nexusgen.api import NexusGen
from nexusgen.config import PRESETS, NexusGenConfig, resolve_device, resolve_dtype
from nexusgen.loading.folder import (
    CONFIG_FILE,
    build_random_model,
    load_autoregressive_part,
    load_model_folder,
    resolve_model,
    save_model_folder,
)


@pytest.fixture(scope="module")
def memory():
    return NexusGen(build_random_model("tiny", seed=0), name="tiny", progress=False)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "tiny-model"
    save_model_folder(path, build_random_model("tiny", seed=0))
    return path


def _array(image):
    return np.asarray(image, dtype=np.int16)


def test_single_in_single_out_list_in_list_out(memory):
    image = Image.new("RGB", (64, 64), (10, 200, 30))
    assert isinstance(memory.generate("a red circle"), Image.Image)
    assert [type(x) for x in memory.generate(["a", "b"])] == [Image.Image, Image.Image]
    assert isinstance(memory.edit(image, "make it red"), Image.Image)
    assert len(memory.edit([image, image], ["a", "b"], decoder="generation")) == 2
    assert isinstance(memory.understand(image, "what?", max_new_tokens=3), str)
    assert len(memory.understand([image, image], ["a?", "b?"], max_new_tokens=3)) == 2
    assert memory.predict_image_embeds("a").shape == (1, 16, 64)
    assert memory.name == "tiny" and memory.image_size == 64


def test_generate_is_decode_of_the_predicted_embeddings(memory):
    prompts = ["a red circle", "two blue squares"]
    decoded = memory.decode(memory.predict_image_embeds(prompts), seed=3)
    for a, b in zip(decoded, memory.generate(prompts, seed=3), strict=True):
        np.testing.assert_array_equal(_array(a), _array(b))


def test_edit_is_decode_of_the_predicted_embeddings_with_the_source(memory):
    sources = [Image.new("RGB", (64, 64), (10, 200, 30)), Image.new("RGB", (72, 64), (200, 20, 30))]
    prompts = ["make it red", "remove the square"]
    embeds = memory.predict_image_embeds(prompts, image=sources)
    decoded = memory.decode(embeds, seed=5, source=sources)
    for a, b in zip(decoded, memory.edit(sources, prompts, seed=5), strict=True):
        np.testing.assert_array_equal(_array(a), _array(b))
    other = memory.decode(embeds, seed=5, source=sources[::-1])  # the source matters: not the gen decoder
    assert not np.array_equal(_array(other[0]), _array(decoded[0]))
    with pytest.raises(ValueError, match=r"\(2, 16, 64\)"):
        memory.decode(embeds[:1], source=sources)


def test_encode_images_is_the_training_target_space(memory):
    from nexusgen.data.collate import collate_ar

    red, blue = Image.new("RGB", (80, 64), (220, 20, 20)), Image.new("RGB", (64, 64), (20, 20, 220))
    embeds = memory.encode_images([red, blue])
    assert embeds.shape == (2, 16, 64) and embeds.dtype == torch.float32
    torch.testing.assert_close(memory.encode_images(red), embeds[:1])
    ar = memory.parts.ar_model
    sample = {"messages": [{"role": "user", "content": "draw"}, {"role": "assistant", "content": "<image>"}],
              "images": [red]}
    batch = collate_ar([sample], memory.processor.tokenizer, memory.processor.image_processor, ar.config)
    _, targets = ar._training_inputs(batch, feed_targets=False)  # what the vision head is trained towards
    torch.testing.assert_close(embeds[0], targets.float())


def test_decode_rejects_embeddings_of_the_wrong_shape(memory):
    with pytest.raises(ValueError, match=r"\(B, 16, 64\)"):
        memory.decode(torch.zeros(1, 9, 64))
    with pytest.raises(ValueError, match="float"):
        memory.decode(torch.zeros(1, 16, 64, dtype=torch.int64))


def test_from_pretrained_of_a_saved_folder_equals_the_in_memory_model(memory, folder):
    loaded = NexusGen.from_pretrained(folder, progress=False)
    assert loaded.config.parts == ["autoregressive", "generation_decoder", "editing_decoder", "vae"]
    prompts = ["a red circle", "两个绿色的三角形"]
    torch.testing.assert_close(loaded.predict_image_embeds(prompts), memory.predict_image_embeds(prompts),
                               atol=0, rtol=0)
    # Same weights, buffers and inputs; the images may still differ by one level where a pixel sits on a
    # rounding boundary: CPU kernels can take another vectorised path for differently aligned buffers
    # (seen on an AMD EPYC host: one pixel of an edit, by 1).
    for a, b in zip(loaded.generate(prompts, seed=2), memory.generate(prompts, seed=2), strict=True):
        assert np.abs(_array(a) - _array(b)).max() <= 1
    source = Image.new("RGB", (80, 64), (200, 30, 30))
    edits = [m.edit(source, "make it blue") for m in (loaded, memory)]
    assert np.abs(_array(edits[0]) - _array(edits[1])).max() <= 1
    answers = [m.understand(source, "what?", max_new_tokens=6) for m in (loaded, memory)]
    assert answers[0] == answers[1]


def test_nexusgen_json_records_the_model(folder):
    data = json.loads((folder / CONFIG_FILE).read_text())
    assert data["format_version"] == 1 and data["num_output_tokens"] == 16 and data["output_grid"] == [4, 4]
    assert data["parts"] == ["autoregressive", "generation_decoder", "editing_decoder", "vae"]
    prefixes = data["templates"]["answer_prefixes"]
    assert prefixes["generate_en"] == "Here is an image based on the description: "
    assert data["sampling"] == {**PRESETS["tiny"]["sampling"], "edit_num_steps": None}  # None: num_steps
    assert data["dtype"] == "float32"
    assert not [p.name for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temporary folders


@pytest.mark.parametrize("change, message", [
    ({"num_output_tokens": 81}, "key 'num_output_tokens'"),
    ({"format_version": 7}, "format_version"),
    ({"colour": "red"}, "unknown keys"),
    ({"parts": ["autoregressive", "editing_decoder", "vae", "generation_decoder", "extra"]}, "extra"),
    ({"sampling": {"negative": "t6"}}, "negative"),
    ({"sampling": {"edit_num_steps": 0}}, "edit_num_steps"),
])
def test_inconsistent_nexusgen_json_is_an_error_naming_the_file(folder, tmp_path, change, message):
    copy = tmp_path / "model"
    shutil.copytree(folder, copy)
    data = {**json.loads((copy / CONFIG_FILE).read_text()), **change}
    (copy / CONFIG_FILE).write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message) as info:
        load_model_folder(copy)
    assert str(copy / CONFIG_FILE) in str(info.value)


def test_a_folder_without_nexusgen_json_loads_with_inferred_settings(folder, tmp_path):
    copy = tmp_path / "export"
    shutil.copytree(folder, copy, ignore=shutil.ignore_patterns("generation_decoder", CONFIG_FILE))
    with pytest.warns(UserWarning, match="inferred"):
        parts = load_model_folder(copy)
    assert parts.config.parts == ["autoregressive", "editing_decoder", "vae"]
    assert parts.config.sampling.height == 64 and parts.config.sampling.negative == "null"


def test_resolve_errors_name_the_problem(tmp_path, monkeypatch):
    import nexusgen.loading.folder as folder_module

    monkeypatch.setitem(folder_module.BUNDLED, "shapes-mini", tmp_path / "absent")  # as in a checkout without it
    with pytest.raises(ValueError, match="bundled model 'shapes-mini' is missing.*nexusgen train"):
        resolve_model("shapes-mini")
    with pytest.raises(ValueError, match="unknown model 'no/such/model'"):
        resolve_model("no/such/model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=f"{tmp_path / 'empty'}: not a model folder"):
        resolve_model(tmp_path / "empty")
    with pytest.raises(ValueError, match="not a folder"):
        load_autoregressive_part(tmp_path / "nothing")


def test_tiny_and_model_parts_loader(folder):
    assert resolve_model("tiny").config.parts == NexusGenConfig.from_preset("tiny").parts
    model, tokenizer, _ = load_autoregressive_part(folder)
    reference = build_random_model("tiny", seed=0).ar_model
    for (name, a), (_, b) in zip(model.state_dict().items(), reference.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert tokenizer.convert_tokens_to_ids("<|image_pad|>") == model.image_token_id


def test_official_folder_loads_the_autoregressive_part_and_says_convert(folder, tmp_path):
    official = tmp_path / "Nexus-GenV2"
    shutil.copytree(folder / "autoregressive", official)
    (official / "nexusgen_ar.json").unlink()  # the official layout: a plain Qwen2.5-VL folder
    (official / "generation_decoder.bin").write_bytes(b"not read")
    with pytest.warns(UserWarning, match="nexusgen convert"):
        model = NexusGen.from_pretrained(official, progress=False)
    # official sampling defaults, but CFG off: no stored T5 negative embeddings (warned as well)
    sampling = model.config.sampling
    assert model.config.parts == ["autoregressive"] and sampling.negative == "t5" and sampling.num_steps == 50
    assert sampling.guidance_scale == 1.0 and model.config.reference_image_px == (128, 128)
    assert isinstance(model.understand(Image.new("RGB", (64, 64)), "what?", max_new_tokens=2), str)
    with pytest.raises(ValueError, match="no generation decoder.*nexusgen convert"):
        model.generate("a red circle")
    with pytest.raises(ValueError, match="no editing decoder.*nexusgen convert"):
        model.edit(Image.new("RGB", (64, 64)), "make it blue")
    with pytest.raises(ValueError, match="no editing decoder.*nexusgen convert"):
        model.decode(torch.zeros(1, 4, 8), source=Image.new("RGB", (64, 64)))


def test_t5_negative_branch_from_the_folder(folder, tmp_path):
    copy = tmp_path / "t5"
    shutil.copytree(folder, copy)
    data = json.loads((copy / CONFIG_FILE).read_text())
    data["sampling"].update(negative="t5", guidance_scale=2.0)
    (copy / CONFIG_FILE).write_text(json.dumps(data))
    with pytest.warns(UserWarning, match="guidance is off"):
        off = NexusGen.from_pretrained(copy, progress=False)
    assert off.config.sampling.guidance_scale == 1.0
    save_file({"prompt_embeds": torch.randn(1, 5, 64, generator=torch.Generator().manual_seed(0))},
              str(copy / "negative.safetensors"))
    guided = NexusGen.from_pretrained(copy, progress=False)
    assert guided.config.sampling.guidance_scale == 2.0
    assert guided.parts.negative["prompt_embeds"].shape == (1, 5, 64)
    assert np.abs(_array(guided.generate("a")) - _array(guided.generate("a", guidance_scale=1.0))).max() > 0


def test_device_and_dtype_policy():
    assert resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_dtype(None, torch.device("cpu")) == torch.float32
    assert resolve_dtype(None, torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ValueError, match="dtype"):
        resolve_dtype("float8", torch.device("cpu"))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def test_eval_harness_drives_the_api(memory, tmp_path):
    from nexusgen.eval.shapes import ShapesEvalConfig, evaluate

    results = evaluate(memory, tmp_path, ShapesEvalConfig(num=2, seed=0, batch_size=2, max_new_tokens=4))
    assert results["model"] == "tiny" and results["image_size"] == 64
    assert results["understanding"]["n"] + results["understanding"]["compositional"]["n"] == 2
    assert len(list((tmp_path / "generation").glob("*.png"))) == 2
    assert len(list((tmp_path / "editing" / "output").glob("*.png"))) == 2


@pytest.mark.gpu
def test_only_one_big_part_is_resident_on_the_gpu():
    model = NexusGen(build_random_model("tiny"), device="cuda", progress=False)
    model.predict_image_embeds("a")
    assert next(model.parts.ar_model.parameters()).is_cuda
    assert not next(model.parts.generation_decoder.parameters()).is_cuda
    image = model.generate("a")
    assert image.size == (64, 64)
    assert next(model.parts.generation_decoder.parameters()).is_cuda
    assert not next(model.parts.ar_model.parameters()).is_cuda
    assert next(model.parts.ar_model.parameters()).dtype == torch.bfloat16
