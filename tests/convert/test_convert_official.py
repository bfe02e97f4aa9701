"""`nexusgen convert` round trip: tiny decoders written in the official fused layouts (built here from our
modules with the inverse key maps), converted, loaded and compared with the originals; plus the refusals."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel

from nexusgen.cli import main
from nexusgen.convert.keymaps import dit_state_dict_to_diffsynth, vae_state_dict_to_bfl
from nexusgen.convert.official import convert_official, load_pickled_state_dict
from nexusgen.loading.decoders import load_editing_decoder, load_generation_decoder, load_vae
from nexusgen.models.decoder import DECODER_PRESETS, EditingDecoder, GenerationDecoder
from nexusgen.models.vae import VAE_PRESETS, build_vae

TINY = DECODER_PRESETS["tiny"]


class NotATensor:
    """Pickling an instance of this class needs code: weights_only loading must refuse it."""


def _official_ar_config(folder):
    # 4.49-style flat config: only what the merger conversion reads (heads, RoPE, eps).
    merger = TINY.merger
    (folder / "config.json").write_text(json.dumps({
        "model_type": "qwen2_5_vl", "num_attention_heads": merger.num_attention_heads,
        "num_key_value_heads": merger.num_key_value_heads, "rms_norm_eps": merger.rms_norm_eps,
        "rope_theta": merger.rope_theta,
        "rope_scaling": {"type": "mrope", "mrope_section": list(merger.mrope_section)}}))


def _dit(decoder):
    """The decoder's DiT in DiffSynth 1.x fused layout with the V2 `pipe.dit.` prefix."""
    fused = dit_state_dict_to_diffsynth(decoder.transformer.state_dict())
    return {f"pipe.dit.{k}": v for k, v in fused.items()}


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """An official-looking folder: V2 decoders, FLUX ae.safetensors and text_encoder/ next to it."""
    root = tmp_path_factory.mktemp("official")
    torch.manual_seed(0)
    gen, edit = GenerationDecoder(TINY).eval(), EditingDecoder(TINY).eval()
    vae = build_vae(VAE_PRESETS["tiny"]).eval()
    state = {f"adapter.{k}": v for k, v in gen.adapter.state_dict().items()}
    state.update(_dit(gen))
    torch.save(state, root / "generation_decoder.bin")
    state = {f"embedding_merger.{k}": v for k, v in edit.merger.state_dict().items()}
    state.update(_dit(edit))
    torch.save(state, root / "edit_decoder.bin")
    _official_ar_config(root)
    flux = root / "FLUX" / "FLUX.1-dev"
    flux.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in vae_state_dict_to_bfl(vae.state_dict(), 4).items()},
              str(flux / "ae.safetensors"))
    clip_config = CLIPTextConfig(vocab_size=99, hidden_size=TINY.pooled_dim, intermediate_size=37,
                                 num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                                 bos_token_id=97, eos_token_id=98, pad_token_id=98)
    clip = CLIPTextModel(clip_config).eval()
    clip.save_pretrained(flux / "text_encoder")
    return root, gen, edit, vae, clip


def test_round_trip_reproduces_the_original_outputs(official, tmp_path):
    root, gen, edit, vae, clip = official
    lines = []
    results = convert_official(root, tmp_path / "model", log=lines.append, max_shard_bytes=100_000,
                               vae_norm_num_groups=8)
    assert set(results) == {"pooled vector", "generation decoder", "editing decoder", "vae"}
    assert any("autoregressive: not present" in line for line in lines)
    # the shard limit splits the tiny DiT into several files with an index
    transformer = tmp_path / "model/generation_decoder/transformer"
    assert (transformer / "diffusion_pytorch_model.safetensors.index.json").is_file()

    with torch.no_grad():
        pooled = clip(input_ids=torch.tensor([[97] + [98] * 76])).pooler_output[0]
    new_gen = load_generation_decoder(tmp_path / "model/generation_decoder")
    new_edit = load_editing_decoder(tmp_path / "model/editing_decoder")
    new_vae = load_vae(tmp_path / "model/vae")
    assert torch.allclose(new_gen.pooled_embeds, pooled) and torch.allclose(new_edit.pooled_embeds, pooled)
    gen.pooled_embeds.copy_(pooled)
    edit.pooled_embeds.copy_(pooled)

    x, t, embeds = torch.randn(2, 16, 4, 4), torch.tensor([0.9, 0.4]), torch.randn(2, 4, TINY.embed_dim)
    extra = dict(reference_embeds=torch.randn(2, 9, TINY.embed_dim), reference_grid=(3, 3),
                 target_grid=(2, 2))
    images = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(new_gen(x, t, embeds), gen(x, t, embeds), atol=1e-5)
        assert torch.allclose(new_edit(x, t, embeds, **extra), edit(x, t, embeds, **extra), atol=1e-5)
        assert torch.allclose(new_vae(images * 2 - 1).sample, vae(images * 2 - 1).sample, atol=1e-5)
    assert json.loads((tmp_path / "model/conversion.json").read_text())["failed"] == {}


