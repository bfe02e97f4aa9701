"""Decoder and VAE folders: save -> load round trips, atomic overwrite, clear errors for broken folders."""

import json

import pytest
import torch
from safetensors.torch import save_file

from nexusgen.loading.decoders import (
    load_editing_decoder,
    load_generation_decoder,
    load_vae,
    save_editing_decoder,
    save_generation_decoder,
    save_vae,
)
from nexusgen.models.decoder import DECODER_PRESETS, EditingDecoder, GenerationDecoder
from nexusgen.models.vae import VAE_PRESETS, build_vae

TINY = DECODER_PRESETS["tiny"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    gen, edit = GenerationDecoder(TINY).eval(), EditingDecoder(TINY).eval()
    gen.pooled_embeds.normal_()
    edit.pooled_embeds.normal_()
    save_generation_decoder(gen, root / "generation_decoder")
    save_editing_decoder(edit, root / "editing_decoder")
    vae = build_vae(VAE_PRESETS["tiny"]).eval()
    save_vae(vae, root / "vae")
    return root, gen, edit, vae


def test_folder_layout(saved):
    root, _, _, _ = saved
    assert sorted(p.name for p in (root / "generation_decoder").iterdir()) == [
        "adapter.safetensors", "config.json", "pooled.safetensors", "transformer"]
    assert sorted(p.name for p in (root / "editing_decoder").iterdir()) == [
        "config.json", "merger.safetensors", "pooled.safetensors", "transformer"]
    assert (root / "vae/config.json").is_file()
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_round_trips(saved):
    root, gen, edit, vae = saved
    new_gen = load_generation_decoder(root / "generation_decoder")
    new_edit = load_editing_decoder(root / "editing_decoder", dtype=torch.float32)
    new_vae = load_vae(root / "vae")
    for old, new in ((gen, new_gen), (edit, new_edit), (vae, new_vae)):
        old_state, new_state = old.state_dict(), new.state_dict()
        assert old_state.keys() == new_state.keys()
        assert all(torch.equal(old_state[k], new_state[k]) for k in old_state)
    assert new_edit.config == TINY and not new_gen.training
    x, t, embeds = torch.randn(1, 16, 4, 4), torch.tensor([0.6]), torch.randn(1, 4, TINY.embed_dim)
    with torch.no_grad():
        assert torch.allclose(new_gen(x, t, embeds), gen(x, t, embeds), atol=1e-6)


def test_saving_again_replaces_the_folder(saved, tmp_path):
    _, gen, _, _ = saved
    save_generation_decoder(gen, tmp_path / "generation_decoder")
    (tmp_path / "generation_decoder" / "stale.txt").write_text("old")
    save_generation_decoder(gen, tmp_path / "generation_decoder")
    assert not (tmp_path / "generation_decoder" / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["generation_decoder"]


def _copy(saved, tmp_path, part):
    import shutil

    root = saved[0]
    shutil.copytree(root / part, tmp_path / part)
    return tmp_path / part


def test_missing_and_broken_files_are_value_errors(saved, tmp_path):
    folder = _copy(saved, tmp_path, "generation_decoder")
    (folder / "adapter.safetensors").unlink()
    with pytest.raises(ValueError, match="adapter.safetensors"):
        load_generation_decoder(folder)
    save_file({"0.weight": torch.zeros(3, 3)}, str(folder / "adapter.safetensors"))
    with pytest.raises(ValueError, match="does not match"):
        load_generation_decoder(folder)
    (folder / "adapter.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="cannot read"):
        load_generation_decoder(folder)
    with pytest.raises(ValueError, match="config.json is missing"):
        load_generation_decoder(tmp_path / "nowhere")
    (folder / "transformer" / "config.json").write_text('{"_class_name": "Flux')  # truncated JSON
    with pytest.raises(ValueError, match="cannot load the transformer"):  # was an OSError traceback
        load_generation_decoder(folder)
    with pytest.raises(ValueError, match="missing VAE folder"):
        load_vae(tmp_path / "nowhere")


def test_config_disagreeing_with_the_transformer_is_an_error(saved, tmp_path):
    folder = _copy(saved, tmp_path, "editing_decoder")
    config = json.loads((folder / "config.json").read_text())
    config["num_layers"] = 3
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="disagrees"):
        load_editing_decoder(folder)
    config["num_layers"], config["merger"] = TINY.num_layers, None
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="no merger config"):
        load_editing_decoder(folder)


def test_a_loaded_part_saved_again_does_not_record_where_it_was_loaded_from(saved, tmp_path):
    root = saved[0]
    save_editing_decoder(load_editing_decoder(root / "editing_decoder"), tmp_path / "editing_decoder")
    save_vae(load_vae(root / "vae"), tmp_path / "vae")
    for config in (tmp_path / "editing_decoder/transformer/config.json", tmp_path / "vae/config.json"):
        written = json.loads(config.read_text())
        assert "_name_or_path" not in written and written["_class_name"]  # diffusers' own fields stay
