"""`nexusgen export-official`: a model folder back in the official Nexus-GenV2 layout. Round trip: export,
`convert`, load, equal outputs; the `.bin` files only rebuild tensors; what upstream cannot run is refused."""

import dataclasses
import json
import pickletools
import zipfile

import pytest
import torch
from safetensors.torch import load_file

from nexusgen.cli import main
from nexusgen.convert.export import export_official
from nexusgen.convert.official import convert_official, load_pickled_state_dict
from nexusgen.loading.folder import build_random_model, load_model_folder, save_model_folder
from nexusgen.models.connector import MergerConfig
from nexusgen.models.decoder import DECODER_PRESETS, EditingDecoder

# The only globals a plain dict of tensors pickles to (the official files' scan lists the same kind).
TENSOR_GLOBALS = {"torch._utils _rebuild_tensor_v2", "collections OrderedDict", "torch FloatStorage",
                  "torch BFloat16Storage", "torch HalfStorage"}


def _model_with_merger(heads: int, kv_heads: int, sections: tuple[int, int, int]):
    """The tiny model with an editing merger of the given attention (the tiny preset's is the AR model's:
    4 heads, 2 KV heads, M-RoPE sections 2/3/3, as upstream builds it from its AR model's layer 0)."""
    parts = build_random_model("tiny", seed=3)
    merger = MergerConfig(embed_dim=64, context_dim=64, num_attention_heads=heads, num_key_value_heads=kv_heads,
                          intermediate_size=128, expand_ratio=2, mrope_section=sections)
    config = dataclasses.replace(DECODER_PRESETS["tiny"], merger=merger)
    torch.manual_seed(4)
    parts.editing_decoder = EditingDecoder(config).eval()
    parts.config = dataclasses.replace(parts.config, editing_decoder=config)
    return parts


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    save_model_folder(root / "model", build_random_model("tiny", seed=3))
    assert main(["export-official", str(root / "model"), str(root / "official")]) == 0
    return root


def test_the_layout_is_the_official_one(exported):
    out = exported / "official"
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors.index.json", "model-00001-of-00001.safetensors",
            "generation_decoder.bin", "generation_decoder.safetensors", "edit_decoder.bin",
            "edit_decoder.safetensors", "ae.safetensors", "tokenizer.json", "preprocessor_config.json"} <= names
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["Qwen2_5_VLForConditionalGeneration"] and "text_config" not in config
    assert config["rope_scaling"] == {"type": "mrope", "mrope_section": [2, 3, 3]} and config["hidden_size"] == 64
    keys = set(load_file(str(out / "model-00001-of-00001.safetensors")))
    assert {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight", "visual.patch_embed.proj.weight",
            "vision_head.weight", "image_prefill_embeds.weight"} <= keys
    assert not any(k.startswith(("model.language_model.", "model.visual.")) for k in keys)
    generation = load_file(str(out / "generation_decoder.safetensors"))
    assert {"adapter.0.weight", "adapter.4.bias", "pipe.dit.blocks.0.attn.a_to_qkv.weight",
            "pipe.dit.single_blocks.0.to_qkv_mlp.weight", "pipe.dit.final_norm_out.linear.weight"} <= set(generation)
    edit = load_file(str(out / "edit_decoder.safetensors"))
    assert "embedding_merger.layers.0.self_attn.q_proj.weight" in edit
    assert "embedding_merger.projector.4.weight" in edit


def test_the_bin_files_hold_the_same_tensors_and_only_rebuild_tensors(exported):
    out = exported / "official"
    for name in ("generation_decoder", "edit_decoder"):
        pickled = load_pickled_state_dict(out / f"{name}.bin")  # weights_only=True
        plain = load_file(str(out / f"{name}.safetensors"))
        assert pickled.keys() == plain.keys() and all(torch.equal(pickled[k], plain[k]) for k in plain)
        with zipfile.ZipFile(out / f"{name}.bin") as archive:
            data = next(n for n in archive.namelist() if n.endswith("data.pkl"))
            opcodes = list(pickletools.genops(archive.read(data)))  # read, never executed
        found = set()
        for index, (op, arg, _) in enumerate(opcodes):
            if op.name == "GLOBAL":
                found.add(arg)
            elif op.name == "STACK_GLOBAL":  # the two strings pushed just before
                found.add(f"{opcodes[index - 2][1]} {opcodes[index - 1][1]}")
        assert found and found <= TENSOR_GLOBALS, found


