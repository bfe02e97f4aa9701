"""Loading and saving the AR model: our folder round trip, an official Nexus-GenV2-layout folder (4.49-style
flat config.json, 4.x key names, sharded, both extra tensors), a V1 folder, and the errors."""

import json
import shutil
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

from nexusgen.loading.autoregressive import (
    build_autoregressive,
    load_autoregressive,
    save_autoregressive,
)
from nexusgen.models.autoregressive import AR_PRESETS
from nexusgen.processing import NexusGenProcessor


@pytest.fixture(scope="module")
def source():
    model, tokenizer, image_processor = build_autoregressive("tiny", seed=0)
    return model.eval(), tokenizer, image_processor


def _flat_config() -> dict:
    """A transformers-4.49-style config.json (the layout of the official Nexus-GenV2 folder)."""
    qwen = AR_PRESETS["tiny"]["qwen"]
    text, vision = qwen["text_config"], qwen["vision_config"]
    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "bos_token_id", "eos_token_id")
    return {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl",
        "torch_dtype": "bfloat16", "transformers_version": "4.49.0", "hidden_act": "silu",
        "rope_theta": 1000000.0, "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
        "attention_dropout": 0.0, "sliding_window": 32768, "use_sliding_window": False,
        "max_window_layers": 28,
        "tie_word_embeddings": False, "use_cache": True, **{k: text[k] for k in keys},
        **{k: v for k, v in qwen.items() if k.endswith("token_id")},
        "vision_config": {**vision, "model_type": "qwen2_5_vl", "in_chans": 3, "hidden_act": "silu",
                          "spatial_patch_size": vision["patch_size"], "tokens_per_second": 2},
    }


def _official_key(key: str) -> str:
    if key.startswith("model.language_model."):
        return "model." + key.removeprefix("model.language_model.")
    if key.startswith("model.visual."):
        return "visual." + key.removeprefix("model.visual.")
    return key


@pytest.fixture(scope="module")
def official(source, tmp_path_factory):
    """An official-layout folder written from the source model (two shards + index)."""
    model, tokenizer, image_processor = source
    folder = tmp_path_factory.mktemp("official") / "Nexus-GenV2"
    folder.mkdir()
    state = {_official_key(k.removeprefix("vlm.")): v.contiguous() for k, v in model.state_dict().items()}
    names = sorted(state)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, keys in shards.items():
        save_file({k: state[k] for k in keys}, str(folder / file), metadata={"format": "pt"})
    weight_map = {k: file for file, keys in shards.items() for k in keys}
    index = {"metadata": {}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    (folder / "config.json").write_text(json.dumps(_flat_config()))
    tokenizer.save_pretrained(str(folder))
    image_processor.save_pretrained(str(folder))
    return folder


def _structure(config) -> dict:
    """An ARConfig as comparable data (transformers adds bookkeeping keys such as dtype on load)."""
    bookkeeping = {"dtype", "_name_or_path", "transformers_version", "architectures"}
    qwen = {k: v for k, v in config.qwen_config.to_dict().items() if k not in bookkeeping}
    for part in ("text_config", "vision_config"):
        qwen[part] = {k: v for k, v in qwen[part].items() if k not in bookkeeping}
    return {**config.to_dict(), "qwen": qwen}


def _embeds(model, tokenizer, image_processor, prompts=("a red circle", "two stars")):
    batch = NexusGenProcessor(tokenizer, image_processor, model.config).image_prompt_inputs(list(prompts))
    return model.predict_image_embeds(batch["input_ids"], batch["attention_mask"]), batch


def test_round_trip(source, tmp_path):
    model, tokenizer, image_processor = source
    folder = tmp_path / "ar"
    save_autoregressive(folder, model, tokenizer, image_processor)
    save_autoregressive(folder, model, tokenizer, image_processor)  # overwriting replaces the folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ar"]
    loaded, tok2, ip2 = load_autoregressive(folder, device="cpu")
    assert _structure(loaded.config) == _structure(model.config) and not loaded.training
    reference = model.state_dict()
    assert set(loaded.state_dict()) == set(reference)
    assert all(torch.equal(v, reference[k]) for k, v in loaded.state_dict().items())
    assert torch.equal(_embeds(loaded, tok2, ip2)[0], _embeds(model, tokenizer, image_processor)[0])
    assert tok2.convert_tokens_to_ids("<|image_pad|>") == loaded.image_token_id


@pytest.mark.parametrize("field", ["input_image_positions", "question_first"])
def test_a_folder_stored_with_a_removed_option_loads_while_it_is_off(source, tmp_path, field):
    """Input image places and the question first did not help and left ARConfig; folders written before
    (the bundled one was) carry them at false and still load, weights unchanged; one that turns them on is
    refused with a line naming the file and the option."""
    model, tokenizer, image_processor = source
    folder = tmp_path / "ar"
    save_autoregressive(folder, model, tokenizer, image_processor)
    config_file = folder / "nexusgen_ar.json"
    fields = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**fields, field: False}))
    loaded = load_autoregressive(folder, device="cpu")[0]
    assert _structure(loaded.config) == _structure(model.config)
    reference = model.state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in loaded.state_dict().items())
    config_file.write_text(json.dumps({**fields, field: True}))
    with pytest.raises(ValueError, match=rf"nexusgen_ar.json: {field} is True: .* was removed"):
        load_autoregressive(folder, device="cpu")