def test_v1_layout_and_missing_clip(official, tmp_path):
    _, gen, _, _, _ = official
    root = tmp_path / "v1"
    root.mkdir()
    state = dict(gen.adapter.state_dict())  # V1: un-prefixed adapter keys mixed with un-prefixed DiT keys
    state.update(dit_state_dict_to_diffsynth(gen.transformer.state_dict()))
    torch.save(state, root / "decoder_81_512.bin")
    lines = []
    results = convert_official(root, tmp_path / "model", log=lines.append)
    assert set(results) == {"generation decoder"}
    assert any("zero pooled vector" in line for line in lines)
    new_gen = load_generation_decoder(tmp_path / "model/generation_decoder")
    assert new_gen.pooled_embeds.abs().sum() == 0
    x, t, embeds = torch.randn(1, 16, 4, 4), torch.tensor([0.5]), torch.randn(1, 4, TINY.embed_dim)
    reference = GenerationDecoder(TINY).eval()
    reference.load_state_dict({**gen.state_dict(), "pooled_embeds": torch.zeros(TINY.pooled_dim)})
    with torch.no_grad():
        assert torch.allclose(new_gen(x, t, embeds), reference(x, t, embeds), atol=1e-5)


def _bad_folder(tmp_path, official, mutate):
    _, gen, _, _, _ = official
    root = tmp_path / "bad"
    root.mkdir()
    state = {f"adapter.{k}": v for k, v in gen.adapter.state_dict().items()}
    state.update(_dit(gen))
    mutate(state)
    torch.save(state, root / "generation_decoder.bin")
    return root


@pytest.mark.parametrize("mutate, message", [
    (lambda s: s.update({"pipe.dit.blocks.0.attn.extra.weight": torch.zeros(2)}), "unknown DiT tensor"),
    (lambda s: s.update({"something.else": torch.zeros(2)}), "unexpected tensor"),
    (lambda s: s.pop("pipe.dit.final_proj_out.weight"), "is missing"),
    (lambda s: s.update({"adapter.3.weight": torch.zeros(3, 3)}), "has shape"),
])
def test_unexpected_checkpoints_are_clear_errors(official, tmp_path, mutate, message):
    root = _bad_folder(tmp_path, official, mutate)
    with pytest.raises(ValueError, match=message):
        convert_official(root, tmp_path / "model", log=lambda line: None)
    assert not (tmp_path / "model/generation_decoder").exists()  # nothing half-written


def test_pickles_that_need_code_are_refused(tmp_path):
    path = tmp_path / "generation_decoder.bin"
    torch.save({"adapter.0.weight": torch.zeros(1), "evil": NotATensor()}, path)
    with pytest.raises(ValueError, match="refused"):
        load_pickled_state_dict(path)
    torch.save([torch.zeros(1)], path)
    with pytest.raises(ValueError, match="flat state dict"):
        load_pickled_state_dict(path)


def test_converting_nothing_is_an_error_and_the_cli_says_so(tmp_path, capsys):
    with pytest.raises(ValueError, match="nothing to convert"):
        convert_official(tmp_path, tmp_path / "out", log=lambda line: None)
    assert main(["convert", str(tmp_path), str(tmp_path / "out")]) == 2
    assert "nothing to convert" in capsys.readouterr().err