def test_round_trip_export_convert_load_gives_equal_outputs(exported, tmp_path):
    original = load_model_folder(exported / "model", device="cpu", dtype="float32")
    convert_official(exported / "official", tmp_path / "back", log=lambda line: None, vae_norm_num_groups=8)
    back = load_model_folder(tmp_path / "back", device="cpu", dtype="float32")
    for name, module in original.modules().items():
        want, got = module.state_dict(), back.modules()[name].state_dict()
        assert want.keys() == got.keys(), name
        assert all(torch.equal(want[k], got[k]) for k in want), name
    # the same ARConfig, its Qwen config read back from the flat 4.49 layout (which adds the rope "type")
    fields = [{k: v for k, v in m.ar_model.config.to_dict().items() if k != "qwen"} for m in (original, back)]
    assert fields[0] == fields[1]
    configs = [m.ar_model.vlm.config.to_dict() for m in (original, back)]
    for config in configs:
        config.pop("_name_or_path")
        config["text_config"]["rope_parameters"].pop("type", None)
    assert configs[0] == configs[1]
    prompt = original.tokenizer  # the same tokenizer files came back
    assert back.tokenizer.encode("a red circle") == prompt.encode("a red circle")
    ids = torch.tensor([[original.ar_model.vision_start_token_id] * 3])
    x, t, embeds = torch.randn(2, 16, 4, 4), torch.tensor([0.9, 0.4]), torch.randn(2, 16, 64)
    extra = dict(reference_embeds=torch.randn(2, 9, 64), reference_grid=(3, 3), target_grid=(4, 4))
    with torch.no_grad():
        assert torch.equal(back.ar_model.predict_image_embeds(ids), original.ar_model.predict_image_embeds(ids))
        assert torch.equal(back.generation_decoder(x, t, embeds), original.generation_decoder(x, t, embeds))
        assert torch.equal(back.editing_decoder(x, t, embeds, **extra), original.editing_decoder(x, t, embeds, **extra))
        images = torch.rand(1, 3, 32, 32) * 2 - 1
        assert torch.equal(back.vae(images).sample, original.vae(images).sample)


def test_bfloat16_export_and_transformers_reads_the_ar_part(exported, tmp_path):
    from transformers import Qwen2_5_VLForConditionalGeneration

    export_official(exported / "model", tmp_path / "bf16", dtype="bfloat16", log=lambda line: None)
    assert json.loads((tmp_path / "bf16/config.json").read_text())["torch_dtype"] == "bfloat16"
    assert all(v.dtype == torch.bfloat16 for v in load_file(str(tmp_path / "bf16/edit_decoder.safetensors")).values())
    _, info = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(tmp_path / "bf16"), output_loading_info=True)
    assert info["missing_keys"] == [] or set(info["missing_keys"]) == set()
    assert set(info["unexpected_keys"]) == {"vision_head.weight", "image_prefill_embeds.weight"}


def test_what_upstream_cannot_run_is_refused(tmp_path, capsys):
    save_model_folder(tmp_path / "tiny", _model_with_merger(2, 1, (4, 6, 6)))  # 2 merger heads, the AR has 4
    assert main(["export-official", str(tmp_path / "tiny"), str(tmp_path / "out")]) == 2
    error = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(error) == 1 and "num_attention_heads" in error[0] and "merger" in error[0]
    assert not (tmp_path / "out").exists()
    (tmp_path / "out").mkdir()
    with pytest.raises(ValueError, match="exists"):
        export_official(tmp_path / "tiny", tmp_path / "out")
    with pytest.raises(ValueError, match="not a model folder"):
        export_official(tmp_path / "nothing", tmp_path / "out2")


def test_a_full_disk_is_one_line_naming_the_output_and_leaves_nothing(exported, tmp_path, capsys, full_disk):
    with full_disk(64):
        code = main(["export-official", str(exported / "model"), str(tmp_path / "official")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert f"{tmp_path / 'official'}: cannot write (File too large)" in err and ".tmp" not in err, err
    assert list(tmp_path.iterdir()) == []