def test_official_v2_folder_loads_without_missing_or_unexpected_keys(source, official):
    model, tokenizer, image_processor = source
    # stock transformers maps the 4.x names but does not own the two Nexus-Gen tensors
    from transformers import Qwen2_5_VLForConditionalGeneration

    _, info = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(official), output_loading_info=True)
    assert info["unexpected_keys"] == {"vision_head.weight", "image_prefill_embeds.weight"}
    assert not info["missing_keys"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        loaded, tok2, ip2 = load_autoregressive(official, device="cpu", dtype="float32")
    assert loaded.config.num_output_tokens == 16 and loaded.config.output_image_px == (64, 64)
    reference = model.state_dict()
    assert set(loaded.state_dict()) == set(reference)
    assert all(torch.equal(v, reference[k]) for k, v in loaded.state_dict().items())
    assert torch.equal(_embeds(loaded, tok2, ip2)[0], _embeds(model, tokenizer, image_processor)[0])


def test_v1_folder_uses_the_image_pad_embedding(official, tmp_path):
    folder = tmp_path / "Nexus-Gen-V1"
    shutil.copytree(official, folder)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shard = index["weight_map"].pop("image_prefill_embeds.weight")
    tensors = load_file(str(folder / shard))
    del tensors["image_prefill_embeds.weight"]
    save_file(tensors, str(folder / shard), metadata={"format": "pt"})
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.warns(UserWarning, match="V1"):
        model, tokenizer, image_processor = load_autoregressive(folder, device="cpu")
    assert model.image_prefill_embeds is None and "image_prefill_embeds.weight" not in model.state_dict()
    embeds, batch = _embeds(model, tokenizer, image_processor)
    seq = model.predict_image_embeds_sequential(batch["input_ids"], batch["attention_mask"])
    assert torch.allclose(embeds, seq, atol=1e-5)
    # V1 = stock Qwen2.5-VL on [prompt, N x <|image_pad|>] with 3-D positions and no image features
    n, ids = model.num_output_tokens, batch["input_ids"][:1]
    ids = torch.cat([ids, torch.full((1, n), model.image_token_id)], 1)
    model.vlm.model.rope_deltas = None
    with torch.no_grad():
        hidden = model.vlm.model(input_ids=ids, mm_token_type_ids=(ids == model.image_token_id).int(),
                                 image_grid_thw=torch.tensor([model.config.output_grid_thw])).last_hidden_state
    assert torch.allclose(embeds[:1], model.vision_head(hidden[:, -n - 1:-1]), atol=1e-5)


def _variant(official, tmp_path, name):
    folder = tmp_path / name
    shutil.copytree(official, folder)
    return folder


def test_errors_name_file_and_key(official, tmp_path):
    with pytest.raises(ValueError, match="not a directory"):
        load_autoregressive(tmp_path / "nowhere")

    folder = _variant(official, tmp_path, "llama")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
    with pytest.raises(ValueError, match=r"config\.json: key 'model_type' is 'llama'"):
        load_autoregressive(folder)

    folder = _variant(official, tmp_path, "missing")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shard = index["weight_map"].pop("model.layers.1.mlp.up_proj.weight")
    tensors = load_file(str(folder / shard))
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, str(folder / shard))
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"index\.json: missing tensor 'model\.language_model\.layers\.1\."):
        load_autoregressive(folder)

    folder = _variant(official, tmp_path, "wrong-dims")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shard = index["weight_map"]["vision_head.weight"]
    tensors = load_file(str(folder / shard))
    tensors["vision_head.weight"] = torch.zeros(64, 32)
    save_file(tensors, str(folder / shard))
    with pytest.raises(ValueError, match=rf"{shard}: tensor 'vision_head\.weight' has shape \(64, 32\)"):
        load_autoregressive(folder)

    folder = _variant(official, tmp_path, "no-weights")
    for file in folder.glob("model*"):
        file.unlink()
    (folder / "generation_decoder.bin").write_bytes(b"not read")
    with pytest.raises(ValueError, match="pickles are never executed"):
        load_autoregressive(folder)

    folder = _variant(official, tmp_path, "no-preprocessor")
    (folder / "preprocessor_config.json").unlink()
    with pytest.raises(ValueError, match=r"preprocessor_config\.json: file not found"):
        load_autoregressive(folder)

    folder = _variant(official, tmp_path, "ids")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "image_token_id": 100}))
    with pytest.raises(ValueError, match=r"tokenizer\.json: .*image_token_id=100"):
        load_autoregressive(folder)