def test_corrupt_clip_and_vae_files_are_one_line_errors(tmp_path, capsys):
    (tmp_path / "text_encoder").mkdir()
    (tmp_path / "text_encoder/model.safetensors").write_bytes(b"garbage")
    (tmp_path / "ae.safetensors").write_bytes(b"garbage")
    assert main(["convert", str(tmp_path), str(tmp_path / "out")]) == 2  # was a SafetensorError traceback
    out, err = capsys.readouterr()
    assert "pooled vector: FAILED" in out and "vae: FAILED" in out  # the report, one line per part
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "pooled vector: " in err and "vae: " in err and "nothing written" in err
    assert not (tmp_path / "out").exists()  # a failed convert writes nothing (no conversion.json)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # nor leaves its staging folder


def test_autoregressive_files_are_linked_and_load(tmp_path):
    from nexusgen.loading.autoregressive import build_autoregressive, load_autoregressive, save_autoregressive

    model, tokenizer, image_processor = build_autoregressive("tiny", seed=0)
    save_autoregressive(tmp_path / "official", model, tokenizer, image_processor)
    results = convert_official(tmp_path / "official", tmp_path / "model", log=lambda line: None)
    assert set(results) == {"autoregressive"}
    loaded, _, _ = load_autoregressive(tmp_path / "model/autoregressive", device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))


def _t5_folder(root, context_dim):
    from transformers import T5Config, T5EncoderModel

    from nexusgen.bench.stock_folders import write_t5_tokenizer

    vocab = write_t5_tokenizer(root / "tokenizer_2")
    torch.manual_seed(5)
    config = T5Config(vocab_size=vocab, d_model=context_dim, d_kv=16, d_ff=96, num_layers=3, num_heads=4,
                      feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False)
    model = T5EncoderModel(config).eval()
    model.save_pretrained(root / "text_encoder_2", max_shard_size="100KB")  # sharded, as FLUX's
    return model


def test_flux_folder_gives_the_t5_negative_branch_computed_one_block_at_a_time(official, tmp_path):
    from transformers import CLIPTokenizer, T5Tokenizer

    from nexusgen.bench.stock_folders import write_clip_tokenizer

    root = official[0]
    flux = tmp_path / "FLUX.1-dev"
    vocab = write_clip_tokenizer(flux / "tokenizer")
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=vocab, hidden_size=TINY.pooled_dim, intermediate_size=37,
                                        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                                        bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=vocab - 1)).eval()
    clip.save_pretrained(flux / "text_encoder")
    t5 = _t5_folder(flux, TINY.context_dim)
    lines = []
    results = convert_official(root, tmp_path / "model", log=lines.append, vae_norm_num_groups=8, flux_dir=flux,
                               negative_prompt="a blurry cat")
    assert "negative branch" in results
    negative = load_file(str(tmp_path / "model/negative.safetensors"))
    assert negative["prompt_embeds"].shape == (1, 512, TINY.context_dim)
    ids = T5Tokenizer.from_pretrained(str(flux / "tokenizer_2"))("a blurry cat", padding="max_length",
                                                                  max_length=512, truncation=True,
                                                                  return_tensors="pt").input_ids
    with torch.no_grad():
        whole = t5(input_ids=ids).last_hidden_state  # the whole model at once, as FluxPipeline runs it
    assert torch.allclose(negative["prompt_embeds"], whole, atol=1e-5)
    clip_ids = CLIPTokenizer.from_pretrained(str(flux / "tokenizer"))("a blurry cat", padding="max_length",
                                                                       max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.allclose(negative["pooled"], clip(input_ids=clip_ids).pooler_output, atol=1e-6)
    assert any("negative branch: T5('a blurry cat')" in line for line in lines)


def test_a_full_disk_is_one_line_naming_the_output_and_leaves_nothing(official, tmp_path, capsys, full_disk):
    root = official[0]
    with full_disk(64):
        code = main(["convert", str(root), str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert f"{tmp_path / 'out'}: cannot write (File too large)" in err and ".tmp" not in err, err
    assert list(tmp_path.iterdir()) == []  # no OUT, no staging folder, no conversion.json
